"""The mergeable partial state of one rank's certified step, its merge across ranks (one collective)
and the certificate computed from the merged terms — docs/CONTEXT_PARALLEL.md is the argument.

Per (batch row b, query head h) a rank's step over its shard returns (:class:`ShardState`), with C_r
the rank's candidates, X_r its excluded tokens and s_j = scale·⟨q, k_j⟩ the exact scores:

    m       running max of the exponents the rank used (−inf: no candidate on this rank)
    l       Σ_{C_r} e^{x_j − m}           o   Σ_{C_r} e^{x_j − m} v_j   (unnormalised, Dv)
    log_zc  ≤ log Σ_{C_r} e^{s_j}        (−inf: no candidate)
    log_zout ≥ log Σ_{X_r} e^{s_j}       (absolute, not relative to m: a huge bound never overflows;
                                          −inf: nothing excluded)
    vmax_c  ≥ max_{C_r} ‖v_j‖            vmax_out ≥ max_{X_r} ‖v_j‖  (0 when the set is empty)
    eps     ≥ max_{C_r} |x_j − s_j|: the exponents' error
    o_rnd   ≥ ‖o/l − Σ_{C_r} e^{x_j} v_j / Σ_{C_r} e^{x_j}‖: the rank's own rounding of o/l
    lb_max  max over C_r of a lower bound on s_j;  ub_max  max over X_r of an upper bound on s_j

(x_j are the exponents that (m, l, o) represent: the torch step's rescored scores; the fused step's
rescored scores shifted by the log of its lower-bound mass over its softmax's mass — the same shift
for all its candidates, so it is charged to eps once). The merge (:func:`merge`) rescales every rank
to the global max M — l, o by e^{m_r − M} and a sum — adds the masses by outward-rounded log-sum-exp
and takes maxima; the certificate (:func:`certificate`) is the single-process middle form

    L̂ = Z̄_out / (Z_C + Z̄_out),   ‖out − o_dense‖ ≤ L̂·(vmax_out + ‖out‖ + w) + w,
    w = min((e^{2 eps} − 1)·vmax_c + o_rnd, ‖out‖ + vmax_c),

evaluated on the merged terms — not a sum of per-rank error bounds (a rank's L̂_r is relative to its
own mass, which the other ranks' mass changes). All of it is float64 and rounded outward; the packed
state is (B, Hq, 10 + Dv) float64, gathered once (:func:`all_gather_states`).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, fields

import torch

from vashista_core.rounding import FN_REL, U64, gamma

from ..allowance import down, never_nan, up

__all__ = ["MergedResult", "SCALARS", "ShardState", "all_gather_states", "certificate", "lse_bound", "merge",
           "merge_softmax"]

SCALARS = ("m", "l", "log_zc", "log_zout", "vmax_c", "vmax_out", "eps", "o_rnd", "lb_max", "ub_max")


@dataclass(frozen=True)
class ShardState:
    """(B, Hq) float64 tensors (``o`` (B, Hq, Dv)); the module doc defines each field."""
    m: torch.Tensor
    l: torch.Tensor
    o: torch.Tensor
    log_zc: torch.Tensor
    log_zout: torch.Tensor
    vmax_c: torch.Tensor
    vmax_out: torch.Tensor
    eps: torch.Tensor
    o_rnd: torch.Tensor
    lb_max: torch.Tensor
    ub_max: torch.Tensor

    def pack(self) -> torch.Tensor:
        """(B, Hq, 10 + Dv) float64: the scalars in ``SCALARS`` order, then o."""
        return torch.cat([torch.stack([getattr(self, f).double() for f in SCALARS], -1), self.o.double()], -1)

    @staticmethod
    def unpack(t: torch.Tensor) -> "ShardState":
        n = len(SCALARS)
        return ShardState(o=t[..., n:], **{f: t[..., i] for i, f in enumerate(SCALARS)})


assert set(SCALARS) | {"o"} == {f.name for f in fields(ShardState)}


def lse_bound(x: torch.Tensor, dim: int, upper: bool) -> torch.Tensor:
    """log Σ exp(x) along ``dim``, float64, rounded up (``upper``) or down; −inf terms are absent,
    −inf if all are. The shift, the exponentials (FN_REL each), the sum (γ_{n+1}) and the log are
    each rounded outward."""
    n = x.shape[dim]
    m = x.amax(dim, keepdim=True)
    m_safe = torch.where(torch.isfinite(m), m, torch.zeros_like(m))
    if upper:
        t = torch.exp(up(x - m_safe)) * (1 + FN_REL)
        s = up(t.sum(dim) * (1 + gamma(n + 1)))
        ls = torch.log(s)
        out = up(m_safe.squeeze(dim) + up(torch.where(ls > 0, ls * (1 + FN_REL), ls * (1 - FN_REL))))
    else:
        t = torch.exp(down(x - m_safe)) * (1 - FN_REL)
        s = down(t.sum(dim) * (1 - gamma(n + 1)))
        ls = torch.log(s)
        out = down(m_safe.squeeze(dim) + down(torch.where(ls < 0, ls * (1 + FN_REL), ls * (1 - FN_REL))))
    m = m.squeeze(dim)
    return torch.where(torch.isfinite(m), out, m)


def merge_softmax(m: torch.Tensor, l: torch.Tensor, o: torch.Tensor):
    """(M, L, O) of R partial softmax states stacked on axis 0 — m, l (R, ...), o (R, ..., Dv): every
    part rescaled by e^{m_r − M} to the largest max M and summed; a part with m = −inf (no tokens)
    contributes 0. Its rounding is charged by the caller (``merge``)."""
    M = m.amax(0)
    M_safe = torch.where(torch.isfinite(M), M, torch.zeros_like(M))
    c = torch.where(torch.isfinite(m), torch.exp(m - M_safe), torch.zeros_like(m))
    return M, (c * l).sum(0), (c[..., None] * o).sum(0)


def merge(states: torch.Tensor) -> ShardState:
    """Merge packed states (R, B, Hq, 10 + Dv) of R ranks over disjoint token sets (module doc).

    Rounding of the merge itself, charged to the merged terms: e^{m_r − M} is computed with an
    exponent error ≤ u·|m_r − M| (the subtraction) + 2·FN_REL (exp), added to ``eps``; the products,
    sums of R rescaled terms (γ_{R+1}) and the division o/l (u) perturb o/l by at most
    γ_{R+3}·vmax_c, added to ``o_rnd`` (o_r/l_r is a convex combination of values ≤ vmax_c)."""
    R = states.shape[0]
    s = ShardState.unpack(states.double())
    M, L, O = merge_softmax(s.m, s.l, s.o)
    M_safe = torch.where(torch.isfinite(M), M, torch.zeros_like(M))
    shift = torch.where(torch.isfinite(s.m), (s.m - M_safe).abs(), torch.zeros_like(s.m)).amax(0)
    vmax_c = s.vmax_c.amax(0)
    return ShardState(
        m=M, l=L, o=O,
        log_zc=lse_bound(s.log_zc, 0, upper=False), log_zout=lse_bound(s.log_zout, 0, upper=True),
        vmax_c=vmax_c, vmax_out=s.vmax_out.amax(0),
        eps=up(s.eps.amax(0) + up(shift * U64 + 2 * FN_REL)),
        o_rnd=up(s.o_rnd.amax(0) * (1 + gamma(R + 3)) + gamma(R + 3) * vmax_c),
        lb_max=s.lb_max.amax(0), ub_max=s.ub_max.amax(0))


@dataclass(frozen=True)
class MergedResult:
    """(B, Hq) float64 unless noted: ``out`` (B, Hq, Dv) = o / l; ``certified_leakage`` L̂ ≥ the dense
    mass outside the merged candidates; ``certified_error`` ≥ ‖out − exact dense attention over the
    whole sequence‖; ``gap`` Δ̂ = max_C lb − max_out ub."""
    out: torch.Tensor
    certified_leakage: torch.Tensor
    certified_error: torch.Tensor
    gap: torch.Tensor


def certificate(st: ShardState) -> MergedResult:
    """Output and certificate from merged terms (module doc; docs/CONTEXT_PARALLEL.md §3)."""
    Dv = st.o.shape[-1]
    out = st.o / st.l[..., None]
    none_out = torch.isneginf(st.log_zout)
    # L̂ = 1/(1 + Z_C/Z̄_out) with Z_C from below and Z̄_out from above, every operation outward
    d = down(st.log_zc - st.log_zout)
    e = down(torch.exp(d) * (1 - FN_REL))
    leak = up(up(1.0 / down(1.0 + e)) * (1 + 4 * FN_REL))
    leak = torch.where(none_out, torch.zeros_like(leak), leak.clamp(max=1.0))
    o_norm = up(torch.linalg.vector_norm(out, dim=-1) * (1 + gamma(Dv + 2)))
    # w ≥ ‖out − o_C‖, the smaller of two bounds:
    # * the exponents' error moves the weights by ≤ e^{2 eps} − 1 in total variation (each weight's
    #   numerator and denominator within e^{±eps}, even where they were evaluated apart), plus the
    #   rounding of o/l;
    # * ‖out‖ + ‖o_C‖ ≤ ‖out‖ + vmax_c, whatever out is: this keeps huge scores (eps ~1e13 at scores
    #   ~1e20: e^{2 eps} = ∞) finite, and ∞·0 from being NaN (issue 15). It was "TV ≤ 2" (2·vmax_c +
    #   o_rnd), which holds only where out is a convex combination of the values up to o_rnd; on the
    #   H100 a rank's o/l reached 1e14 with eps ~2500 and the certificate read 6.8 (ROUNDING.md §6:
    #   why is not identified; the hypothesis is an exponent the compiled kernel evaluated twice).
    tv = up(torch.expm1(2 * st.eps) * (1 + FN_REL))
    w_tv = up(up(torch.where(st.vmax_c == 0, torch.zeros_like(tv), tv) * st.vmax_c) + st.o_rnd)
    w = torch.fmin(w_tv, up(o_norm + st.vmax_c))
    # nothing excluded (L̂ = 0) adds nothing, whatever the norms: 0·∞ must not be NaN
    far = up(leak * up(up(st.vmax_out + o_norm) + w))
    far = torch.where(leak == 0, torch.zeros_like(far), far)
    err = up(far * (1 + 4 * U64) + w)
    # a non-finite query row (the fused terms run without synchronisation: no host check) leaves NaN in
    # the terms and the output, and its excluded mass may read −inf ("nothing excluded", leakage 0):
    # nothing can be said about it — leakage 1, error +∞, as the single-process steps (ROUNDING.md §4.4)
    bad = ~torch.isfinite(out).all(-1)
    leak, err = never_nan(torch.where(bad, torch.ones_like(leak), leak),
                          torch.where(bad, torch.full_like(err, math.inf), err))
    return MergedResult(out=out, certified_leakage=leak, certified_error=err, gap=down(st.lb_max - st.ub_max))


def all_gather_states(packed: torch.Tensor, group=None, out: torch.Tensor | None = None) -> torch.Tensor:
    """(R, *packed.shape): every rank's packed state, by one ``all_gather`` (``all_gather_into_tensor``
    where the backend has it: NCCL; gloo takes the list form). ``out``: a preallocated result (a fixed
    address, for a CUDA graph of what reads it)."""
    import torch.distributed as dist

    R = dist.get_world_size(group)
    packed = packed.contiguous()
    if out is None:
        out = torch.empty((R,) + tuple(packed.shape), dtype=packed.dtype, device=packed.device)
    if dist.get_backend(group) == "nccl":
        dist.all_gather_into_tensor(out, packed, group=group)
        return out
    parts = list(out.unbind(0))
    dist.all_gather(parts, packed, group=group)
    return out
