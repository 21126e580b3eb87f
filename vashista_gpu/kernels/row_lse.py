"""Triton kernel: per-row, per-chunk (max, sum of exponentials) of a float32 array, the certificate's
Z̄_out = Σ_{j∉C} e^{ub_j} in one read of the bounds (the candidates' entries are −inf).

For chunk c of row r:  m_rc = max_j x_j,  z_rc ≥ Σ_j e^{x_j − m_rc}  (x_j − m_rc ≤ 0 is widened towards
0 by 2u|x_j − m_rc| before the exponential, covering the rounding of the subtraction and of the
exponential's argument reduction; the exponential's own error and the sum's are the caller's factors,
see :func:`row_lse_upper`). Replaces five full-size torch passes (amax, sub, mul, exp, sum).
"""
from __future__ import annotations

import triton
import triton.language as tl

__all__ = ["row_lse_upper"]


@triton.jit
def _row_chunk_lse_kernel(x_ptr, m_ptr, z_ptr, T, NC, BT: tl.constexpr):
    r = tl.program_id(0)
    c = tl.program_id(1)
    toks = c * BT + tl.arange(0, BT)
    x = tl.load(x_ptr + r.to(tl.int64) * T + toks, mask=toks < T, other=float("-inf"))
    m = tl.max(x, axis=0)
    m_safe = tl.where(m == float("-inf"), 0.0, m)
    z = tl.sum(tl.exp((x - m_safe) * (1 - 2 * 5.960464477539063e-08)), axis=0)
    tl.store(m_ptr + r * NC + c, m)
    tl.store(z_ptr + r * NC + c, z)


def row_lse_upper(x, *, block: int = 4096):
    """(M (R,), Z (R,)) float32 with Z·e^M ≥ Σ_j e^{x_j} for every row of ``x`` (R, T) float32
    (entries may be −inf; M = −inf and Z = 0 for a row without finite entries).

    Error model (outward): the device exponential within 16u (u = 2⁻²⁴; ex2.approx is within ~2⁻²²),
    each float32 sum of n terms within γ_n(u), the chunk combination's products and exponentials
    likewise; flush-to-zero of terms below 2⁻¹²⁶ adds at most T·2⁻¹²⁶ relative to the largest term (1).
    """
    import torch
    R, T = x.shape
    NC = triton.cdiv(T, block)
    m = torch.empty((R, NC), dtype=torch.float32, device=x.device)
    z = torch.empty((R, NC), dtype=torch.float32, device=x.device)
    _row_chunk_lse_kernel[(R, NC)](x, m, z, T, NC, BT=block)
    u = 2.0 ** -24
    gam = lambda n: n * u / (1 - n * u)          # noqa: E731
    M = m.amax(-1)
    M_safe = torch.where(torch.isfinite(M), M, torch.zeros_like(M))
    m_safe = torch.where(torch.isfinite(m), m, M_safe[:, None])
    w = torch.exp((m_safe - M_safe[:, None]) * (1 - 2 * u))
    Z = (z * w).sum(-1) * ((1 + 16 * u) ** 2 * (1 + gam(block + 2)) * (1 + gam(NC + 2)) * (1 + 2 * u)) + T * 2.0 ** -126
    Z = torch.where(torch.isfinite(M), Z, torch.zeros_like(Z))
    return M, Z
