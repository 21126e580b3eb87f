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

Floating point (docs/ROUNDING.md §3): the certificate bounds the distance from the *returned* output
to *exact* dense attention over the stored keys and values. Every score and box bound the step computed
is within δ of its exact value, δ = ``rounding.score_error`` of A ≥ scale·max_j Σ_d |q_d k_{j,d}|
(``score_abs_max``, from the boxes), so the certificate works with intervals: the candidates' exact
scores are ≥ ŝ − δ, the scored non-candidates' ≤ ŝ + δ (and ≥ ŝ − δ, for E*), the blocks' ≤ UB + δ, and
every log-domain step is rounded outward (``rounding.lse_upper`` / ``lse_lower`` / ``leakage_upper``;
E* carries ``rounding.log_domain_factor``). The returned output differs from exact softmax over C by

    rounding = softmax_tv(ŝ_C, δ) · max‖v‖ + softmax_eval_error(|C|) + softmax_eval_error(M)

(the candidates' score rounding — bounded even when δ ≫ 1 if one candidate dominates —, the evaluation
of exponentials, sums and division, and, so that the bound also holds against the float64 dense output
``dense_decode`` computes from the same scores, that computation's evaluation error). The excluded
forms use w_j = vmax_j + ‖o_sparse‖ + rounding, since ‖o_C‖ ≤ ‖o_sparse‖ + rounding. Nothing is NaN: a
form that cannot be evaluated is +inf, and the three forms are capped by each other (min), so
E ≤ error_middle ≤ error_2lv holds exactly; only overflowing value norms make ``error`` infinite.

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

from vashista_core.errors import VashistaInputError
from vashista_core.rounding import (FN_REL, SUBNORMAL_MIN, U64, add_up, down, gamma, leakage_upper, log_domain_factor,
                                    lse_lower, lse_upper, mul_up, score_error, softmax_eval_error, softmax_tv, up)

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
    # a block of no mass adds nothing, whatever its w (−inf + inf would be NaN)
    terms = np.where(np.isneginf(lu) | np.isneginf(lw), -np.inf, lu + lw)
    log_num = np.logaddexp(log_A, np.r_[-np.inf, np.logaddexp.accumulate(terms)])
    log_den = np.logaddexp(log_Z, np.r_[-np.inf, np.logaddexp.accumulate(lu)])
    with np.errstate(invalid="ignore", over="ignore"):
        ratio = np.where(np.isneginf(log_num), 0.0, np.exp(log_num - log_den))
    # inf/inf says nothing: an upper bound must then be +inf, never NaN (and never 0)
    return float(np.max(np.where(np.isnan(ratio), np.inf, ratio)))


def softmax_certificate(*, s_cand: np.ndarray, o_sparse: np.ndarray, s_scored_out: np.ndarray,
                        vmax_scored_out: np.ndarray, log_u_blocks: np.ndarray, s_bound_blocks: np.ndarray,
                        vmax_blocks: np.ndarray, vmax_all: float, n_total: int,
                        score_abs_max: float = 0.0, head_dim: int = 0) -> RuntimeCertificate:
    """Certificate from: candidate scores, the sparse output, the computed scores of scored
    non-candidates (with their pages' max value norms), excluded blocks as log mass bounds
    log(n_p) + scale·UB_p, score bounds scale·UB_p and max value norms, the max value norm over the
    whole sequence, its length M, and A = ``score_abs_max`` ≥ scale·Σ_d |q_d k_d| over every key (0:
    scores taken as exact) with the head dimension D, which set the score rounding δ (module doc)."""
    s_cand = np.asarray(s_cand, dtype=np.float64)
    s_known = np.asarray(s_scored_out, dtype=np.float64)
    log_u = np.asarray(log_u_blocks, dtype=np.float64)
    dv = int(np.shape(o_sparse)[-1])
    # value norms were computed in float64: enlarge them so that they bound the exact norms
    grow_v = 1 + 2 * gamma(dv + 2)
    vmax_all = float(up(float(vmax_all) * grow_v))
    delta = float(score_error(score_abs_max, head_dim)) if score_abs_max else 0.0
    rounding = add_up(mul_up(softmax_tv(s_cand, delta), vmax_all),
                      softmax_eval_error(s_cand.shape[0], vmax_all), softmax_eval_error(int(n_total), vmax_all))
    if s_known.size + log_u.size == 0:
        return RuntimeCertificate(0.0, rounding, rounding, rounding, float("inf"), rounding)
    o_norm = float(up(float(np.linalg.norm(o_sparse)) * grow_v))
    w_off = add_up(o_norm, rounding)                     # ‖o_C‖ ≤ ‖o_sparse‖ + rounding
    w_known = up(up(np.asarray(vmax_scored_out, dtype=np.float64) * grow_v) + w_off)
    w_blocks = up(up(np.asarray(vmax_blocks, dtype=np.float64) * grow_v) + w_off)
    # exact scores lie within δ of the computed ones; a block's log mass log n + scale·UB also carries
    # the rounding of log n and of the sum (FN_REL, u relative to its terms, |scale·UB| ≤ A)
    lc = down(s_cand - delta)
    k_lo, k_hi = down(s_known - delta), up(s_known + delta)
    u_hi = up(log_u + up(delta + 32 * U64 * (np.abs(log_u) + float(score_abs_max) + 1.0)))
    sb_hi = up(np.asarray(s_bound_blocks, dtype=np.float64) + delta)
    log_zc = lse_lower(lc)
    leakage = leakage_upper(log_zc, lse_upper(np.r_[k_hi, u_hi]), int(n_total))
    gap = float(down(float(lc.max()) - float(np.max(np.r_[k_hi, sb_hi]))))
    w_max = float(np.max(np.r_[w_known, w_blocks]))
    e_2lv = mul_up(2.0 * leakage, vmax_all)
    e_middle = min(mul_up(leakage, w_max), e_2lv)
    e_star = min(_estar_intervals(log_zc, k_lo, k_hi, w_known, u_hi, w_blocks), e_middle)
    return RuntimeCertificate(
        leakage=leakage,
        error=add_up(e_star, rounding),
        error_middle=add_up(e_middle, rounding),
        error_2lv=add_up(e_2lv, rounding),
        gap=gap,
        rounding=rounding,
    )


def _estar_intervals(log_zc_lo: float, log_x_lo: np.ndarray, log_x_hi: np.ndarray, w_x: np.ndarray,
                     log_u: np.ndarray, w_u: np.ndarray) -> float:
    """E* = max (Σ x_j w_j + Σ y_p w_p) / (Z_C + Σ x_j + Σ y_p) over x_j ∈ [e^{lo_j}, e^{hi_j}] (tokens
    known to an interval) and y_p ∈ [0, e^{log_u_p}] (blocks known by a bound), Z_C ≥ e^{log_zc_lo},
    rounded up; +inf when the log-domain evaluation cannot be trusted (``rounding.log_domain_factor``).
    Written x_j = e^{lo_j} + t_j it is a linear-fractional maximum over a box (``best_prefix_ratio_log``)."""
    fn = float(np.log1p(FN_REL))
    lo, hi = np.asarray(log_x_lo) - fn, np.asarray(log_x_hi) + fn
    with np.errstate(divide="ignore", invalid="ignore", under="ignore"):
        log_slack = np.where(hi > lo, hi + np.log1p(-np.exp(lo - hi)), -np.inf)     # log(e^hi − e^lo)
        log_a = _logsumexp(np.where(np.asarray(w_x) > 0, lo + np.log(w_x), -np.inf))
    log_z = float(np.logaddexp(log_zc_lo - fn, _logsumexp(lo)))
    e = best_prefix_ratio_log(log_a, log_z, np.r_[log_slack, np.asarray(log_u) + fn], np.r_[w_x, w_u])
    with np.errstate(divide="ignore"):
        logs = np.r_[log_zc_lo, lo, hi, log_u, np.log(np.r_[w_x, w_u, 1.0])]
    mag = float(np.max(np.abs(logs[np.isfinite(logs)]), initial=0.0))
    factor = log_domain_factor(logs.size, mag)
    if not (np.isfinite(e) and np.isfinite(factor)):
        return float("inf")
    return float(up(e * factor + 4 * SUBNORMAL_MIN))


def _logsumexp(x: np.ndarray) -> float:
    """log Σ e^{x_i} in plain float64 (−inf for no terms); its rounding is in log_domain_factor."""
    x = np.asarray(x, dtype=np.float64)
    m = float(np.max(x, initial=-np.inf))
    if not np.isfinite(m):
        return m
    with np.errstate(under="ignore"):
        return m + float(np.log(np.exp(x - m).sum()))


@dataclass(frozen=True)
class ProjectionCertificate:
    """Residual certificate of the projection model restricted to the candidates (see module doc)."""
    gap: float                 # min over non-candidates of (lower bounds on) μ̂_j; > 0 certifies the face
    mu_scored: np.ndarray      # μ̂_j = ⟨r̂, ŷ − k_j⟩ of the scored non-candidates
    mu_blocks: np.ndarray      # lower bounds ⟨r̂, ŷ⟩ − UB_p(r̂) for the excluded blocks
    residual_norm: float       # ‖r̂‖ (0: q inside the candidates' hull, nothing to certify)


def _pow2_exponent(*arrays) -> int:
    """e with max |x| < 2^e over ``arrays`` (0 when all are zero): dividing by 2^e is exact."""
    m = max((float(np.max(np.abs(a), initial=0.0)) for a in arrays), default=0.0)
    return int(np.frexp(m)[1])


def projection_certificate(q: np.ndarray, y_hat: np.ndarray, K_scored_out: np.ndarray,
                           kmin_blocks: np.ndarray, kmax_blocks: np.ndarray) -> ProjectionCertificate:
    """μ̂ certificate at residual r̂ = q − ŷ: exact for scored keys, via UB_p(r̂) for excluded blocks.

    When r̂ = 0 (q inside the candidates' hull) every μ̂ is 0: ``gap`` is NaN — "no certificate".

    μ̂ is bilinear in (r̂, keys), so it is evaluated on r̂ and the keys divided by powers of two (exact)
    and scaled back: at q, K ~ 1e-300 the products underflowed and ‖r̂‖ read 0, i.e. "q inside the
    hull" (issue 15). A gap whose scaled value leaves float64's range (it is ∝ the square of the
    inputs' scale) is refused with the reason rather than reported as 0 or ∞.
    """
    r = np.asarray(q, dtype=np.float64) - np.asarray(y_hat, dtype=np.float64)
    y = np.asarray(y_hat, dtype=np.float64)
    Ko = np.asarray(K_scored_out, dtype=np.float64).reshape(-1, r.shape[0])
    lo, hi = np.asarray(kmin_blocks, dtype=np.float64), np.asarray(kmax_blocks, dtype=np.float64)
    er, ek = _pow2_exponent(r), _pow2_exponent(y, Ko, lo, hi)
    rt = np.ldexp(r, -er)
    yt, Kt, lot, hit = (np.ldexp(a, -ek) for a in (y, Ko, lo, hi))
    ry = float(rt @ yt)
    mu_t = np.r_[ry - Kt @ rt, ry - np.maximum(lot * rt, hit * rt).sum(axis=-1) if len(lo) else np.zeros(0)]
    with np.errstate(over="ignore", under="ignore"):
        mu = np.ldexp(mu_t, er + ek)
        rn = float(np.ldexp(np.linalg.norm(rt), er))
    if not r.any():
        gap = float("nan")
    elif not mu.size:
        gap = float("inf")
    else:
        gap_t, gap = float(mu_t.min()), float(mu.min())
        if not np.isfinite(gap) or (gap == 0.0) != (gap_t == 0.0):
            raise VashistaInputError("q", f"the projection certificate's gap (~{gap_t:.3g}·2^{er + ek}, the square "
                                          "of q's and the keys' scale) leaves float64's range; rescale q and the "
                                          "keys by one factor (the projection is scale-invariant)")
    n = Ko.shape[0]
    return ProjectionCertificate(gap=gap, mu_scored=mu[:n], mu_blocks=mu[n:], residual_norm=rn)
