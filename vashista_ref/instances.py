"""Seeded instance families for the projection model, with known answers where possible.

The key construction (``known_face``) builds q and K from a chosen face and a chosen normal so that
the projection y*, the active set I, the multipliers and the support gap Δ are known exactly:

  * pick a unit normal n and a level h; put |I| affinely independent keys on the hyperplane
    ⟨n, k⟩ = h and choose y* = Σ_{i∈I} α*_i k_i with every α*_i > 0;
  * put q = y* + t n (t > 0), so r* = t n;
  * put every other key strictly below: ⟨n, k_j⟩ = h − δ_j with δ_j > 0.
Then ⟨r*, k_j − y*⟩ ≤ 0 for all j (the KKT conditions), so y* is the projection, I = F, and
μ*_j = t·δ_j: the gap is Δ = t·min_j δ_j — set to the requested value exactly.

Example
-------
>>> import numpy as np
>>> inst = known_face(np.random.default_rng(0), M=10, D=3, face_size=2, gap=0.5)
>>> inst.face.tolist(), inst.gap
([0, 1], 0.5)
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .validate import positive_int, positive_scalar

__all__ = ["collinear", "draw", "FAMILIES", "generic", "inside_hull", "Instance", "known_face",
           "lateral_pull", "on_vertex", "with_duplicates"]


@dataclass(frozen=True)
class Instance:
    q: np.ndarray
    K: np.ndarray
    family: str
    face: np.ndarray | None = None        # the active set I = F when known by construction
    gap: float | None = None              # Δ when known (None: no certificate, e.g. q in the hull)
    y_star: np.ndarray | None = None      # the projection when known
    alpha_star: np.ndarray | None = None  # the (unique) weights when known

    def scaled(self, s: float) -> "Instance":
        """Scale keys and query by s: y* scales by s, Δ by s² (μ is bilinear in r and k)."""
        s = positive_scalar("s", s)
        return Instance(q=self.q * s, K=self.K * s, family=f"{self.family}×{s:g}", face=self.face,
                        gap=None if self.gap is None else self.gap * s * s,
                        y_star=None if self.y_star is None else self.y_star * s,
                        alpha_star=self.alpha_star)

    def permuted(self, perm: np.ndarray) -> "Instance":
        """Reorder the keys: key i of the result is key perm[i] of this instance."""
        inv = np.argsort(perm)
        return Instance(q=self.q, K=self.K[perm], family=self.family,
                        face=None if self.face is None else np.sort(inv[self.face]), gap=self.gap,
                        y_star=self.y_star,
                        alpha_star=None if self.alpha_star is None else self.alpha_star[perm])


def _unit(rng, D):
    v = rng.normal(size=D)
    return v / np.linalg.norm(v)


def generic(rng: np.random.Generator, M: int = 20, D: int = 4, query_scale: float = 3.0) -> Instance:
    """Gaussian keys and a Gaussian query ``query_scale`` times larger (usually outside the hull)."""
    M, D = positive_int("M", M), positive_int("D", D)
    return Instance(q=rng.normal(size=D) * query_scale, K=rng.normal(size=(M, D)), family="generic")


def known_face(rng: np.random.Generator, M: int = 20, D: int = 4, face_size: int = 2,
               gap: float = 0.5, distance: float = 1.0, spread: float = 1.0,
               min_weight: float = 0.05) -> Instance:
    """q outside the hull with face I = {0, …, face_size−1} and support gap exactly ``gap``.

    ``distance`` = ‖r*‖ = t; keys off the face sit at depths δ_j ≥ gap/t below the supporting
    hyperplane; ``min_weight`` bounds α*_i below on the face (α*_min matters for the ε-regime).
    """
    M, D = positive_int("M", M), positive_int("D", D)
    face_size = positive_int("face_size", face_size, upper=min(D, M), upper_name="min(D, M)")
    gap = positive_scalar("gap", gap)
    t = positive_scalar("distance", distance)
    spread = positive_scalar("spread", spread)
    n = _unit(rng, D)
    # an orthonormal basis of the hyperplane n^⊥
    basis = np.linalg.qr(np.column_stack([n, rng.normal(size=(D, D - 1))]))[0][:, 1:] if D > 1 else np.zeros((1, 0))
    h = float(rng.normal())
    face_pts = h * n + (rng.normal(size=(face_size, D - 1)) * spread) @ basis.T if D > 1 else np.full((1, 1), h * n[0])
    w = rng.dirichlet(np.ones(face_size))
    alpha_face = min_weight + (1.0 - face_size * min_weight) * w if face_size * min_weight < 1 else np.full(face_size, 1.0 / face_size)
    y_star = alpha_face @ face_pts
    q = y_star + t * n
    n_out = M - face_size
    depths = gap / t + rng.exponential(scale=max(spread, gap / t), size=n_out)
    if n_out:
        depths[rng.integers(n_out)] = gap / t                  # attain the gap exactly
    tangential = (rng.normal(size=(n_out, D - 1)) * 2.0 * spread) @ basis.T if D > 1 else np.zeros((n_out, 1))
    others = (h - depths)[:, None] * n[None, :] + tangential
    K = np.vstack([face_pts, others])
    alpha = np.zeros(M)
    alpha[:face_size] = alpha_face
    return Instance(q=q, K=K, family="known_face", face=np.arange(face_size),
                    gap=gap if n_out else None, y_star=y_star, alpha_star=alpha)


def inside_hull(rng: np.random.Generator, M: int = 20, D: int = 4) -> Instance:
    """q a strictly positive convex combination of the keys: r* = 0, no certificate."""
    M, D = positive_int("M", M), positive_int("D", D)
    K = rng.normal(size=(M, D))
    w = rng.dirichlet(np.ones(M))
    q = w @ K
    return Instance(q=q, K=K, family="inside_hull", face=None, gap=None, y_star=q)


def on_vertex(rng: np.random.Generator, M: int = 20, D: int = 4) -> Instance:
    """q equal to a key that is a vertex of the hull (the one furthest along a random direction)."""
    M, D = positive_int("M", M), positive_int("D", D)
    K = rng.normal(size=(M, D))
    j = int(np.argmax(K @ _unit(rng, D)))
    return Instance(q=K[j].copy(), K=K, family="on_vertex", gap=None, y_star=K[j].copy())


def with_duplicates(rng: np.random.Generator, M: int = 20, D: int = 4, face_size: int = 2,
                    gap: float = 0.5, copies: int = 1) -> Instance:
    """``known_face`` with face key 0 repeated ``copies`` more times (appended at the end).

    y*, the face F (now including the copies) and Δ over keys off F are unchanged; α* is no longer
    unique (any split of key 0's weight among its copies is optimal)."""
    base = known_face(rng, M=M, D=D, face_size=face_size, gap=gap)
    K = np.vstack([base.K] + [base.K[:1]] * copies)
    face = np.concatenate([base.face, np.arange(M, M + copies)])
    return Instance(q=base.q, K=K, family="duplicates", face=face, gap=base.gap, y_star=base.y_star)


def collinear(rng: np.random.Generator, M: int = 10, D: int = 3) -> Instance:
    """Keys on one line segment, q off the line: the hull is a segment with 2 vertices."""
    M, D = positive_int("M", M), positive_int("D", D)
    a, d = rng.normal(size=D), _unit(rng, D)
    ts = np.sort(rng.uniform(-1, 1, size=M))
    K = a + ts[:, None] * d
    off = _unit(rng, D)
    off -= (off @ d) * d
    q = a + rng.uniform(-2, 2) * d + off
    return Instance(q=q, K=K, family="collinear")


def lateral_pull(distance: float = 2.0, near_depth: float = 0.015, far_depth: float = 0.02,
                 width: float = 14.0, copies: int = 136) -> Instance:
    """A deterministic 2-D instance where the entropic point y_ε is pulled *sideways* (no rng).

    Face I = {0}: k_0 = (0, 0), q = (0, distance), so y* = k_0, r* = q and μ_j = distance·depth_j.
    k_1 = (width, −near_depth) attains the gap Δ = distance·near_depth; ``copies`` keys at
    (−width, −far_depth) sit on the other side. Their mass drags y_ε towards −x, which raises
    ⟨k_1, q − y_ε⟩ above ⟨k_0, q − y_ε⟩ − Δ: the per-token bound α_ε,1 ≤ exp(−Δ/(cε)) then fails
    for c = 1 at ε = Δ/10, inside the regime D_K‖y_ε − y*‖ ≤ Δ/2 where c = 2 holds."""
    t = positive_scalar("distance", distance)
    d1, d2 = positive_scalar("near_depth", near_depth), positive_scalar("far_depth", far_depth)
    L = positive_scalar("width", width)
    m = positive_int("copies", copies)
    K = np.array([[0.0, 0.0], [L, -d1]] + [[-L, -d2]] * m)
    alpha = np.zeros(K.shape[0])
    alpha[0] = 1.0
    return Instance(q=np.array([0.0, t]), K=K, family="lateral_pull", face=np.array([0]),
                    gap=t * min(d1, d2), y_star=np.zeros(2), alpha_star=alpha)


FAMILIES = {"generic": generic, "known_face": known_face, "inside_hull": inside_hull,
            "on_vertex": on_vertex, "duplicates": with_duplicates, "collinear": collinear}


def draw(family: str, seed: int, **kwargs) -> Instance:
    """One instance of a named family from a seed: ``draw("known_face", 3, M=50, gap=0.1)``."""
    if family not in FAMILIES:
        from .errors import VashistaInputError
        raise VashistaInputError("family", f"must be one of {sorted(FAMILIES)}, got {family!r}")
    return FAMILIES[family](np.random.default_rng(seed), **kwargs)
