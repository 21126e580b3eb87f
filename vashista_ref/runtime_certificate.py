"""The runtime certificate of one sparse decode step (SPEC 3), computed from what the step has read.

Softmax model. Dense attention is a = argmax_{a ∈ Δ} ⟨s, a⟩ + H(a) = softmax(s) over all tokens; the
sparse step solves the same problem restricted to the candidate set C. Write m = max_C s_j,
Z_C = Σ_C e^{s_j}, and for every token outside C its exp-mass x_j = e^{s_j}. Tokens outside C are

  * scored non-candidates (in a routed page): x_j known exactly;
  * tokens of an excluded block p (unrouted page, or hierarchy node dropped by the router): only
    Σ_{j∈p} x_j ∈ [0, u_p] is known, u_p = n_p e^{scale·UB_p(q)} from the block's min/max box.

These bounds never depend on how pages were chosen: with router="mean" the excluded blocks are still
bounded by their boxes. Then, with L the dense mass outside C,

    L ≤ L̂ = Z_out / (Z_C + Z_out),   Z_out = Σ_known x_j + Σ_p u_p                     (leakage)

and, because o_dense − o_sparse = Σ_{j∉C} a_j (v_j − o_sparse) with ‖v_j − o_sparse‖ ≤ w_j :=
vmax_{page(j)} + ‖o_sparse‖,

    ‖o_sparse − o_dense‖ ≤ E* = max_{x_p ∈ [0, u_p]} (Σ_known x_j w_j + Σ_p x_p w_p) / (Z_C + Σ_known x_j + Σ_p x_p)
                          ≤ L̂ · max_{j∉C} w_j                                    (``error_middle``)
                          ≤ 2 L̂ max_j ‖v_j‖                                     (``error_2lv``).

E* (``error``, the one policies use) is the tightest bound these summaries allow: a linear-fractional
maximum over a box, attained by switching blocks on in order of decreasing w_p while w_p exceeds the
current ratio, so it is the best prefix of the blocks sorted by w (O(b log b)). Everything is evaluated
in the log domain (log-sum-exp), so e^{UB−m} never overflows and the exactly known masses never
vanish next to a huge block bound, even at huge score scales.

All three forms are sound, so each is also capped by the looser ones (min), which makes the order
E ≤ error_middle ≤ error_2lv hold exactly in floating point.

Floating point: the certificate bounds the distance between the computed sparse output and dense
attention on the same float64 scores. To stay sound against a *computed* float64 dense output it adds

    rounding = u · (8 (M + |C| + 8) + 8·760) · max_j ‖v_j‖,   u = 2⁻⁵³,

covering the rounding of both weighted sums (each ≤ γ_n·max‖v‖ in norm) and of e^{s−m} (relative error
≤ (|s − m| + 2)u, and |s − m| ≤ 745 for any weight that does not underflow), and it inflates the bound
itself (and L̂) by (1 + ρ),  ρ = u · (8 (M + |C| + 8) + 8 (|c| + 760)) + expm1(4δ),  for the log-domain
certificate arithmetic at magnitude |c| (the largest log-mass involved) and for the rounding of scores
against box bounds: both are float64 dot products, each within γ_D·scale·Σ_d |q_d k_d| of exact, so
with A ≥ scale·max_j Σ_d |q_d k_{j,d}| (``score_abs_max``, from the boxes) δ = 2 (D + 2) u A. For
M = 1000 tokens the allowance is ~2e-12·max‖v‖.

Gap: Δ̂ = m − max(scale·UB_p over excluded blocks, s_j over scored non-candidates); +inf when C is
everything. Δ̂ > 0 says no excluded token can outscore the best candidate.

Projection model (solver eg/fw). The candidate problem min_{α∈Δ_C} ½‖K_Cᵀα − q‖² is certified for the
*whole* cache by the residual r̂ = q − ŷ, ŷ = K_Cᵀα̂: ŷ is the projection onto the full hull iff
μ̂_j = ⟨r̂, ŷ − k_j⟩ ≥ 0 for every token, which for excluded blocks is implied by
⟨r̂, ŷ⟩ − UB_p(r̂) ≥ 0 (UB_p evaluated at r̂, *not* at q). ``projection_gap`` = min of those lower
bounds. The paper's router scores raw q, which certifies nothing about this problem: a page can have a
low ⟨q, k⟩ bound yet a key far along r̂ (see tests/test_runtime_certificate.py).

Example:
    >>> import numpy as np
    >>> from vashista_ref.runtime_certificate import softmax_certificate
    >>> c = softmax_certificate(s_cand=np.array([3.0, 2.5]), o_sparse=np.array([1.0, 0.0]),
    ...     s_scored_out=np.array([0.0]), vmax_scored_out=np.array([1.0]),
    ...     log_u_blocks=np.log([8.0]) + 1.0, s_bound_blocks=np.array([1.0]), vmax_blocks=np.array([2.0]),
    ...     vmax_all=2.0, n_total=11)
    >>> bool(0 < c.error <= c.error_middle <= c.error_2lv), round(c.gap, 6)
    (True, 2.0)
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from vashista_core.rounding import U64

UNIT_ROUNDOFF = U64   # float64 (re-exported name; vashista_core.rounding holds the constants)


@dataclass(frozen=True)
class RuntimeCertificate:
    """Softmax-model certificate for one query (see module doc)."""
    leakage: float        # L̂: bound on the dense-attention mass outside the candidates
    error: float          # E* + rounding allowance: bound on ‖o_sparse − o_dense‖ (the tightest form)
    error_middle: float   # L̂ · (max_{j∉C} ‖v_j‖ + ‖o_sparse‖) + rounding
    error_2lv: float      # 2 L̂ max_j ‖v_j‖ + rounding
    gap: float            # Δ̂
    rounding: float       # the floating-point allowance included in the three error forms


def _best_prefix_ratio(A: float, Z: float, u: np.ndarray, w: np.ndarray) -> float:
    """max over x ∈ Π[0, u_i] of (A + Σ x_i w_i) / (Z + Σ x_i)  (A, Z, u, w ≥ 0)."""
    with np.errstate(divide="ignore"):
        return best_prefix_ratio_log(np.log(A), np.log(Z), np.log(np.asarray(u, dtype=np.float64)), w)


def best_prefix_ratio_log(log_A: float, log_Z: float, log_u: np.ndarray, w: np.ndarray) -> float:
    """The same maximum with A, Z, u given by their logs (−inf for 0), evaluated in the log domain so
    that terms of very different magnitude neither overflow nor vanish: switching blocks on in order of
    decreasing w, the best prefix is the maximum (a linear-fractional maximum over a box)."""
    w = np.asarray(w, dtype=np.float64)
    order = np.argsort(-w, kind="stable")
    with np.errstate(divide="ignore"):
        lw = np.log(w[order])
    lu = np.asarray(log_u, dtype=np.float64)[order]
    log_num = np.logaddexp(log_A, np.r_[-np.inf, np.logaddexp.accumulate(lu + lw)])
    log_den = np.logaddexp(log_Z, np.r_[-np.inf, np.logaddexp.accumulate(lu)])
    with np.errstate(invalid="ignore"):
        ratio = np.where(np.isneginf(log_den), 0.0, np.exp(log_num - log_den))
    return float(np.max(np.nan_to_num(ratio, nan=0.0)))


def softmax_certificate(*, s_cand: np.ndarray, o_sparse: np.ndarray, s_scored_out: np.ndarray,
                        vmax_scored_out: np.ndarray, log_u_blocks: np.ndarray, s_bound_blocks: np.ndarray,
                        vmax_blocks: np.ndarray, vmax_all: float, n_total: int,
                        score_abs_max: float = 0.0, head_dim: int = 0) -> RuntimeCertificate:
    """Certificate from: candidate scores, the sparse output, exact scores of scored non-candidates (with
    their pages' max value norms), excluded blocks as log mass bounds log(n_p) + scale·UB_p, score bounds
    scale·UB_p and max value norms, the max value norm over the whole sequence and its length M."""
    s_cand = np.asarray(s_cand, dtype=np.float64)
    s_known = np.asarray(s_scored_out, dtype=np.float64)
    log_u = np.asarray(log_u_blocks, dtype=np.float64)
    m = float(s_cand.max())
    log_zc = m + float(np.log(np.exp(s_cand - m).sum()))
    o_norm = float(np.linalg.norm(o_sparse))
    w_known = np.asarray(vmax_scored_out, dtype=np.float64) + o_norm
    w_blocks = np.asarray(vmax_blocks, dtype=np.float64) + o_norm
    # the largest log-mass involved: the magnitude at which the log-domain arithmetic rounds
    c = max(log_zc, float(np.max(s_known, initial=-np.inf)), float(np.max(log_u, initial=-np.inf)))
    rounding = UNIT_ROUNDOFF * (8.0 * (n_total + s_cand.shape[0] + 8) + 8.0 * 760.0) * float(vmax_all)
    rho = UNIT_ROUNDOFF * (8.0 * (n_total + s_cand.shape[0] + 8) + 8.0 * (abs(c) + 760.0))
    # a computed score and a computed box bound can each be off by γ_D·scale·Σ_d|q_d k_d|: an excluded
    # token's float score may exceed its block's float bound by twice that, scaling its mass by e^{2δ}
    delta = 2.0 * (head_dim + 2) * UNIT_ROUNDOFF * float(score_abs_max)
    rho += float(np.expm1(4.0 * delta))
    if s_known.size + log_u.size == 0:
        return RuntimeCertificate(0.0, rounding, rounding, rounding, float("inf"), rounding)
    with np.errstate(divide="ignore"):
        log_a = float(np.logaddexp.reduce(s_known + np.log(w_known), initial=-np.inf))
    log_z = float(np.logaddexp(log_zc, np.logaddexp.reduce(s_known, initial=-np.inf)))
    e_star = best_prefix_ratio_log(log_a, log_z, log_u, w_blocks)
    log_zout = float(np.logaddexp.reduce(np.r_[s_known, log_u]))
    # (1 + ρ) covers relative rounding; subnormal results lose relative precision, so add a few of the
    # smallest normal numbers as well (absolute, negligible)
    leakage = min(1.0, float(np.exp(log_zout - np.logaddexp(log_zc, log_zout))) * (1 + rho)
                  + 4 * np.finfo(np.float64).tiny)
    w_max = float(np.max(np.r_[w_known, w_blocks]))
    gap = m - float(np.max(np.r_[s_known, np.asarray(s_bound_blocks, dtype=np.float64)]))
    e_2lv = 2.0 * leakage * float(vmax_all)
    e_middle = min(leakage * w_max, e_2lv)
    e_star = min(e_star, e_middle)
    return RuntimeCertificate(
        leakage=leakage,
        error=e_star * (1 + rho) + rounding,
        error_middle=e_middle * (1 + rho) + rounding,
        error_2lv=e_2lv * (1 + rho) + rounding,
        gap=gap,
        rounding=rounding,
    )


@dataclass(frozen=True)
class ProjectionCertificate:
    """Residual certificate of the projection model restricted to the candidates (see module doc)."""
    gap: float                 # min over non-candidates of (lower bounds on) μ̂_j; > 0 certifies the face
    mu_scored: np.ndarray      # μ̂_j = ⟨r̂, ŷ − k_j⟩ of the scored non-candidates
    mu_blocks: np.ndarray      # lower bounds ⟨r̂, ŷ⟩ − UB_p(r̂) for the excluded blocks
    residual_norm: float       # ‖r̂‖ (0: q inside the candidates' hull, nothing to certify)


def projection_certificate(q: np.ndarray, y_hat: np.ndarray, K_scored_out: np.ndarray,
                           kmin_blocks: np.ndarray, kmax_blocks: np.ndarray) -> ProjectionCertificate:
    """μ̂ certificate at residual r̂ = q − ŷ: exact for scored keys, via UB_p(r̂) for excluded blocks.

    When r̂ = 0 (q inside the candidates' hull) every μ̂ is 0: ``gap`` is NaN — "no certificate".
    """
    r = np.asarray(q, dtype=np.float64) - np.asarray(y_hat, dtype=np.float64)
    ry = float(r @ y_hat)
    mu_scored = ry - np.asarray(K_scored_out, dtype=np.float64).reshape(-1, r.shape[0]) @ r
    ub = np.maximum(kmin_blocks * r, kmax_blocks * r).sum(axis=-1) if len(kmin_blocks) else np.zeros(0)
    mu_blocks = ry - ub
    rn = float(np.linalg.norm(r))
    allm = np.r_[mu_scored, mu_blocks]
    gap = float("nan") if rn == 0.0 else (float(allm.min()) if allm.size else float("inf"))
    return ProjectionCertificate(gap=gap, mu_scored=mu_scored, mu_blocks=mu_blocks, residual_norm=rn)
