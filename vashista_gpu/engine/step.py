"""The engine's attention: chunked dense prefill and one decode step per layer over ``VashistaCache``.

transformers calls the function registered as ``"vashista_engine"`` with the layer's query and the
tensors the cache's ``update`` returned; this function ignores those and reads the layer's paged pool:

* prefill (a chunk of q_len > 1 positions, or any forward that declared real-token masks): for each
  batch row, its real queries attend causally to everything the row's sequence holds — the past
  chunks and this chunk's real tokens — by SDPA with an explicit causal mask offset by the past
  length (exact attention; padded query positions get zeros, and nothing reads them);
* decode (one token per row), in the configured mode:
  ``dense``     exact attention over the pool;
  ``paged``     routed sparse decode (SPEC 2): top-P pages by their key-box bound, top-Kc tokens,
                softmax, with its certificate (``plan.plan_decode`` + ``decode.run_plan``);
  ``certified`` certified mode (SPEC 3b): every token scored through its int4/int8 page sketch, the
                top-Kc rescored exactly, with the certificate L̂·(max‖v‖ + ‖o‖) on ‖o − o_dense‖
                (``sketch_plan.plan_sketch_step`` + ``run_sketch_plan``).

Two paths run the decode step. The *planned* path (CUDA): plans are made once per decode segment on
the host (:meth:`Runner.plan`), and every step only issues device work with static shapes — appends
at the lengths the device holds, the planned kernels, the statistics — so the driver can capture the
whole model's step in one CUDA graph and replay it (``engine/generate.py``). The *host* path (CPU, or
``graph=False`` with a ``Capped`` policy): ``decode.sparse_decode`` per step, which validates,
plans and applies the policy with host synchronisation; it picks Kc per row from that row's length.

Budget → Kc. ``Kc = 16·⌈budget·n/16⌉`` tokens read exactly, capped at the shortest row's length,
where n is the row's length (host path, every step) or the longest row's length when the segment is
planned (planned path: Kc then stays fixed while the rows grow by the segment's tokens). Paged mode
routes ``P = ⌈Kc/S⌉`` pages besides the sink and newest ones. ``budget = 1`` reads every token on the
host path: the output is exact attention up to rounding (the certificate's L̂ is 0).

Policies. ReportOnly: certificates are only counted. DenseFallback(tol): heads whose certified error
exceeds tol (or is not finite) are replaced by exact attention — on the planned path inside the step
(``engine/policy.py``: the flagged (row, head) pairs compacted on the device, recomputed by the paged
dense kernel; capacity B·Hq, so nothing overflows). Capped(tol, ·, Kc_max): host path — Kc doubles
per row until certified or capped, then dense; planned path (certified mode) — a second certified
step planned at Kc_max replaces the flagged heads, then DenseFallback. Leakage statistics are the
first attempt's.

Statistics (:class:`StepStats`) accumulate on the device, per layer, and are read once at the end.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as Fn

from vashista_core.errors import VashistaInputError

__all__ = ['ATTN_NAME', 'MODES', 'Runner', 'STAT_FIELDS', 'StepConfig', 'StepStats', 'engine_attention', 'kc_for', 'prefill_attention', 'register']

ATTN_NAME = "vashista_engine"
MODES = ("dense", "certified", "paged")
STAT_FIELDS = ("queries", "uncertified", "fell_back", "overflow", "error_sum", "error_max", "leakage_max",
               "nonfinite")


def register() -> None:
    """Register the engine attention under ``ATTN_NAME`` (idempotent). No mask function is registered
    on purpose: without one, transformers builds no (B, q, T) mask and passes None; the rows' real
    tokens and lengths come from the cache (``VashistaCache.begin``), never from a mask."""
    from transformers import AttentionInterface

    AttentionInterface.register(ATTN_NAME, engine_attention)


def kc_for(budget: float, longest: int, shortest: int) -> int:
    """Exact-read tokens for a budget (module doc): 16·⌈budget·longest/16⌉, at most ``shortest``."""
    return max(1, min(16 * math.ceil(budget * longest / 16), shortest))


class StepStats:
    """Per-layer counters of the decode steps, kept in one float64 device tensor (see STAT_FIELDS):
    queries (row, head) decoded, uncertified (certified error > tol, or not finite), fell back to
    dense, selection overflows, sum/max of the finite certified errors, max leakage bound, non-finite
    certificates. In-place updates only, so a captured step accumulates into the same tensor."""

    def __init__(self, n_layers: int, device):
        self.t = torch.zeros((n_layers, len(STAT_FIELDS)), dtype=torch.float64, device=device)
        # CUDA: one Triton launch per layer (kernels/step_stats.py) instead of ~16 small ops
        self.fused = self.t.device.type == "cuda"
        self._tol: dict = {}                 # tol -> its float64 device scalar, made once (not per step)

    def add(self, layer: int, err, leak, tol: float, fell=None, overflow=None) -> None:
        if self.fused:
            from ..kernels.step_stats import step_stats
            if tol not in self._tol:
                self._tol[tol] = torch.tensor([tol], dtype=torch.float64, device=self.t.device)
            step_stats(self.t[layer], err, leak, self._tol[tol], fell=fell, overflow=overflow)
            return
        e, lk = err.double().flatten(), leak.double().flatten()
        fin = torch.isfinite(e)
        row = self.t[layer]
        row[0] += e.numel()
        row[1] += (~(e <= tol)).sum()
        if fell is not None:
            row[2] += fell.sum()
        if overflow is not None:
            row[3] += overflow.sum()
        ef = torch.where(fin, e, 0.0)
        row[4] += ef.sum()
        row[5:6].copy_(torch.maximum(row[5:6], ef.max().view(1)))
        row[6:7].copy_(torch.maximum(row[6:7], torch.nan_to_num(lk, nan=1.0).max().view(1)))
        row[7] += (~fin).sum()

    def summary(self) -> dict:
        """Totals over layers (one synchronisation)."""
        t = self.t.cpu()
        tot = t.sum(0)
        q = float(tot[0])
        fin = q - float(tot[7])
        return dict(queries=int(q), uncertified=int(tot[1]), fell_back=int(tot[2]), overflow=int(tot[3]),
                    fallback_rate=float(tot[2]) / q if q else 0.0,
                    uncertified_rate=float(tot[1]) / q if q else 0.0,
                    certified_error_mean=float(tot[4]) / fin if fin else math.nan,
                    certified_error_max=float(t[:, 5].max()) if q else math.nan,
                    leakage_max=float(t[:, 6].max()) if q else math.nan, nonfinite=int(tot[7]))


@dataclass
class StepConfig:
    """Decode options, checked by the driver: ``mode`` in MODES, ``bits`` (certified), ``budget`` in
    (0, 1], ``policy`` (ReportOnly / DenseFallback / Capped), ``tol`` for the statistics (the policy's,
    or inf), ``dense_layers`` decoded densely in every mode, ``planned`` the device-only path."""
    mode: str
    bits: int | None
    budget: float
    policy: object
    tol: float
    dense_layers: tuple
    planned: bool
    # explicit exact-read sizes (the quality suite's budget settings, ``vashista_app/quality/modes.py``):
    # ``kc`` candidates (capped at the shortest row) instead of the budget's, ``pages`` paged mode's
    # routed pages instead of ⌈Kc/S⌉. None: from ``budget`` as the module doc says.
    kc: int | None = None
    pages: int | None = None
    # certified mode's token bounds: one-sided (the reference's, tighter) or two-sided (SPEC 3b's per-page
    # constant e_p: about half the scan's instructions per code, a looser certificate); planned path only
    one_sided: bool = True


class Runner:
    """Decode state shared by the layers of one model: the cache, the options, the plans of the
    current segment and the statistics."""

    def __init__(self, cache, cfg: StepConfig):
        self.cache, self.cfg = cache, cfg
        self.stats = StepStats(cache.n_layers, cache.device)
        self.plans: list = [None] * cache.n_layers
        self.policies: list = [None] * cache.n_layers
        self.T_cap = 0
        self.Kc = self.P = 0

    def mode_of(self, layer: int) -> str:
        return "dense" if layer in self.cfg.dense_layers else self.cfg.mode

    def kc_of(self, longest: int, shortest: int) -> int:
        """Kc of a step: ``cfg.kc`` when given (at most ``shortest``), else :func:`kc_for`."""
        if self.cfg.kc is not None:
            return max(1, min(self.cfg.kc, shortest))
        return kc_for(self.cfg.budget, longest, shortest)

    def pages_of(self, kc: int) -> int:
        return self.cfg.pages if self.cfg.pages is not None else math.ceil(kc / self.cache.page_size)

    # ------------------------------------------------------------------ planned path
    def plan(self, reserved: dict, scales: dict) -> None:
        """Plan a decode segment for the cache's current rows: ``reserved`` {seq: tokens it may reach}
        (pages already reserved), ``scales`` {layer: attention scale}. Host work only."""
        from ..plan import plan_decode
        from ..sketch_plan import plan_sketch_step

        cache, rows = self.cache, self.cache.rows
        lens = [cache.length(s) for s in rows]
        self.T_cap = max(reserved[s] for s in rows)
        self.Kc = self.kc_of(max(lens), min(lens))
        self.P = self.pages_of(self.Kc)
        Hq = cache.n_q_heads
        for i, pool in enumerate(cache.pools):
            mode = self.mode_of(i)
            if mode == "certified":
                self.plans[i] = plan_sketch_step(pool, rows, Hq, self.Kc, bits=self.cfg.bits, scale=scales[i],
                                                 max_tokens=self.T_cap, one_sided=self.cfg.one_sided)
            elif mode == "paged":
                self.plans[i] = plan_decode(pool, rows, Hq, self.P, self.Kc, scale=scales[i],
                                            max_pages=math.ceil(self.T_cap / cache.page_size))
            else:
                self.plans[i] = None
        self.policies = [self._device_policy(i, rows, Hq, scales[i], lens) for i in range(cache.n_layers)]

    def _device_policy(self, layer, rows, Hq, scale, lens):
        """The policy of a planned layer on the device (``engine/policy.py``): DenseFallback patches the
        uncertified heads with exact attention; Capped first takes a second certified step planned at
        Kc_max (capped at the shortest row) for them. None: report only."""
        from vashista_core.policies import Capped, DenseFallback

        from ..sketch_plan import plan_sketch_step, run_sketch_plan
        from .policy import DeviceCapped, DeviceDenseFallback

        pol, mode = self.cfg.policy, self.mode_of(layer)
        if mode == "dense" or not isinstance(pol, (DenseFallback, Capped)):
            return None
        if isinstance(pol, DenseFallback):
            return DeviceDenseFallback(pol.tol, device=self.cache.device)
        if mode != "certified":
            raise VashistaInputError("policy", "Capped on the device path widens the certified step only; "
                                               "use mode='certified' or graph=False")
        kc_max = min(pol.Kc_max, min(lens))
        wide = plan_sketch_step(self.cache.pools[layer], rows, Hq, kc_max, bits=self.cfg.bits, scale=scale,
                                max_tokens=self.T_cap, one_sided=self.cfg.one_sided)

        def widen(q, _plan=wide):
            r = run_sketch_plan(_plan, q, sync=False)
            return r.out, r.certified_error
        return DeviceCapped(pol.tol, widen, device=self.cache.device)

    def _dense_planned(self, layer: int, q, scale):
        from ..kernels.paged_dense import cache_dense_decode

        return cache_dense_decode(q, self.cache.pools[layer], self.cache.row_idx, max_tokens=self.T_cap, scale=scale)

    def _planned(self, layer: int, q, scale):
        from ..decode import run_plan
        from ..sketch_plan import run_sketch_plan

        mode, plan, pool = self.mode_of(layer), self.plans[layer], self.cache.pools[layer]
        if mode == "dense":
            return self._dense_planned(layer, q, scale)
        if plan is None:
            raise VashistaInputError("cache", "the decode segment was not planned (Runner.plan)")
        if mode == "certified":
            r = run_sketch_plan(plan, q, sync=False)
            out, err, leak, overflow = r.out, r.certified_error, r.certified_leakage, r.overflow
        else:
            plan.lens.copy_(pool.seq_lens[plan.seq_ids])      # lengths grow on the device between steps
            r = run_plan(plan, q, pool)
            out, err, leak, overflow = r.out, r.certified_error, r.certified_leakage, None
        fell = None
        pol = self.policies[layer]
        if pol is not None:
            res = pol(out, err, q, pool, self.cache.row_idx, max_tokens=self.T_cap, scale=scale)
            fell, err = res.fell_back, res.certified_error
            overflow = res.overflowed if overflow is None else overflow | res.overflowed
        self.stats.add(layer, err, leak, self.cfg.tol, fell=fell, overflow=overflow)
        return out

    # ------------------------------------------------------------------ host path
    def _host(self, layer: int, q, scale):
        from ..decode import sparse_decode
        from ..dense import dense_decode

        cache, pool, rows = self.cache, self.cache.pools[layer], self.cache.rows
        mode = self.mode_of(layer)
        if mode == "dense":
            return dense_decode(q, pool, rows, scale=scale)
        out = torch.empty((q.shape[0], q.shape[1], pool.value_dim), dtype=q.dtype, device=q.device)
        groups: dict[int, list[int]] = {}
        for b, s in enumerate(rows):
            n = pool.length(s)
            groups.setdefault(self.kc_of(n, n), []).append(b)
        self.Kc = max(groups)                                    # reported: the widest Kc of the step
        self.P = self.pages_of(self.Kc)
        for kc, g in groups.items():
            res = sparse_decode(q[g], pool, [rows[b] for b in g], P=self.pages_of(kc), Kc=kc,
                                scale=scale, router="sketch" if mode == "certified" else "bound",
                                bits=self.cfg.bits if mode == "certified" else None, policy=self.cfg.policy)
            out[g] = res.out.to(q.dtype)
            self.stats.add(layer, res.certified_error, res.certified_leakage, self.cfg.tol, fell=res.fell_back)
        return out

    def decode(self, layer: int, q, scale):
        """(B, Hq, Dv) attention output of the decode query q (B, Hq, D) of layer ``layer``."""
        return self._planned(layer, q, scale) if self.cfg.planned else self._host(layer, q, scale)


def prefill_attention(cache, layer: int, query: torch.Tensor, scale: float) -> torch.Tensor:
    """Exact causal attention of a prefill chunk over each row's whole stored sequence (module doc);
    returns (B, q_len, Hq, Dv)."""
    pool = cache.pools[layer]
    B, Hq, T, D = query.shape
    out = torch.zeros((B, T, Hq, pool.value_dim), dtype=query.dtype, device=query.device)
    valid = cache.valid if cache.valid is not None else torch.ones((B, T), dtype=torch.bool)
    for b, sid in enumerate(cache.rows):
        pos = torch.nonzero(valid[b]).flatten().to(query.device)
        n = pos.numel()
        if n == 0:
            continue
        k, v = pool.gather(sid)                                   # (L, Hkv, D): past + this chunk
        L = k.shape[0]
        qb = query[b][:, pos]                                     # (Hq, n, D)
        causal = torch.arange(L, device=query.device)[None, :] <= (L - n + torch.arange(n, device=query.device))[:, None]
        o = Fn.scaled_dot_product_attention(qb[None], k.transpose(0, 1)[None].to(query.dtype),
                                            v.transpose(0, 1)[None].to(query.dtype), attn_mask=causal,
                                            scale=scale, enable_gqa=True)
        out[b, pos] = o[0].transpose(0, 1)
    return out


def engine_attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    """The registered attention function (module doc); ``module._vashista_engine`` is the Runner."""
    rt = getattr(module, "_vashista_engine", None)
    if rt is None:
        raise VashistaInputError("model", f"the {ATTN_NAME!r} attention runs only inside vashista_gpu.engine "
                                          "(no engine is attached to this layer)")
    scale = scaling if scaling is not None else query.shape[-1] ** -0.5
    cache = rt.cache
    if query.shape[2] > 1 or cache.valid is not None:
        return prefill_attention(cache, module.layer_idx, query, scale), None
    out = rt.decode(module.layer_idx, query[:, :, 0], scale)
    return out[:, None].to(query.dtype), None
