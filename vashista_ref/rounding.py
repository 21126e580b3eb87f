"""Rounding allowances of the float64 certificates (docs/ROUNDING.md derives each one).

The certificates bound the distance from the *returned* float64 output to *exact* dense attention over
the stored keys and values (real arithmetic on the stored float64 numbers). The pieces shared by the
paged certificate (``runtime_certificate``) and certified mode (``sketch``):

  * :func:`score_error` — |fl(scale·⟨q, k⟩) − scale·⟨q, k⟩| from scale·Σ_d |q_d k_d| (ROUNDING.md §2.1);
  * :func:`softmax_tv` — total variation between softmax(s) and softmax(s') when |s'_j − s_j| ≤ δ_j:
    ≤ min(e^{2δ} − 1, 2S/(1 + S)), S = Σ_{j≠t} e^{s_j − s_t + δ_j + δ_t} (t the top score), so scores
    perturbed by much more than 1 still give a finite, small bound when one score dominates (§2.3);
  * :func:`softmax_eval_error` — ‖computed softmax-weighted sum − exact one on the same float scores‖
    (exponentials, the two sums, the division; §2.2);
  * :func:`mul_up` / :func:`add_up` — products and sums of non-negative upper bounds rounded up, where
    0 · ∞ = 0 (no mass times an unbounded norm is no error) and nothing yields NaN;
  * :func:`log_domain_factor` — the relative allowance for a log-sum-exp chain of n terms at log
    magnitude ``mag`` (∞ when nothing can be said, never NaN; §2.4).

An infinite bound is a valid certificate ("nothing can be said"): it is never NaN, and ``certified``
is False for it under every policy tolerance.

Example:
    >>> import numpy as np
    >>> from vashista_ref.rounding import softmax_tv, mul_up
    >>> float(softmax_tv(np.array([1e20, 0.0]), 2e5)) < 1e-300      # one-hot survives δ = 2e5
    True
    >>> mul_up(0.0, float("inf")), mul_up(2.0, float("inf"))
    (0.0, inf)
"""
from __future__ import annotations

import numpy as np

from vashista_core.rounding import FN_REL, U64, down, gamma, up

__all__ = ["FN_REL", "SUBNORMAL_MIN", "U64", "add_up", "down", "gamma", "log_domain_factor", "mul_up",
           "score_error", "softmax_eval_error", "softmax_tv", "up"]

SUBNORMAL_MIN = 2.0 ** -1074   # absolute error of an exp that underflows (or lands in the subnormals)
_EXP_ARG = 709.0               # |s − m| below which e^{s−m} is a normal number: its argument errs by u·709


def mul_up(a: float, b: float) -> float:
    """a·b rounded up for upper bounds a, b ≥ 0; 0 when either is 0 (also 0·∞), ∞ on overflow."""
    a, b = float(a), float(b)
    if a == 0.0 or b == 0.0:
        return 0.0
    return float(up(a * b))


def add_up(*xs: float) -> float:
    """Σ x rounded up (non-negative upper bounds; ∞ stays ∞, NaN is refused by the caller's design)."""
    s = 0.0
    for x in xs:
        s = float(up(s + float(x)))
    return s


def score_error(abs_dot: float | np.ndarray, head_dim: int):
    """Upper bound on |ŝ − s| for ŝ = fl(fl(Σ_d q_d k_d)·scale), s the exact scale·⟨q, k⟩, given
    ``abs_dot`` = the float64 value of scale·Σ_d |q_d k_d| (itself a dot product computed in float64,
    so it may sit below the exact magnitude by γ_{D+1}): γ_{D+1} for the score plus that slack,
    doubled (ROUNDING.md §2.1). Also bounds the error of a float64 box bound Σ_d max(q_d lo_d, q_d hi_d)
    whose magnitude is at most ``abs_dot``."""
    g = gamma(int(head_dim) + 2)
    with np.errstate(over="ignore"):
        return up(2.0 * g * np.asarray(abs_dot, dtype=np.float64) * (1.0 + g))


