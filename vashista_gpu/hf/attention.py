"""The Vashista attention function registered with transformers' ``AttentionInterface``.

transformers (5.x) calls ``fn(module, query, key, value, attention_mask, scaling=..., dropout=..., **kw)``
with query (B, Hq, q_len, D) and the layer's whole, *unrepeated* key/value (B, Hkv, T, D) after its
cache update, and expects ``(output (B, q_len, Hq, Dv), None)``. This function:

* leaves every call of a layer without a ``_vashista`` runtime (dense layers, a disabled model, other
  models sharing the registry) and every prefill (q_len > 1, unless ``prefill="sparse"``) to the
  library's own SDPA function, unchanged — so a Vashista-enabled model's prefill is bit-identical to
  the ``sdpa`` implementation;
* for a decode query, syncs the layer's paged mirror (``mirror.py``) to the keys the query's mask row
  admits and returns ``vashista_gpu.decode.sparse_decode`` for it: per (row, head)
  a = argmax_{a ∈ Δ_C} ⟨s_C, a⟩ + H(a) on the routed candidate set C (softmax solver; eg/fw solve the
  projection model on C), with its SPEC 3 certificate and the configured fallback policy;
* with ``prefill="sparse"``, decodes every prefill query the same way, one position at a time
  (causal: query t sees its mask row's keys up to t).

The mask function registered under the same name is transformers' ``sdpa_mask``: without it the model
passes ``attention_mask=None`` for padded batches (shared/OFFLINE-RESOURCES.md, the mask pitfall).

Example::

    >>> from vashista_gpu.hf.attention import ATTN_NAME, register
    >>> register()
    >>> from transformers import AttentionInterface
    >>> ATTN_NAME in AttentionInterface._global_mapping
    True
"""
from __future__ import annotations

import torch

from ..decode import sparse_decode
from .mirror import valid_from_mask
from .stats import ROUNDING, dense_shadow

__all__ = ["ATTN_NAME", "register", "vashista_attention"]

ATTN_NAME = "vashista"


def register() -> None:
    """Register the attention and mask functions under ``ATTN_NAME`` (idempotent)."""
    from transformers import AttentionInterface

    AttentionInterface.register(ATTN_NAME, vashista_attention)
    try:
        from transformers.masking_utils import AttentionMaskInterface, sdpa_mask
    except ImportError:
        # transformers < 4.53 has no mask registry: models build a 4-D float mask for an unknown
        # implementation name, which valid_from_mask reads (blocked = large negative)
        return
    AttentionMaskInterface.register(ATTN_NAME, sdpa_mask)


def _sdpa(module, query, key, value, attention_mask, **kwargs):
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    return sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)


def vashista_attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    rt = getattr(module, "_vashista", None)
    q_len = query.shape[2]
    if rt is None or (q_len > 1 and rt.cfg.prefill == "dense"):
        return _sdpa(module, query, key, value, attention_mask, scaling=scaling, dropout=dropout, **kwargs)
    scale = scaling if scaling is not None else query.shape[-1] ** -0.5
    B, Hq, _, D = query.shape
    T = key.shape[2]
    past = T - q_len
    if q_len > 1:
        # padded query rows keep the dense result; every query with keys to attend is replaced below
        out = _sdpa(module, query, key, value, attention_mask, scaling=scaling, dropout=dropout, **kwargs)[0].clone()
    else:
        out = torch.empty((B, 1, Hq, value.shape[-1]), dtype=query.dtype, device=query.device)
    for t in range(q_len):
        upto = past + t + 1
        valid = valid_from_mask(attention_mask, t, B, upto)
        rt.mirror.sync(key, value, valid)
        lens = rt.mirror.lengths()
        rows = [b for b in range(B) if lens[b] > 0]
        if len(rows) < B and q_len == 1:
            # a decode row with nothing to attend to: whatever SDPA does with an all-masked row
            out = _sdpa(module, query, key, value, attention_mask, scaling=scaling, dropout=dropout, **kwargs)[0].clone()
        _decode_rows(rt, module, query[:, :, t], key, value, valid, rows, lens, scale, out[:, t])
    return out, None


def _decode_rows(rt, module, q, key, value, valid, rows, lens, scale, out_t) -> None:
    """Sparse decode of q (B, Hq, D) for ``rows``; writes out_t (B, Hq, Dv) in place; records stats."""
    cfg = rt.cfg
    # sparse_decode requires Kc <= the shortest sequence: rows shorter than Kc have every token as a
    # candidate, so they run in calls of equal length with Kc = that length (exact attention, L̂ = 0)
    groups: dict[int, list[int]] = {}
    for b in rows:
        groups.setdefault(min(cfg.Kc, lens[b]), []).append(b)
    for kc, g in groups.items():
        res = sparse_decode(q[g], rt.mirror.cache, g, cfg.P, kc, solver=cfg.solver, scale=scale,
                            sink_pages=cfg.sink_pages, router=cfg.router, bits=cfg.bits, policy=cfg.policy,
                            hierarchical=cfg.fanout is not None, backend=cfg.backend)
        out_t[g] = res.out.to(out_t.dtype)
        if rt.stats is not None:
            _record(rt, q[g], key[g], value[g], valid[g], [rt.mirror.positions[b] for b in g], scale, res)


def _record(rt, q, key, value, valid, positions, scale, res) -> None:
    fields = dict(certified_error=res.certified_error, certified_leakage=res.certified_leakage,
                  gap=res.gap, fell_back=res.fell_back)
    if rt.cfg.shadow_dense:
        sh = dense_shadow(q, key, value, valid, scale)
        o_sparse = res.out.double()
        fields["true_error"] = (o_sparse - sh["o"]).norm(dim=-1)
        cand = res.candidates                                          # (n, Hq, Kc) logical, -1 padded
        p = sh["p"]
        # stays on the shadow's device: no per-step copy of the (Hq, T) probabilities to the host
        mass = torch.zeros(cand.shape[:2], dtype=torch.float64, device=p.device)
        for i, pos in enumerate(positions):
            c = cand[i].to(p.device)
            hf = torch.where(c >= 0, pos.to(p.device)[c.clamp(min=0)], 0)
            pm = torch.gather(p[i], -1, hf)
            mass[i] = torch.where(c >= 0, pm, 0.0).sum(-1)
        fields["true_leakage"] = (1.0 - mass).clamp(min=0.0)
        fields["delta_lin"] = sh["delta_lin"]
        fields["support90"] = sh["support90"]
        fields["support99"] = sh["support99"]
        # the certificate bounds the distance to exact attention over the STORED keys/values, its own
        # float32/bf16 rounding and the output's cast included (docs/ROUNDING.md, GPU tier): the only
        # allowance left is the shadow's float64 evaluation — unless the mirror stores the keys in a
        # narrower dtype than transformers passed, whose storage cast is outside the promise
        rnd = ROUNDING[torch.float64] if key.dtype == rt.mirror.dtype else ROUNDING.get(rt.mirror.dtype, 1e-5)
        fields["allowance"] = rnd * (sh["vmax"] + sh["o"].norm(dim=-1))
    rt.stats.add(rt.layer_idx, **fields)
