"""Sink + recent-window attention (StreamingLLM-like, Xiao et al. 2023): the quality suite's baseline.

At the same exact-read budget as the sparse modes, each decode query of a non-dense layer attends only
to the first ``sink`` tokens it may see and the ``window`` most recent ones (its mask row decides which
tokens it may see); prefill (q_len > 1) and the layers in ``dense_layers`` stay dense. The keys outside
are simply never read: there is no certificate, so the statistics record a vacuous one (certified
leakage 1, certified error +inf) next to the true error against the float64 dense shadow — the
baseline's real error, reported per layer like the certified modes'.

It is the Vashista integration's attention hook with another selection: registered under its own name
with transformers' attention registry (and ``sdpa_mask`` as its mask function, see
shared/OFFLINE-RESOURCES.md), switched on with :func:`enable_window` and off with
:func:`disable_window`, the computation itself transformers' SDPA with a boolean mask.

Example::

    >>> h = enable_window(model, sink=4, window=252, collect_stats=True)   # doctest: +SKIP
    >>> disable_window(model)                                             # doctest: +SKIP
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from vashista_core.errors import VashistaInputError
from vashista_core.validate import positive_int

from vashista_gpu.hf.enable import attention_modules, check_supported
from vashista_gpu.hf.mirror import valid_from_mask
from vashista_gpu.hf.stats import ROUNDING, DecodeStats, dense_shadow

WINDOW_ATTN_NAME = "vashista_window"


@dataclass
class WindowHandle:
    model: object
    sink: int
    window: int
    dense_layers: tuple
    stats: DecodeStats | None
    shadow_dense: bool
    previous_impl: str = "sdpa"


def keep_mask(valid: torch.Tensor, sink: int, window: int) -> torch.Tensor:
    """(B, T) bool: of the positions ``valid`` admits, the first ``sink`` and the last ``window``."""
    rank = valid.long().cumsum(-1)                   # 1-based rank of each admitted position
    n = rank[:, -1:]
    return valid & ((rank <= sink) | (rank > n - window))


def window_attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    h: WindowHandle | None = getattr(module, "_vashista_window", None)
    if h is None or query.shape[2] > 1:
        return sdpa_attention_forward(module, query, key, value, attention_mask, scaling=scaling, dropout=dropout,
                                      **kwargs)
    B, T = query.shape[0], key.shape[2]
    valid = valid_from_mask(attention_mask, 0, B, T).to(key.device)
    keep = keep_mask(valid, h.sink, h.window)
    out = sdpa_attention_forward(module, query, key, value, keep[:, None, None, :], scaling=scaling,
                                 dropout=dropout, **kwargs)
    if h.stats is not None:
        _record(h, module, query, key, value, valid, out[0], scaling)
    return out


def _record(h: WindowHandle, module, query, key, value, valid, out, scaling) -> None:
    q = query[:, :, 0]
    Hq = q.shape[1]
    shape = (q.shape[0], Hq)
    keep = keep_mask(valid, h.sink, h.window)
    fields = dict(certified_error=torch.full(shape, float("inf")), certified_leakage=torch.ones(shape),
                  gap=torch.full(shape, float("nan")), fell_back=torch.zeros(shape, dtype=torch.bool))
    if h.shadow_dense:
        scale = scaling if scaling is not None else q.shape[-1] ** -0.5
        sh = dense_shadow(q, key, value, valid, scale)
        fields["true_error"] = (out[:, 0].double() - sh["o"]).norm(dim=-1)
        fields["true_leakage"] = (sh["p"] * (~keep).to(sh["p"].device)[:, None, :]).sum(-1)
        fields["delta_lin"], fields["support90"], fields["support99"] = sh["delta_lin"], sh["support90"], sh["support99"]
        fields["allowance"] = ROUNDING.get(query.dtype, 1e-5) * (sh["vmax"] + sh["o"].norm(dim=-1))
    h.stats.add(int(module.layer_idx), **fields)


def enable_window(model, sink: int, window: int, *, dense_layers=(0, 1), collect_stats: bool = False,
                  shadow_dense: bool = False) -> WindowHandle:
    """Switch ``model``'s decode attention to sink + recent window outside ``dense_layers``."""
    check_supported(model)
    if isinstance(sink, bool) or not isinstance(sink, int) or sink < 0:
        raise VashistaInputError("sink", f"must be an integer >= 0, got {sink!r}")
    positive_int("window", window)
    if shadow_dense and not collect_stats:
        raise VashistaInputError("shadow_dense", "needs collect_stats=True (the shadow feeds the statistics)")
    if getattr(model, "_vashista_handle", None) is not None or getattr(model, "_vashista_window", None) is not None:
        raise VashistaInputError("model", "another Vashista attention is enabled on this model: disable it first")
    mods = attention_modules(model)
    dl = tuple(sorted(set(int(i) for i in dense_layers)))
    if any(not 0 <= i < len(mods) for i in dl):
        raise VashistaInputError("dense_layers", f"expected integers in [0, {len(mods)}), got {dense_layers!r}")
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    AttentionInterface.register(WINDOW_ATTN_NAME, window_attention)
    AttentionMaskInterface.register(WINDOW_ATTN_NAME, sdpa_mask)
    h = WindowHandle(model=model, sink=sink, window=window, dense_layers=dl,
                     stats=DecodeStats() if collect_stats else None, shadow_dense=shadow_dense,
                     previous_impl=getattr(model.config, "_attn_implementation", None) or "sdpa")
    for i, m in mods.items():
        if i not in dl:
            m._vashista_window = h
    model.set_attn_implementation(WINDOW_ATTN_NAME)
    model._vashista_window = h
    return h


def disable_window(model) -> None:
    h = getattr(model, "_vashista_window", None)
    if h is None:
        raise VashistaInputError("model", "the window baseline is not enabled on this model")
    for m in attention_modules(model).values():
        if hasattr(m, "_vashista_window"):
            del m._vashista_window
    model.set_attn_implementation(h.previous_impl)
    model._vashista_window = None