def softmax_tv(s: np.ndarray, delta) -> float:
    """Upper bound on Σ_j |softmax(s)_j − softmax(s')_j| for any s' with |s'_j − s_j| ≤ δ_j.

    Two bounds, both sound, the smaller returned: every weight ratio lies in [e^{−2δ}, e^{2δ}]
    (δ = max δ_j), so the variation is ≤ e^{2δ} − 1; and with t the top score both distributions give
    token t at least 1/(1 + S), S = Σ_{j≠t} e^{s_j − s_t + δ_j + δ_t}, and the variation of two
    distributions that both put mass ≥ a on one token is ≤ 2(1 − a) = 2S/(1 + S).
    """
    s = np.asarray(s, dtype=np.float64)
    d = np.broadcast_to(np.asarray(delta, dtype=np.float64), s.shape)
    if s.size <= 1:
        return 0.0
    dmax = float(d.max())
    with np.errstate(over="ignore"):
        first = float(up(np.expm1(up(2.0 * dmax)) * (1 + FN_REL)))
    t = int(np.argmax(s))
    rest = np.delete(np.arange(s.size), t)
    x = up(up(s[rest] - s[t]) + up(d[rest] + d[t]))          # upper bounds on s'_j − s'_t etc.
    log_S = lse_upper(x)
    with np.errstate(over="ignore"):
        S = float(up(np.exp(log_S) * (1 + FN_REL)))
    second = 2.0 if not np.isfinite(S) else float(up(2.0 * up(S / down(1.0 + S))))
    return min(first, second, 2.0)


def softmax_eval_error(n: int, vmax: float) -> float:
    """Bound on ‖ô − Σ_j a_j v_j‖ where a = softmax of n float64 scores (exact arithmetic on them) and
    ô is their float64 evaluation m = max, w = e^{s−m}, Σ w v / Σ w (or (w/Σw) @ V), ‖v_j‖ ≤ vmax.

    Each w_j is exact up to a relative η = e^{709u}(1 + FN_REL) − 1 (argument rounding and exp) or,
    below the normal range, an absolute 2⁻¹⁰⁷⁴; the normalised weights then move by at most
    2η/(1 − η) + 2n·2⁻¹⁰⁷⁴ in total variation, and the two sums and the division add 3γ_{n+2} relative
    to vmax (ROUNDING.md §2.2)."""
    if vmax == 0.0:
        return 0.0
    eta = float(up(np.expm1(_EXP_ARG * U64 * (1 + U64)) * (1 + FN_REL) + FN_REL))
    coef = 2 * eta / (1 - eta) + 2 * (n + 1) * SUBNORMAL_MIN + 3 * gamma(n + 2)
    return mul_up(float(up(coef * 1.0001)), vmax)


def log_domain_factor(n_terms: int, mag: float) -> float:
    """Relative allowance (a factor ≥ 1) for a quantity exp(log_num − log_den) evaluated with
    log-sum-exp chains of ≤ n_terms terms whose logs have magnitude ≤ ``mag``: each logaddexp errs by
    ≤ u·|result| + 2·FN_REL absolutely, so the exponent errs by ≤ 2 n (mag + 2) u and exp adds FN_REL.
    ∞ when that exponent error is not small (the caller then falls back on a looser form)."""
    err = 2.0 * (n_terms + 2) * (float(mag) + 4.0) * U64 * 1.01
    if not np.isfinite(err) or err > 1.0:
        return float("inf")
    return float(up(np.exp(err) * (1 + 2 * FN_REL)))


def lse_upper(x: np.ndarray) -> float:
    """An upper bound on log Σ e^{x_i} (−inf for no terms)."""
    x = np.asarray(x, dtype=np.float64)
    if x.size == 0:
        return -np.inf
    m = float(x.max())
    if not np.isfinite(m):
        return m
    with np.errstate(under="ignore"):
        t = np.exp(up(x - m)) * (1 + FN_REL)
    s = up(t.sum() * (1 + gamma(x.size + 1)))                 # ≥ 1; underflowed terms sit inside γ
    return float(up(m + up(np.log(s) * (1 + FN_REL))))


def lse_lower(x: np.ndarray) -> float:
    """A lower bound on log Σ e^{x_i} (−inf for no terms)."""
    x = np.asarray(x, dtype=np.float64)
    if x.size == 0:
        return -np.inf
    m = float(x.max())
    if not np.isfinite(m):
        return m
    with np.errstate(under="ignore"):
        t = np.exp(down(x - m)) * (1 - FN_REL)
    s = down(t.sum() * (1 - gamma(x.size + 1)))
    ls = np.log(s)
    ls = ls * (1 + FN_REL) if ls < 0 else ls * (1 - FN_REL)
    return float(down(m + down(ls)))


def leakage_upper(log_zc_lo: float, log_zout_hi: float, n_total: int) -> float:
    """Z_out / (Z_C + Z_out) from log bounds, rounded up (0 when nothing is outside); the extra factor
    also covers a float64 evaluation of the true leakage (exp, two sums, a division over n_total terms)."""
    if log_zout_hi == -np.inf:
        return 0.0
    d = down(log_zc_lo - log_zout_hi)
    if np.isnan(d):                                          # both +inf: nothing can be said
        return 1.0
    with np.errstate(over="ignore"):
        e = np.exp(d) * (1 - FN_REL)
    L = up(1.0 / down(1.0 + e))
    return float(min(1.0, up(L * (1 + 4 * gamma(n_total + 16)))))
