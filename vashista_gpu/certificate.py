"""The certificate tail of the fused certified step (SPEC 3b), shared by the equal-length step
(``sketch.fused_sketch_step``) and the paged step (``sketch_plan.run_sketch_plan``): from the scan's
per-token upper bounds and the exact rescoring's sums, one float32 pass rounded outward gives

    L̂ = Z̄_out / (Z_C + Z̄_out) ≥ the dense mass outside C,
    ‖o − o_dense‖ ≤ L̂·(max‖v‖ + ‖o_C‖) + (e^{2ε} − 1)·max‖v‖ + o's own float32 rounding,
    Δ̂ = max_C lb − max_{j∉C} ub,

with Z̄_out from ``kernels/row_lse.py`` (one read of the bounds) and Z_C, m_C, ε from
``kernels/rescore.py``. Device-only, no host synchronisation (CUDA-graph capturable).
"""
from __future__ import annotations

import math

import torch

from vashista_core.rounding import U32, gamma

from .allowance import never_nan, up
from .kernels.row_lse import row_lse_upper

__all__ = ["fused_certificate"]


def fused_certificate(ub: torch.Tensor, cand: torch.Tensor, out: torch.Tensor, m_c: torch.Tensor, zsum: torch.Tensor,
                 vm: torch.Tensor, eps: torch.Tensor, *, q_ok: torch.Tensor | None = None):
    """(L̂, error bound, gap) per row from the scan's bounds ``ub`` (R, T) (overwritten: the candidates' entries
    become −inf), the candidates ``cand`` (R, Kc), ``out`` (R, Dv) and the rescoring's m_C, z_C sums
    (``kernels/rescore.py``); ``vm`` (R,) ≥ every value norm of the row; ``eps`` (R,) the rescoring's
    bound on its exponents' error. All float32, outward: L̂ = Z̄_out / (Z_C + Z̄_out) ≥ dense mass
    outside C, error ≤ L̂·(max‖v‖ + ‖o_C‖) + (e^{2ε} − 1)·max‖v‖ + o's own rounding, with o_C the exact
    softmax over C and ‖o_C‖ ≤ ‖o‖ + (e^{2ε} − 1)·max‖v‖. Rows with ``q_ok`` False (a non-finite
    query, a void max‖v‖, a foreign sketch), a non-finite output or any NaN get leakage 1 and error ∞."""
    Kc, Dv = cand.shape[1], out.shape[1]
    # Z̄_out from the bounds of the non-candidates (ub is the step's own buffer)
    ub.scatter_(1, cand, -math.inf)
    m_o, z_out = row_lse_upper(ub)
    # Δ̂ = max_C lb − max_out ub, rounded down (+inf when every token is a candidate)
    gap = torch.nextafter(m_c - m_o, torch.full_like(m_c, -math.inf))
    out_any = torch.isfinite(m_o)
    m_o = torch.where(out_any, m_o, torch.zeros_like(m_o))
    z_out = torch.where(out_any, z_out, torch.ones_like(z_out))
    # Z_C from below: x − m is rounded within u·|x − m|, so the kernel widened the exponent by
    # 2u·|x − m| away from 0; the device exponential is within 16u, the sum within γ_Kc
    z_c = zsum * ((1 - 16 * U32) * (1 - gamma(Kc + 2, U32)))
    # L̂ = 1/(1 + e^d) with d = log(Z_C/Z̄_out) = (m_c − m_o) + log z_c − log z_out, lowered by the
    # rounding of its three operations and the two logs (each within a few ulp of its magnitude)
    dm, lc, lo = m_c - m_o, torch.log(z_c), torch.log(z_out)
    d = dm + lc - lo
    d = d - (dm.abs() + lc.abs() + lo.abs() + d.abs()) * (8 * U32) - 8 * U32
    leak = torch.exp(-torch.nn.functional.softplus(d))       # 1/(1 + e^d) without overflow
    # softplus/exp within a few ulp; underflow is covered by the floor (far above exp's subnormal error)
    leak = (leak * (1 + 16 * U32) + (d.abs() * (16 * U32)) * leak).clamp(min=1e-37, max=1.0)
    leak = torch.where(out_any, leak, torch.zeros_like(leak))
    # the weights' error from the exponents' (e^{2ε} − 1, rounded up) and the float32 rounding of o
    # itself (softmax and a Kc-term weighted sum of values ≤ vmax)
    w_err = vm * torch.expm1(2 * eps) * (1 + 16 * U32)
    error = up((vm + torch.linalg.vector_norm(out, dim=-1) + w_err) * leak * (1 + (Dv + 8) * 2 * U32)
                    + w_err + vm * ((2 * Kc + Dv + 16) * 4 * U32))
    ok = torch.isfinite(out).all(-1)
    if q_ok is not None:
        ok = ok & q_ok
    leak = torch.where(ok, leak, torch.ones_like(leak))
    error = torch.where(ok, error, torch.full_like(error, math.inf))
    leak, error = never_nan(leak, error)
    return leak, error, gap
