"""Rounding allowances of the GPU tier's certificates, evaluated on the device (no host synchronisation).

Every step of the tier computes scores, exponentials, sums and the output in float32 (or float64 on
the torch path of certified mode) and may cast the output to the query's dtype. A certificate is a
bound on the distance from the output *returned* to *exact* dense attention over the stored keys and
values, so the steps widen what they compute by the helpers below (docs/ROUNDING.md, "GPU tier",
derives every term):

* :func:`score_radius` — δ ≥ |ŝ_j − s_j| for every score (and box bound) the step evaluated, from the
  magnitude A = scale·Σ_d |q_d|·R_d (R_d ≥ |k_jd| for every stored key of the row's KV head);
* :func:`widen_leakage` — L̂' = L̂ / (L̂ + (1 − L̂)e^{−w}): the leakage 1/(1 + e^{d}) with its log-ratio d
  lowered by w (the scores' 2δ and the float32 evaluation of the log-sum-exps);
* :func:`weights_tv` — Σ_j |â_j − a_j| ≤ e^{2δ'} − 1 (capped at 2) for softmax weights whose exponents
  err by ≤ δ';
* :func:`cast_output` — the final cast to the caller's dtype: ‖fl_t(o) − o‖ ≤ u_t‖o‖ + √Dv·η_t (η_t
  the absolute error of a result below the normal range, flush-to-zero included), +∞ where the cast
  overflows;
* :func:`never_nan` — a NaN certificate (a non-finite query, key or value reached the arithmetic)
  becomes +∞ error and leakage 1: "nothing can be said", which every policy treats as uncertified.

All helpers take and return tensors; none reads a value back to the host, so they run inside a
CUDA graph.
"""
from __future__ import annotations

import math

import torch

from vashista_core.rounding import U32, U64, U_BF16, U_FP16, gamma

__all__ = ["cast_output", "down", "never_nan", "score_radius", "unit_roundoff", "up", "weights_tv", "widen_leakage"]

_UNIT = {torch.float64: U64, torch.float32: U32, torch.bfloat16: U_BF16, torch.float16: U_FP16}
# absolute error of a cast result below the normal range (subnormal spacing, or the smallest normal
# when the device flushes subnormals to zero)
_TINY = {torch.float64: 2.0 ** -1022, torch.float32: 2.0 ** -126, torch.bfloat16: 2.0 ** -126,
         torch.float16: 2.0 ** -14}


def unit_roundoff(dtype: torch.dtype) -> float:
    """u of a floating dtype (half its machine epsilon)."""
    return _UNIT[dtype]


def up(x: torch.Tensor) -> torch.Tensor:
    """The next float above x (elementwise, x's dtype): one outward rounding step."""
    return torch.nextafter(x, torch.full_like(x, math.inf))


def down(x: torch.Tensor) -> torch.Tensor:
    """The next float below x (elementwise, x's dtype)."""
    return torch.nextafter(x, torch.full_like(x, -math.inf))


def score_radius(q32: torch.Tensor, R: torch.Tensor, scale: float, head_dim: int) -> torch.Tensor:
    """δ (…,) ≥ the error of every float32 score scale·⟨q, k⟩ and box bound scale·Σ max(q lo, q hi)
    of a key k with |k_d| ≤ R_d: ``q32`` (…, D) float32, ``R`` broadcastable to it (float32).

    A = scale·Σ_d |q_d| R_d bounds every such quantity's magnitude; its float32 evaluation is raised by
    γ_{D+2}. The dot product errs by γ_D·A, the multiplication by the float32 scale (itself rounded)
    by 2u·A, the subtraction s − m and the exponential's argument by ≤ 4u·A each side: δ =
    (2γ_{D+2} + 16u)·A, raised once more for its own rounding. A non-finite key or query gives δ = ∞
    (or NaN, which :func:`never_nan` maps to ∞ downstream)."""
    g = gamma(int(head_dim) + 2, U32)
    A = (q32.abs() * R).sum(-1) * (float(scale) * (1 + 4 * g))
    return up(A * (2 * g + 16 * U32) * (1 + 4 * U32))


def widen_leakage(leak: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """The leakage 1/(1 + e^{d − w}) from a float32 L̂ = 1/(1 + e^{d}) (within a few ulp) and w ≥ 0:
    L̂' = L̂ / (L̂ + (1 − L̂)·e^{−w}), monotone in L̂, so evaluating it at L̂ raised by its own error
    (and at least 2⁻¹²⁵: an L̂ that underflowed or was flushed to 0 stood below that) stays an upper
    bound; rounded up and capped at 1."""
    L = torch.clamp(leak * (1 + 32 * U32), min=2.0 ** -125, max=1.0)
    ew = torch.exp(-w) * (1 - 16 * U32)
    Lw = L / (L + (1 - L) * ew)
    return torch.clamp(up(Lw * (1 + 16 * U32)), max=1.0)


def weights_tv(delta: torch.Tensor, n_terms: int) -> torch.Tensor:
    """Σ_j |â_j − a_j| for softmax weights â computed with exponents within δ of the exact ones, the
    float32 exponential (16u relative) and a normalising sum of n_terms terms (γ_n): every ratio
    â_j/a_j lies in [e^{−2δ'}, e^{2δ'}] with δ' = δ + 16u + γ_n, so the variation is ≤ e^{2δ'} − 1;
    never above 2."""
    d = delta + (16 * U32 + gamma(int(n_terms) + 2, U32))
    return torch.clamp(up(torch.expm1(2 * d) * (1 + 16 * U32)), max=2.0)


def cast_output(out: torch.Tensor, error: torch.Tensor, dtype: torch.dtype):
    """(out cast to ``dtype``, error raised by the cast): u_t‖o‖ + √Dv·η_t, ‖o‖ evaluated in float64;
    +∞ for a row whose cast (or input) is not finite. ``error`` keeps its dtype."""
    o = out.to(dtype)
    if dtype == out.dtype:      # no cast: nothing to add, and adding nothing needs no outward step
        e = error
    else:
        Dv = out.shape[-1]
        n = torch.linalg.vector_norm(out.double(), dim=-1) * (1 + 2 * gamma(Dv + 2))
        term = (n * unit_roundoff(dtype) + math.sqrt(Dv) * _TINY[dtype]).to(error.dtype)
        e = up(error + term)
    finite = torch.isfinite(o).all(-1) & torch.isfinite(out).all(-1)
    return o, torch.where(finite, e, torch.full_like(e, math.inf))


def never_nan(leak: torch.Tensor, error: torch.Tensor):
    """(leakage, error) with NaN replaced by 1 and +∞: the certificate of a step whose arithmetic met
    a non-finite input says nothing, and is never read as certified."""
    bad = torch.isnan(leak) | torch.isnan(error)
    return (torch.where(bad, torch.ones_like(leak), leak),
            torch.where(bad, torch.full_like(error, math.inf), error))

