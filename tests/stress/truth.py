"""Exact dense attention for the soundness stress: scores as exact rationals, the rest in mpmath.

The stored keys, values, queries and the scale are float64 numbers, i.e. dyadic rationals m·2^e. A score
scale·⟨q, k⟩ is computed exactly with Python integers (each product m_q m_k 2^{e_q + e_k}, summed over a
common power of two), then handed to mpmath exactly. Only e^{s_j − max s}, the weighted sums and the
final norm are rounded, at ``PREC`` bits plus the bits the scores' magnitude needs (their absolute
error stays below 2^-PREC), far below any certificate the tiers can state (≥ ~1e-16 relative).
"""
from __future__ import annotations

import math

import mpmath
import numpy as np

PREC = 200          # bits beyond the scores' integer part


def _dyadic(x: float) -> tuple[int, int]:
    """x = man · 2^exp exactly."""
    m, e = math.frexp(float(x))
    return int(m * (1 << 53)), e - 53


def _dyadics(a: np.ndarray) -> list[tuple[int, int]]:
    return [_dyadic(x) for x in np.asarray(a, dtype=np.float64).ravel()]


def exact_scores(q: np.ndarray, K: np.ndarray, scale: float) -> list[tuple[int, int]]:
    """scale·⟨q, k_j⟩ for the rows of K (T, D), each exactly as (integer, power of two)."""
    qd = _dyadics(q)
    sm, se = _dyadic(scale)
    out = []
    D = len(qd)
    kd = _dyadics(K)
    for j in range(K.shape[0]):
        terms = [(qm * km, qe + ke) for (qm, qe), (km, ke) in zip(qd, kd[j * D:(j + 1) * D]) if qm and km]
        if not terms:
            out.append((0, 0))
            continue
        low = min(e for _, e in terms)
        total = sum(m << (e - low) for m, e in terms)
        out.append((total * sm, low + se))
    return out


class ExactHead:
    """Exact dense attention of one query over one KV head's keys K (T, D) and values V (T, Dv)."""

    def __init__(self, q, K, V, scale):
        s = exact_scores(q, K, scale)
        mags = [abs(m).bit_length() + e for m, e in s if m]
        self.prec = PREC + max([0] + mags)
        with mpmath.workprec(self.prec):
            sv = [mpmath.mpf((m, e)) if m else mpmath.mpf(0) for m, e in s]
            top = max(sv)
            self.w = [mpmath.exp(x - top) for x in sv]
            self.Z = mpmath.fsum(self.w)
            Vd = np.asarray(V, dtype=np.float64)
            self.out = [mpmath.fsum(self.w[j] * mpmath.mpf(float(Vd[j, d])) for j in range(len(sv))) / self.Z
                        for d in range(Vd.shape[1])]

    def error(self, o) -> mpmath.mpf:
        """‖o − o_exact‖ for a returned float64 output o (Dv,)."""
        with mpmath.workprec(self.prec):
            return mpmath.sqrt(mpmath.fsum((mpmath.mpf(float(x)) - y) ** 2 for x, y in zip(o, self.out)))

    def leakage(self, candidates) -> mpmath.mpf:
        """Exact dense mass outside ``candidates`` (logical token indices)."""
        inside = set(int(i) for i in candidates)
        with mpmath.workprec(self.prec):
            return mpmath.fsum(w for j, w in enumerate(self.w) if j not in inside) / self.Z
