"""Floating-point rounding constants and outward-rounding helpers used by the certificates.

Unit roundoffs u (half the machine epsilon; round-to-nearest):

    U64 = 2⁻⁵³ (float64)   U32 = 2⁻²⁴ (float32)   U_FP16 = 2⁻¹¹ (float16)   U_BF16 = 2⁻⁸ (bfloat16)

``gamma(n, u)`` is Higham's γ_n = n u / (1 − n u): the relative error of a sum or dot product of n
terms evaluated in any order (Higham, *Accuracy and Stability of Numerical Algorithms*, §3.1).
``up`` / ``down`` move a float64 value (or NumPy array) one ulp outward, so a computed upper / lower
bound stays one after the rounding of the last operation. ``FN_REL`` is the allowance for one float64
``exp`` or ``log`` (NumPy's and torch's are accurate to a few ulp; 16 u doubles that margin).
``FLOAT32_MATMUL_ROUNDOFF`` is the unit roundoff a float32 matmul is charged under each of torch's
``float32_matmul_precision`` settings (tf32 and bf16 passes, rounded up to a power of two).

Certificate helpers (docs/ROUNDING.md derives each one); the certificates bound the distance from
the *returned* output to *exact* dense attention over the stored keys and values:

  * ``score_error`` — |fl(scale·⟨q, k⟩) − scale·⟨q, k⟩| from scale·Σ_d |q_d k_d| (ROUNDING.md §2.1);
  * ``softmax_tv`` — total variation between softmax(s) and softmax(s') when |s'_j − s_j| ≤ δ_j:
    ≤ min(e^{2δ} − 1, 2S/(1 + S)), S = Σ_{j≠t} e^{s_j − s_t + δ_j + δ_t} (t the top score), so scores
    perturbed by much more than 1 still give a finite, small bound when one score dominates (§2.3);
  * ``softmax_eval_error`` — ‖computed softmax-weighted sum − exact one on the same float scores‖ (§2.2);
  * ``mul_up`` / ``add_up`` — products and sums of non-negative upper bounds rounded up, 0 · ∞ = 0;
  * ``lse_upper`` / ``lse_lower`` / ``leakage_upper`` — outward-rounded log-sum-exp and leakage;
  * ``log_domain_factor`` — the relative allowance of a log-sum-exp chain (∞ when nothing can be said).

An infinite bound is a valid certificate ("nothing can be said"); no helper returns NaN.

Example:
    >>> from vashista_core.rounding import U64, gamma, up
    >>> gamma(2) == 2 * U64 / (1 - 2 * U64)
    True
    >>> bool(up(1.0) > 1.0)
    True
"""
from __future__ import annotations

import numpy as np

from .errors import VashistaInputError

__all__ = ["FLOAT32_MATMUL_ROUNDOFF", "FN_REL", "SUBNORMAL_MIN", "U32", "U64", "U_BF16", "U_FP16", "add_up", "down",
           "gamma", "leakage_upper", "log_domain_factor", "lse_lower", "lse_upper", "mul_up", "score_error",
           "softmax_eval_error", "softmax_tv", "up"]

U64 = 2.0 ** -53
U32 = 2.0 ** -24
U_FP16 = 2.0 ** -11
U_BF16 = 2.0 ** -8
FN_REL = 16 * U64
FLOAT32_MATMUL_ROUNDOFF = {"highest": U32, "high": 2.0 ** -10, "medium": 2.0 ** -7}


def gamma(n: int, u: float = U64) -> float:
    """γ_n = n u / (1 − n u); defined only while n u < 1."""
    if n * u >= 1:
        raise VashistaInputError("n", f"gamma needs n·u < 1, got n = {n}, u = {u!r}")
    return n * u / (1 - n * u)


def up(x):
    """The next float64 above ``x`` (elementwise)."""
    return np.nextafter(x, np.inf)


def down(x):
    """The next float64 below ``x`` (elementwise)."""
    return np.nextafter(x, -np.inf)


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


def _lse_bound(x: np.ndarray, sign: int) -> float:
    """log Σ e^{x_i} rounded outward: an upper bound for sign = +1, a lower bound for −1 (−inf for no
    terms). Every step (the shift by the max, exp, the sum, log, the final add) moves its result away
    from the true value in the bound's direction by its own error."""
    x = np.asarray(x, dtype=np.float64)
    if x.size == 0:
        return -np.inf
    m = float(x.max())
    if not np.isfinite(m):
        return m
    out = up if sign > 0 else down
    with np.errstate(under="ignore"):
        t = np.exp(out(x - m)) * (1 + sign * FN_REL)
    s = out(t.sum() * (1 + sign * gamma(x.size + 1)))         # underflowed terms sit inside γ
    ls = np.log(s)
    ls = ls * (1 + sign * FN_REL) if ls >= 0 else ls * (1 - sign * FN_REL)
    return float(out(m + out(ls)))


def lse_upper(x: np.ndarray) -> float:
    """An upper bound on log Σ e^{x_i} (−inf for no terms)."""
    return _lse_bound(x, +1)


def lse_lower(x: np.ndarray) -> float:
    """A lower bound on log Σ e^{x_i} (−inf for no terms)."""
    return _lse_bound(x, -1)


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
