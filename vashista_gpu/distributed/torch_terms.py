"""One rank's share of the certified step on the torch path (any device; what the CPU tests run):
the sketch scan of the rank's shard, its local top-Kc, and — once the candidates are fixed — the
exact rescoring and the mergeable terms (``merge.ShardState``).

The scan and its per-token bounds are ``vashista_gpu.sketch.sketch_bounds``, the same function
``certified_decode`` calls: a shard needs the bounds themselves (its excluded tokens are decided by the
other ranks too), not the finished certificate of one process.
"""
from __future__ import annotations

import math

import torch

from vashista_core.rounding import FN_REL, U64, gamma

from ..allowance import down, up
from ..sketch import sketch_bounds
from .merge import ShardState, lse_bound

__all__ = ["empty_terms", "local_top", "scan_bounds", "shard_terms"]


def scan_bounds(Q: torch.Tensor, sketch, *, scale: float, compute_dtype, one_sided: bool):
    """Sketch scores ŝ (Hq, T) float64 (computed in ``compute_dtype``) and upper bounds ub ≥
    scale·⟨q, k_j⟩ (Hq, T) float64 for queries Q (Hq, D) over a ``TorchKeySketch`` of T tokens (Hkv
    heads). (Only upper bounds: the merged certificate is the middle form, which needs no lower bound
    on the excluded tokens.)"""
    shat, e_up, _ = sketch_bounds(Q, sketch, compute_dtype=compute_dtype, one_sided=one_sided)
    return shat, up(up(shat + e_up) * scale)


def local_top(shat: torch.Tensor, Kc: int) -> torch.Tensor:
    """(Hq, min(Kc, T)) local positions of the top-Kc of ŝ under the tie rule (score descending, the
    lower position first; local order is logical order, ``shard.ShardLayout``)."""
    order = torch.sort(shat, dim=-1, descending=True, stable=True).indices
    return order[:, : min(Kc, shat.shape[1])]


def empty_terms(Hq: int, Dv: int, device) -> ShardState:
    """The terms of a shard with no tokens of this sequence (the merge's neutral element)."""
    f = dict(dtype=torch.float64, device=device)
    ninf, zero = torch.full((Hq,), -math.inf, **f), torch.zeros(Hq, **f)
    return ShardState(m=ninf, l=zero, o=torch.zeros(Hq, Dv, **f), log_zc=ninf, log_zout=ninf, vmax_c=zero,
                      vmax_out=zero, eps=zero, o_rnd=zero, lb_max=ninf, ub_max=ninf)


def shard_terms(Q, K, V, ub, top, selected, *, scale: float, compute_dtype) -> ShardState:
    """The rank's ``ShardState`` (Hq,) for queries Q (Hq, D) over its keys K (Hkv, T, D), values V
    (Hkv, T, Dv), with the scan's upper bounds ``ub`` (Hq, T), its local top ``top`` (Hq, kc)
    and ``selected`` (Hq, kc) bool: which of those are candidates of the merged set (the rest of the
    shard is excluded). Exact rescoring as ``certified_decode``: the dot in ``compute_dtype``, its
    error 4γ_{D+2}(u)·Σ|q_d k_d| giving lb ≤ s ≤ ub for the candidates and ``eps``."""
    Hq, D = Q.shape
    Hkv, T, Dv = V.shape
    kv = torch.arange(Hq, device=K.device) // (Hq // Hkv)
    kc = top.shape[1]
    u_c = max(torch.finfo(compute_dtype).eps / 2, U64)
    q64 = Q.double()
    Kcand = torch.gather(K[kv], 1, top[..., None].expand(Hq, kc, D))
    Vcand = torch.gather(V.double()[kv], 1, top[..., None].expand(Hq, kc, Dv))
    raw = (Kcand.to(compute_dtype) * Q.to(compute_dtype)[:, None, :]).sum(-1).double()
    dot_err = up(4 * gamma(D + 2, u_c) * (Kcand.double().abs() * q64.abs()[:, None, :]).sum(-1))
    ninf = torch.full_like(raw, -math.inf)
    s_c = torch.where(selected, raw * scale, ninf)
    lb_c = torch.where(selected, down(down(raw - dot_err) * scale), ninf)
    m = s_c.amax(-1)
    m_safe = torch.where(torch.isfinite(m), m, torch.zeros_like(m))
    w = torch.exp(s_c - m_safe[:, None])                                            # 0 off the candidates
    # |s_c − s| ≤ scale·dot_err + the product's rounding; the exponent s_c − m also carries the
    # subtraction's rounding and exp's (FN_REL)
    err_j = up(dot_err * scale * (1 + 2 * U64)) + 2 * U64 * s_c.abs() + U64 * (s_c - m_safe[:, None]).abs()
    eps = up(torch.where(selected, err_j, torch.zeros_like(err_j)).amax(-1) + 2 * FN_REL)
    vn = up(torch.linalg.vector_norm(V.double(), dim=-1) * (1 + gamma(Dv + 2)))[kv]   # (Hq, T)
    vmax_c = torch.where(selected, torch.gather(vn, 1, top), torch.zeros_like(raw)).amax(-1)
    is_c = torch.zeros(Hq, T, dtype=torch.bool, device=K.device)
    is_c.scatter_(1, top, selected)
    ub_x = torch.where(is_c, torch.full_like(ub, -math.inf), ub)
    return ShardState(
        m=m, l=w.sum(-1), o=torch.bmm(w[:, None, :], Vcand)[:, 0],
        log_zc=lse_bound(lb_c, -1, upper=False), log_zout=lse_bound(ub_x, -1, upper=True),
        vmax_c=vmax_c, vmax_out=torch.where(is_c, torch.zeros_like(vn), vn).amax(-1), eps=eps,
        # the kc-term sums of w and w·v (γ each) and the division, relative to Σ w‖v‖ ≤ l·vmax_c
        o_rnd=up(4 * gamma(kc + Dv + 4) * vmax_c),
        lb_max=lb_c.amax(-1), ub_max=ub_x.amax(-1))
