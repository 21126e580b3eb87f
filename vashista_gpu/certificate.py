"""The certificate tail of the fused certified step (SPEC 3b), shared by the equal-length step
(``sketch.fused_sketch_step``) and the paged step (``sketch_plan.run_sketch_plan``): from the scan's
per-token upper bounds and the exact rescoring's sums, one float32 pass rounded outward gives

    L̂ = Z̄_out / (Z_C + Z̄_out) ≥ the dense mass outside C,
    ‖o − o_dense‖ ≤ L̂·(max‖v‖ + ‖o_C‖) + (e^{2ε} − 1)·max‖v‖ + o's own float32 rounding,
    Δ̂ = max_C lb − max_{j∉C} ub,

with Z̄_out from ``kernels/block_lse.py`` (the scan's block bounds; a token's bound is recomputed
from ŝ only in the ≤ Kc blocks that hold a candidate) and Z_C, m_C, ε from ``kernels/rescore.py``.
Three launches (the candidates' marks, the excluded chunks, ``kernels/cert_tail.py``'s finish kernel,
which holds the formulas and docs/ROUNDING.md §4.4 their rounding); device-only, no host
synchronisation (CUDA-graph capturable).
"""
from __future__ import annotations

import torch

from .kernels.block_lse import excluded_chunks, excluded_factor, excluded_floor
from .kernels.cert_tail import cert_finish

__all__ = ["fused_certificate"]


def fused_certificate(s: torch.Tensor, blocks: torch.Tensor, cand: torch.Tensor, out: torch.Tensor,
                      m_c: torch.Tensor, zsum: torch.Tensor, vm: torch.Tensor, eps: torch.Tensor, *, scale: float,
                      q_ok: torch.Tensor, poison: bool = True):
    """(L̂, error bound, gap) (R,) float32 per row from the scan's ŝ ``s`` (R, T) and block bounds
    ``blocks`` (3, R, ⌈T/16⌉) (``sketch_scan``'s ``bounds="blocks"``; both overwritten at the
    candidates), the candidates ``cand`` (R, Kc), ``out`` (R, Dv) float32 and the rescoring's m_C, z_C
    sums (``kernels/rescore.py``); ``vm`` (R,) ≥ every value norm of the row; ``eps`` (R,) the
    rescoring's bound on its exponents' error. L̂ ≥ dense mass outside C, error ≥ ‖o − exact dense
    attention‖ (float32 outward, ``kernels/cert_tail.py``). Rows with ``q_ok`` False (a non-finite
    query, a foreign sketch), a negative/NaN ``vm``, a non-finite output or bound, or any NaN get
    leakage 1 and error ∞; with ``poison`` (default) the output rows of ``q_ok`` False are set to NaN
    in place."""
    m_ch, z_ch = excluded_chunks(s, blocks, cand, scale=scale)
    T = s.shape[1]
    return cert_finish(m_ch, z_ch, T, cand.shape[1], out, m_c, zsum, vm, eps, q_ok, poison=poison,
                       lse=(excluded_factor(m_ch.shape[1]), excluded_floor(T)))
