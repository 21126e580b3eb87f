"""KKT certificates verified in exact rational arithmetic (Python ``fractions``), no floating point.

Given a small instance with rational q and K and a candidate active set I (from any float solver),
solve the equality-constrained problem on I exactly,

    min ½‖K_Iᵀα − q‖²  s.t.  Σα = 1   ⇔   [K_I K_Iᵀ  1; 1ᵀ 0] [α; ν] = [K_I q; 1],

and then check every KKT condition exactly: Σα = 1, α_I > 0, μ_j = ⟨r, y − k_j⟩ ≥ 0 for all j,
μ_i = 0 on I. Convexity makes these sufficient: the rational α, y*, μ* and Δ returned are *proven*
optimal. Returns None when the candidate I does not pass (the float solver's I was wrong or
degenerate — e.g. affinely dependent keys, where the linear system is singular).
"""
from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction

import numpy as np


@dataclass(frozen=True)
class ExactCertificate:
    alpha: list          # Fractions, one per key
    y: list              # Fractions
    mu: list             # Fractions, one per key
    lam: Fraction
    active_set: list
    face: list
    gap: Fraction | None


def _solve(A, b):
    """Gaussian elimination over Fractions; None if singular."""
    n = len(A)
    M = [row[:] + [bi] for row, bi in zip(A, b)]
    for c in range(n):
        p = next((r for r in range(c, n) if M[r][c] != 0), None)
        if p is None:
            return None
        M[c], M[p] = M[p], M[c]
        inv = 1 / M[c][c]
        M[c] = [x * inv for x in M[c]]
        for r in range(n):
            if r != c and M[r][c] != 0:
                f = M[r][c]
                M[r] = [x - f * y for x, y in zip(M[r], M[c])]
    return [M[r][n] for r in range(n)]


def to_fractions(x) -> list:
    """Exact conversion of a float array (every float is a dyadic rational)."""
    return [[Fraction(v) for v in row] for row in np.atleast_2d(x)] if np.ndim(x) == 2 else \
        [Fraction(v) for v in np.ravel(x)]


def _dot(a, b):
    return sum((x * y for x, y in zip(a, b)), Fraction(0))


def verify_kkt_exact(q, K, active_set) -> ExactCertificate | None:
    """Prove (or refute) that the projection of q onto conv(K) is supported on ``active_set``."""
    Kf = to_fractions(np.asarray(K, dtype=float)) if not isinstance(K, list) else K
    qf = to_fractions(np.asarray(q, dtype=float)) if not isinstance(q, list) else q
    I = sorted(int(i) for i in active_set)
    n = len(I)
    A = [[_dot(Kf[i], Kf[j]) for j in I] + [Fraction(1)] for i in I] + [[Fraction(1)] * n + [Fraction(0)]]
    b = [_dot(Kf[i], qf) for i in I] + [Fraction(1)]
    sol = _solve(A, b)
    if sol is None:
        return None
    a_I = sol[:n]
    if any(a <= 0 for a in a_I):
        return None
    alpha = [Fraction(0)] * len(Kf)
    for i, a in zip(I, a_I):
        alpha[i] = a
    D = len(qf)
    y = [sum((alpha[j] * Kf[j][d] for j in I), Fraction(0)) for d in range(D)]
    r = [qd - yd for qd, yd in zip(qf, y)]
    ry = _dot(r, y)
    mu = [ry - _dot(r, k) for k in Kf]
    if any(m < 0 for m in mu) or any(mu[i] != 0 for i in I) or sum(alpha) != 1:
        return None
    face = [j for j, m in enumerate(mu) if m == 0]
    off = [mu[j] for j in range(len(Kf)) if j not in set(I)]
    gap = None if (all(x == 0 for x in r) or not off) else min(off)
    return ExactCertificate(alpha=alpha, y=y, mu=mu, lam=-ry, active_set=I, face=face, gap=gap)


def integer_instance(rng: np.random.Generator, M: int = 7, D: int = 3, face_size: int = 2,
                     depth: int = 1, t: int = 2):
    """A small instance with integer keys and a rational query whose face {0..face_size-1} and
    gap t·depth are known: face keys on the hyperplane x_D = 0, others at x_D ≤ −depth,
    q = y* + t·e_D with y* a rational convex combination of the face keys."""
    K = rng.integers(-3, 4, size=(M, D)).astype(float)
    K[:face_size, -1] = 0
    K[face_size:, -1] = -depth - rng.integers(0, 3, size=M - face_size)
    K[face_size, -1] = -depth
    w = rng.integers(1, 5, size=face_size)
    alpha = [Fraction(int(x), int(w.sum())) for x in w]
    Kf = to_fractions(K)
    y = [sum((alpha[i] * Kf[i][d] for i in range(face_size)), Fraction(0)) for d in range(D)]
    q = y[:]
    q[-1] += t
    return q, Kf, K, alpha
