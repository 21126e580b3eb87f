"""Triton kernels: an upper bound on a row's Σ_j e^{x_j} for a float32 array (R, T), the certificate's
Z̄_out = Σ_{j∉C} e^{ub_j} in one read of the bounds (the candidates' entries are −inf).

Two stages, because the reduction runs over T (up to ~10⁶) for few rows:

1. ``_row_chunk_lse_kernel``, one program per (row, chunk of ``block`` tokens):
   m_rc = max_j x_j,  z_rc = Σ_j e^{(x_j − m_rc)(1 − 8u)}.
   With ``slack`` (the certified step's two-sided bounds) x_j is derived from the scan's ŝ_j and its
   group's e as the scan itself computes a two-sided bound (``sketch_scan`` module doc, "Slack"), so
   the scan need not write ub per token and query head.
   The exponent a = x_j − m_rc ≤ 0 is shrunk towards 0 by 8u|a|, which covers the four roundings of
   the argument — the subtraction, the product by (1 − 8u), and on CUDA the float32 product by log2 e
   and that constant's own rounding (``tl.exp`` may be ex2.approx of x·log2 e): (1 + u)⁴(1 − 8u) < 1,
   so the evaluated 2^{a'·log2 e} ≥ e^{a}·(1 − the instruction's error ≤ 16u).
2. :func:`combine_chunks`, inlined in the consumer (the certificate's finish kernel,
   ``kernels/cert_tail.py``, or ``_combine_kernel`` here for ``row_lse_upper``):
   M = max_c m_rc,  Z = Σ_c z_rc·e^{(m_rc − M)(1 − 2u)}·F + 2T·2⁻¹²⁶ with the accurate exponential
   (``kernels/libm.py``; the argument's two roundings are covered by 2u) and
   F = (1 + 16u)²·(1 + γ_{block+2})·(1 + γ_{NC+2})·(1 + 2u) rounded up to float32: both exponentials
   within 16u, the chunk's and the combination's float32 sums within γ_n (any order), the product by F;
   flush-to-zero of terms below 2⁻¹²⁶ loses at most T·2⁻¹²⁶ in each stage (the largest term is e⁰ = 1).
   Then Z·e^M ≥ Σ_j e^{x_j}; a row without finite entries has M = −∞, Z = 0.
"""
from __future__ import annotations

import triton
import triton.language as tl

from vashista_core.rounding import U32, gamma

from .libm import exp_acc, f32_up
from .sketch_scan import token_bound

__all__ = ["BLOCK", "combine_chunks", "excluded_terms", "lse_factor", "lse_floor", "row_lse_chunks", "row_lse_upper"]

BLOCK = 4096            # tokens per chunk program


