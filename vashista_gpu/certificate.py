"""The certificate tail of the fused certified step (SPEC 3b), shared by the equal-length step
(``sketch.fused_sketch_step``) and the paged step (``sketch_plan.run_sketch_plan``): from the scan's
per-token upper bounds and the exact rescoring's sums, one float32 pass rounded outward gives

    L̂ = Z̄_out / (Z_C + Z̄_out) ≥ the dense mass outside C,
    ‖o − o_dense‖ ≤ L̂·(max‖v‖ + ‖o_C‖) + (e^{2ε} − 1)·max‖v‖ + o's own float32 rounding,
    Δ̂ = max_C lb − max_{j∉C} ub,

with Z̄_out from ``kernels/row_lse.py`` (one read of the bounds) and Z_C, m_C, ε from
``kernels/rescore.py``. Three launches (the −∞ scatter, the bounds' chunks, ``kernels/cert_tail.py``'s
finish kernel, which holds the formulas and docs/ROUNDING.md §4.4 their rounding); device-only, no
host synchronisation (CUDA-graph capturable).
"""
from __future__ import annotations

import math

import torch

from .kernels.cert_tail import cert_finish
from .kernels.row_lse import row_lse_chunks

__all__ = ["fused_certificate"]


def fused_certificate(ub: torch.Tensor, cand: torch.Tensor, out: torch.Tensor, m_c: torch.Tensor, zsum: torch.Tensor,
                      vm: torch.Tensor, eps: torch.Tensor, *, q_ok: torch.Tensor, poison: bool = True,
                      slack: torch.Tensor | None = None, group: int = 1, scale: float = 1.0):
    """(L̂, error bound, gap) (R,) float32 per row from the scan's bounds ``ub`` (R, T) (overwritten: the
    candidates' entries become −inf; with ``slack`` (R, ⌈T/group⌉), ``ub`` is the scan's ŝ and the
    two-sided bounds are derived from it, ``row_lse.row_lse_chunks``), the candidates ``cand`` (R, Kc),
    ``out`` (R, Dv) float32 and the rescoring's m_C, z_C sums (``kernels/rescore.py``); ``vm`` (R,) ≥ every value norm of the row;
    ``eps`` (R,) the rescoring's bound on its exponents' error. L̂ ≥ dense mass outside C, error ≥
    ‖o − exact dense attention‖ (float32 outward, ``kernels/cert_tail.py``). Rows with ``q_ok`` False
    (a non-finite query, a foreign sketch), a negative/NaN ``vm``, a non-finite output or bound, or
    any NaN get leakage 1 and error ∞; with ``poison`` (default) the output rows of ``q_ok`` False are
    set to NaN in place."""
    ub.scatter_(1, cand, -math.inf)
    m_ch, z_ch = row_lse_chunks(ub, slack=slack, group=group, scale=scale)
    return cert_finish(m_ch, z_ch, ub.shape[1], cand.shape[1], out, m_c, zsum, vm, eps, q_ok, poison=poison)
