"""Exact dense attention for the soundness stress: scores as exact rationals, exponentials in mpmath,
sums by error-free transformations.

The stored keys, values, queries and the scale are float64 numbers, i.e. dyadic rationals m·2^e.

* A score scale·⟨q, k⟩ is computed exactly with Python integers (each product m_q m_k 2^{e_q + e_k},
  summed over a common power of two) and handed to mpmath exactly.
* Each weight w_j = e^{s_j − max s} is computed by mpmath at ``PREC`` bits beyond the scores' magnitude
  and stored as an unevaluated sum hi_j + lo_j of two float64 numbers: relative error ≤ 2^-104.
* The numerators Σ_j w_j v_{j,d} and the error ô − o* are formed from *exact* float64 terms (Dekker's
  TwoProduct, values pre-scaled by a power of two so the splits neither overflow nor, for the terms
  that matter, underflow) and summed by ``math.fsum`` (correctly rounded). So ô_d − o*_d is computed
  with one rounding of the difference itself, whatever the cancellation.

The only inexactness left is the weights' 2^-104 (and products below 2^-1000 of the largest value,
which are flushed): ``slack`` bounds its effect on ‖ô − o*‖, and a violation is declared only beyond it.
This is ~10⁻³¹·max‖v‖, far below any certificate (≥ ~10⁻¹⁵·max‖v‖ of float64 evaluation allowance).
"""
from __future__ import annotations

import math

import mpmath
import numpy as np

PREC = 120          # bits beyond the scores' integer part for the exponentials
_SPLIT = 134217729.0  # 2^27 + 1 (Veltkamp)


def _dyadic(x: float) -> tuple[int, int]:
    """x = man · 2^exp exactly."""
    m, e = math.frexp(float(x))
    return int(m * (1 << 53)), e - 53


def exact_scores(q: np.ndarray, K: np.ndarray, scale: float) -> list[tuple[int, int]]:
    """scale·⟨q, k_j⟩ for the rows of K (T, D), each exactly as (integer, power of two)."""
    qd = [_dyadic(x) for x in np.asarray(q, dtype=np.float64)]
    sm, se = _dyadic(scale)
    out = []
    for row in np.asarray(K, dtype=np.float64):
        terms = [(qm * km, qe + ke) for (qm, qe), (km, ke) in zip(qd, map(_dyadic, row)) if qm and km]
        if not terms:
            out.append((0, 0))
            continue
        low = min(e for _, e in terms)
        total = sum(m << (e - low) for m, e in terms)
        out.append((total * sm, low + se))
    return out


def _split(a):
    c = _SPLIT * a
    hi = c - (c - a)
    return hi, a - hi


def _two_prod(a, b):
    """a·b = p + e exactly (elementwise; no overflow: |a|, |b| ≤ 2^500 here)."""
    p = a * b
    a1, a2 = _split(a)
    b1, b2 = _split(b)
    return p, ((a1 * b1 - p) + a1 * b2 + a2 * b1) + a2 * b2


class ExactHead:
    """Exact dense attention of one query over one KV head's keys K (T, D) and values V (T, Dv)."""

    def __init__(self, q, K, V, scale):
        s = exact_scores(q, K, scale)
        mags = [abs(m).bit_length() + e for m, e in s if m]
        prec = PREC + max([0] + mags)
        with mpmath.workprec(prec):
            sv = [mpmath.mpf((m, e)) if m else mpmath.mpf(0) for m, e in s]
            top = max(sv)
            w = [mpmath.exp(x - top) for x in sv]
            hi = [float(x) for x in w]
            lo = [float(x - h) for x, h in zip(w, hi)]
        self.w_hi, self.w_lo = np.array(hi), np.array(lo)
        self.Z = math.fsum(hi + lo)                           # Z ≥ 1 (the top weight is 1)
        V = np.asarray(V, dtype=np.float64)
        vmax = float(np.max(np.abs(V))) if V.size else 0.0
        # scale values by a power of two to ~1 (exact) so the products' splits never overflow
        self.shift = 0 if vmax == 0.0 or not math.isfinite(vmax) else -math.frexp(vmax)[1]
        self.Vs = np.ldexp(V, self.shift)
        self.vmax = vmax
        self.n = V.shape[0]

    def _numerator_terms(self, d: int) -> list[float]:
        """Exact float64 terms whose sum is Σ_j w_j v_{j,d} (values scaled by 2^shift)."""
        p1, e1 = _two_prod(self.w_hi, self.Vs[:, d])
        p2, e2 = _two_prod(self.w_lo, self.Vs[:, d])
        return np.concatenate([p1, e1, p2, e2]).tolist()

    def error_lower(self, o) -> float:
        """A lower bound on ‖o − o_exact‖ for a returned output o (Dv,): the difference is formed from
        exact terms, so only ~6 roundings of the result and the weights' 2^-104 remain (``slack``)."""
        o = np.asarray(o, dtype=np.float64)
        if not np.all(np.isfinite(o)):
            return math.inf
        os_ = np.ldexp(o, self.shift)
        sq = []
        for d in range(o.shape[0]):
            # (o_d·Z − Σ_j w_j v_j,d) / Z with every term exact: o_d·w_j for each weight part
            a1, b1 = _two_prod(np.full(self.n, os_[d]), self.w_hi)
            a2, b2 = _two_prod(np.full(self.n, os_[d]), self.w_lo)
            num = math.fsum(np.concatenate([a1, b1, a2, b2]).tolist() + [-t for t in self._numerator_terms(d)])
            sq.append(num / self.Z)
        e = math.ldexp(math.sqrt(math.fsum(x * x for x in sq)), -self.shift)
        return max(0.0, e * (1 - 2.0 ** -50) - self.slack())

    def slack(self) -> float:
        """Bound on the effect of the weights' 2^-104 relative error and of flushed tiny products."""
        return 2.0 ** -100 * self.vmax + self.n * 2.0 ** -1000 * self.vmax

    def leakage_lower(self, candidates) -> float:
        """A lower bound on the exact dense mass outside ``candidates`` (logical token indices)."""
        out = np.ones(self.n, dtype=bool)
        out[np.asarray(candidates, dtype=np.int64)] = False
        num = math.fsum(self.w_hi[out].tolist() + self.w_lo[out].tolist())
        return max(0.0, num / self.Z * (1 - 2.0 ** -50) - 2.0 ** -100)


def mp_error_and_leakage(q, K, V, scale, o, candidates, prec: int = 300) -> tuple[float, float]:
    """The same two numbers straight in mpmath (slow; tests/stress/test_stress.py checks the fast
    path against it on small cases)."""
    s = exact_scores(q, K, scale)
    with mpmath.workprec(prec + max([0] + [abs(m).bit_length() + e for m, e in s if m])):
        sv = [mpmath.mpf((m, e)) if m else mpmath.mpf(0) for m, e in s]
        top = max(sv)
        w = [mpmath.exp(x - top) for x in sv]
        Z = mpmath.fsum(w)
        V = np.asarray(V, dtype=np.float64)
        ex = [mpmath.fsum(w[j] * mpmath.mpf(float(V[j, d])) for j in range(len(w))) / Z for d in range(V.shape[1])]
        err = mpmath.sqrt(mpmath.fsum((mpmath.mpf(float(x)) - y) ** 2 for x, y in zip(o, ex)))
        inside = set(int(i) for i in candidates)
        leak = mpmath.fsum(x for j, x in enumerate(w) if j not in inside) / Z
        return float(err), float(leak)