@triton.jit
def _row_chunk_lse_kernel(x_ptr, m_ptr, z_ptr, T, NC, e_ptr, NGR, group, scale, BT: tl.constexpr,
                          SLACK: tl.constexpr = False):
    r = tl.program_id(0)
    c = tl.program_id(1)
    toks = c * BT + tl.arange(0, BT)
    x = tl.load(x_ptr + r.to(tl.int64) * T + toks, mask=toks < T, other=float("-inf"))
    if SLACK:      # x is ŝ: the scan's two-sided bound (``sketch_scan.token_bound``) with the group's e
        live = x != float("-inf")                  # (−inf + |−inf|·8u would be NaN; NaN stays NaN)
        e = tl.load(e_ptr + r.to(tl.int64) * NGR + toks // group, mask=live & (toks < T), other=0.0)
        x = tl.where(live, token_bound(tl.where(live, x, 0.0), e, scale), float("-inf"))
    m = tl.max(x, axis=0)
    m_safe = tl.where(m == float("-inf"), 0.0, m)
    z = tl.sum(tl.exp((x - m_safe) * (1 - 8 * 5.960464477539063e-08)), axis=0)
    tl.store(m_ptr + r * NC + c, m)
    tl.store(z_ptr + r * NC + c, z)


@triton.jit
def combine_chunks(m_ptr, z_ptr, r, NC, F, FLOOR, BNC: tl.constexpr):
    """(M, Z) of row ``r`` from its NC chunk results (module doc, stage 2). M is +∞ or NaN when the
    row held +∞ or NaN (then Z is meaningless: the caller must not certify the row). ``FLOOR`` =
    :func:`lse_floor` (T)."""
    c = tl.arange(0, BNC)
    cm = c < NC
    m = tl.load(m_ptr + r.to(tl.int64) * NC + c, mask=cm, other=float("-inf"))
    z = tl.load(z_ptr + r.to(tl.int64) * NC + c, mask=cm, other=0.0)
    M = tl.max(m, axis=0)
    fin = (M > float("-inf")) & (M < float("inf"))
    M_safe = tl.where(fin, M, 0.0)
    w = exp_acc((tl.where(m > float("-inf"), m, M_safe) - M_safe) * (1 - 2 * 5.960464477539063e-08))
    Z = tl.sum(tl.where(cm, z * w, 0.0), axis=0) * F + FLOOR
    return M, tl.where(M > float("-inf"), Z, 0.0)


@triton.jit
def _combine_kernel(m_ptr, z_ptr, M_ptr, Z_ptr, NC, F, FLOOR, BNC: tl.constexpr):
    r = tl.program_id(0)
    M, Z = combine_chunks(m_ptr, z_ptr, r, NC, F, FLOOR, BNC)
    tl.store(M_ptr + r, M)
    tl.store(Z_ptr + r, Z)


def lse_factor(block: int, nc: int) -> float:
    """F of the module doc, a float32 number ≥ its exact value."""
    return f32_up((1 + 16 * U32) ** 2 * (1 + gamma(block + 2, U32)) * (1 + gamma(nc + 2, U32)) * (1 + 2 * U32)
                  * (1 + 4 * U32))                 # (1 + 4u): the float64 evaluation of this product


def lse_floor(T: int) -> float:
    """2T·2⁻¹²⁶: what flush-to-zero can drop (relative to the largest term, 1) from T terms in the chunk
    kernel, and again from the chunks' weights in the combination (Triton links libdevice with
    flush-to-zero); exact in float32 for T < 2²³."""
    return 2.0 * float(T) * 2.0 ** -126


def excluded_terms(s, second, *, one_sided: bool, group: int, scale: float):
    """What the certificate's log-sum-exp over the excluded tokens reads from a certified step's scan
    (``sketch_scan.step_bounds``: its outputs ``s`` = ŝ and ``second``): (x, kwargs of
    :func:`row_lse_chunks` / :func:`row_lse_upper`). One-sided, x is the token bounds ``second`` (R, T);
    two-sided, x is ŝ and ``second`` the groups' slack, from which the same bounds are derived. The
    caller sets the candidates' entries of x to −inf (x is the scan's buffer, overwritten)."""
    if one_sided:
        return second, {}
    return s, dict(slack=second, group=group, scale=scale)


def row_lse_chunks(x, *, block: int = BLOCK, slack=None, group: int = 1, scale: float = 1.0):
    """Stage 1 on ``x`` (R, T) float32 contiguous: (m, z) (R, NC) float32, NC = ⌈T/block⌉. With
    ``slack`` (R, ⌈T/group⌉) float32 (``sketch_scan``'s ``bounds="slack"``): x is the scan's ŝ and
    the terms are the two-sided bounds derived from it, t + 8u|t|, t = (ŝ_j + slack[j // group])·scale
    (−inf where ŝ is −inf)."""
    import torch
    R, T = x.shape
    NC = triton.cdiv(T, block)
    m = torch.empty((R, NC), dtype=torch.float32, device=x.device)
    z = torch.empty((R, NC), dtype=torch.float32, device=x.device)
    has = slack is not None
    if has:
        assert slack.shape == (R, triton.cdiv(T, group)) and slack.is_contiguous(), (slack.shape, group)
    _row_chunk_lse_kernel[(R, NC)](x, m, z, T, NC, slack if has else x, slack.shape[1] if has else 1, int(group),
                                   float(scale), BT=block, SLACK=has)
    return m, z


def row_lse_upper(x, *, block: int = BLOCK, slack=None, group: int = 1, scale: float = 1.0):
    """(M (R,), Z (R,)) float32 with Z·e^M ≥ Σ_j e^{x_j} for every row of ``x`` (R, T) float32
    (entries may be −inf; M = −inf and Z = 0 for a row without finite entries); with ``slack``, of
    the derived two-sided bounds (:func:`row_lse_chunks`). Two launches."""
    import torch
    R, T = x.shape
    m, z = row_lse_chunks(x, block=block, slack=slack, group=group, scale=scale)
    NC = m.shape[1]
    M = torch.empty(R, dtype=torch.float32, device=x.device)
    Z = torch.empty(R, dtype=torch.float32, device=x.device)
    _combine_kernel[(R,)](m, z, M, Z, NC, lse_factor(block, NC), lse_floor(T), BNC=triton.next_power_of_2(NC))
    return M, Z
