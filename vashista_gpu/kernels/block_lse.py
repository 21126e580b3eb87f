"""Triton kernels: the certificate's excluded mass Z̄_out = Σ_{j∉C} e^{ub_j} from the scan's *block
bounds*, without token bounds written or read per token and query head.

Why: writing ub (4 bytes per token and query head) and reading it back for the log-sum-exp was, with
ŝ, as many bytes as the sketch itself at G = 4 (1B shape, int4 group 16: 32 bytes of ŝ and ub against
48 of sketch per token and KV head). The scan (``sketch_scan.py``, ``bounds="blocks"``) writes instead,
per 16 tokens b of a row (the same 16 as ``smax``):

    m_b = max_{j∈b} ub_j,   z_b = Σ_{j∈b} e^{(ub_j − m_b)(1 − 8u)},   e_b ≥ e⁺_j for every j ∈ b,

e_b the two-sided slack (SPEC 3b; equal to every token's e⁺ with two-sided bounds, above it with
one-sided ones). Only the blocks that hold a candidate need their tokens one by one (≤ Kc blocks per
row): a token's bound is recomputed there from ŝ_j, which the selection needed anyway, as

    ub'_j = t + |t|·8u,  t = (ŝ_j + e_b)·scale      (the scan's own formula: ub'_j ≥ scale·⟨q, k_j⟩)

— equal to the scan's ub_j with two-sided bounds, at most the two-sided slack above it with
one-sided ones (those tokens lose the one-sided savings; every other token keeps them).

Two launches before the finish kernel:

1. ``_mark_kernel``, one program per row: ŝ_j = −∞ at the candidates and z_b = −1 (a sign no sum of
   exponentials has) in the blocks that hold one.
2. ``_excluded_chunk_kernel``, one program per (row, chunk of ``BB`` blocks): m_c = the largest of the
   unmarked blocks' m_b and the marked blocks' ub'_j, z_c = Σ_unmarked z_b·e^{(m_b − m_c)(1 − 8u)} +
   Σ_marked Σ_j e^{(ub'_j − m_c)(1 − 8u)} (the −∞ of the candidates and of the padding contribute 0).

Then ``row_lse.combine_chunks`` (inlined in the finish kernel, ``cert_tail.py``) with the factor and
floor of three stages (:func:`excluded_factor`, :func:`excluded_floor`): each exponential ≥ e^{a}(1 −
16u) (``row_lse`` module doc: the shrink by 8u covers the argument's roundings on CUDA), the block sums
within γ_18, the chunk sums within γ_18 (a marked block's 16 tokens) and γ_{BB+2}, the product z_b·w_b
within u, the chunks' combination as before, and flush-to-zero of terms below 2⁻¹²⁶ of the stage's
largest in every stage (≤ 2T + T/16 + NC terms ≤ 3T·2⁻¹²⁶ relative to e^M).

NaN and ∞ propagate as in ``row_lse``: a NaN bound makes its block's z (or its token's term) NaN and
the row uncertified; +∞ makes M = +∞ (uncertified). A NaN ŝ in a marked block stays NaN (the −∞ test
is ``!=``).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from vashista_core.rounding import U32, gamma

from .libm import f32_up
from .row_lse import BLOCK, combine
from .sketch_scan import SUB

__all__ = ["BB", "excluded_chunks", "excluded_factor", "excluded_floor", "excluded_upper", "mark_candidates"]

BB = BLOCK // SUB       # blocks per chunk program: 4096 tokens, as row_lse's chunks


@triton.jit
def _mark_kernel(cand_ptr, s_ptr, bz_ptr, T, NS, KC, C: tl.constexpr, ITER: tl.constexpr):
    r = tl.program_id(0).to(tl.int64)
    for i in range(0, ITER):
        k = i * C + tl.arange(0, C)
        km = k < KC
        j = tl.load(cand_ptr + r * KC + k, mask=km, other=0)
        ok = km & (j >= 0) & (j < T)
        tl.store(s_ptr + r * T + j, float("-inf"), mask=ok)
        tl.store(bz_ptr + r * NS + j // 16, -1.0, mask=ok)


@triton.jit
def _excluded_chunk_kernel(s_ptr, blk_ptr, m_ptr, z_ptr, T, NS, NC, BSTRIDE, scale, BB: tl.constexpr):
    r = tl.program_id(0).to(tl.int64)
    c = tl.program_id(1)
    b = c * BB + tl.arange(0, BB)
    bok = b < NS
    bz = tl.load(blk_ptr + BSTRIDE + r * NS + b, mask=bok, other=0.0)
    mk = bz < 0.0                                   # a block holding a candidate (NaN: not marked)
    bm = tl.load(blk_ptr + r * NS + b, mask=bok & ~mk, other=float("-inf"))     # marked: −inf
    be = tl.load(blk_ptr + 2 * BSTRIDE + r * NS + b, mask=bok & mk, other=0.0)
    j = b[:, None] * 16 + tl.arange(0, 16)[None, :]
    sj = tl.load(s_ptr + r * T + j, mask=mk[:, None] & (j < T), other=float("-inf"))
    live = sj != float("-inf")                      # (−inf + |−inf|·8u would be NaN)
    t = (tl.where(live, sj, 0.0) + be[:, None]) * scale
    ub = tl.where(live, t + tl.abs(t) * (8 * 5.960464477539063e-08), float("-inf"))
    m = tl.maximum(tl.max(bm, axis=0), tl.max(tl.max(ub, axis=1), axis=0))
    m0 = tl.where(m == float("-inf"), 0.0, m)
    # z_b = 0: nothing in the block (a NaN z_b stays NaN, whatever m_b); marked blocks are taken below
    zu = tl.where((bz == 0.0) | mk, 0.0, bz * tl.exp((bm - m0) * (1 - 8 * 5.960464477539063e-08)))
    zm = tl.sum(tl.exp((ub - m0) * (1 - 8 * 5.960464477539063e-08)), axis=1)
    z = tl.sum(tl.where(mk, zm, zu), axis=0)
    tl.store(m_ptr + r * NC + c, m)
    tl.store(z_ptr + r * NC + c, z)


def excluded_factor(nc: int, bb: int = BB) -> float:
    """F of the three stages (module doc), a float32 number ≥ its exact value: the inverse of every
    lowering, times (1 + 4u) for the float64 evaluation."""
    u = U32
    low = (1 - 16 * u) ** 3 * (1 - gamma(18, u)) ** 2 * (1 - u) * (1 - gamma(bb + 2, u)) * (1 - gamma(nc + 2, u)) \
        * (1 - 2 * u)
    return f32_up((1 + 4 * u) / low)


def excluded_floor(T: int) -> float:
    """3T·2⁻¹²⁶ (module doc: flush-to-zero in the three stages); exact in float32 for T < 2²²."""
    return 3.0 * float(T) * 2.0 ** -126


def mark_candidates(s: torch.Tensor, blocks: torch.Tensor, cand: torch.Tensor) -> None:
    """Stage 1 in place: ŝ = −∞ at the candidates ``cand`` (R, Kc) int64, z_b = −1 in their blocks."""
    R, T = s.shape
    Kc = cand.shape[1]
    C = min(1024, triton.next_power_of_2(Kc))
    _mark_kernel[(R,)](cand, s, blocks[1], T, blocks.shape[2], Kc, C=C, ITER=triton.cdiv(Kc, C))


def excluded_chunks(s: torch.Tensor, blocks: torch.Tensor, cand: torch.Tensor, *, scale: float):
    """(m, z) (R, NC) float32 chunk results of Z̄_out = Σ_{j∉C} e^{ub_j} (module doc) for the scan's
    ŝ ``s`` (R, T) and block bounds ``blocks`` (3, R, ⌈T/16⌉) (both overwritten at the candidates)
    and the candidates ``cand`` (R, Kc). NC = ⌈T/4096⌉; combine with :func:`excluded_factor` and
    :func:`excluded_floor`. Two launches, no host synchronisation."""
    R, T = s.shape
    NS = blocks.shape[2]
    assert blocks.shape == (3, R, NS) and NS == triton.cdiv(T, SUB) and s.is_contiguous() and blocks.is_contiguous()
    mark_candidates(s, blocks, cand)
    NC = triton.cdiv(NS, BB)
    m = torch.empty((R, NC), dtype=torch.float32, device=s.device)
    z = torch.empty((R, NC), dtype=torch.float32, device=s.device)
    _excluded_chunk_kernel[(R, NC)](s, blocks, m, z, T, NS, NC, R * NS, float(scale), BB=BB)
    return m, z


def excluded_upper(s: torch.Tensor, blocks: torch.Tensor, cand: torch.Tensor, *, scale: float):
    """(M (R,), Z (R,)) float32 with Z·e^M ≥ Σ_{j∉C} e^{ub_j} (M = −∞, Z = 0 when nothing is
    excluded): :func:`excluded_chunks` and their combination. Three launches."""
    m, z = excluded_chunks(s, blocks, cand, scale=scale)
    return combine(m, z, excluded_factor(m.shape[1]), excluded_floor(s.shape[1]))
