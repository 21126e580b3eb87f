"""Helpers shared by the claim modules: instance draws, key diameter, one exact certificate."""
from __future__ import annotations

import math

import numpy as np

from vashista_ref import instances
from vashista_core.errors import VashistaInputError
from vashista_ref.projection import project_onto_hull

from .exact import integer_instance, verify_kkt_exact


def seeded(seed) -> np.random.Generator:
    """The check's random generator; ``seed`` must be a non-negative integer (runs are reproducible)."""
    if isinstance(seed, (bool, np.bool_)) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise VashistaInputError("seed", f"must be a non-negative integer, got {seed!r}")
    return np.random.default_rng(int(seed))


def diameter(K: np.ndarray) -> float:
    d = K[:, None, :] - K[None, :, :]
    return float(np.sqrt(np.max(np.sum(d * d, axis=-1))))


def face_geometry(K_I: np.ndarray, alpha_I: np.ndarray) -> tuple[float, float, float]:
    """(C_geom, first-order coefficient, λ_min⁺ of the tangent Gram matrix) of a face with keys K_I
    and weights α*_I: y_ε − y* ≈ −ε K_Iᵀ G⁺ P log α* (claim 3's docstring derives it)."""
    n = len(alpha_I)
    if n == 1:
        return 0.0, 0.0, math.inf
    P = np.eye(n) - 1.0 / n
    G = P @ K_I @ K_I.T @ P
    w = np.linalg.eigvalsh(G)
    lam_min = float(np.min(w[w > 1e-12 * max(1.0, w.max())]))
    v = P @ np.log(alpha_I)
    first = float(np.linalg.norm(K_I.T @ np.linalg.pinv(G) @ v))
    return float(np.linalg.norm(v) / math.sqrt(lam_min)), first, lam_min


def known_face_family(rng: np.random.Generator, n: int, *, M=(8, 32), D=(2, 6),
                      gaps=(0.05, 0.2, 1.0), distances=(0.5, 1.0, 3.0)):
    """``n`` seeded known-face instances with varied M, D, |I|, Δ and ‖r*‖."""
    out = []
    for _ in range(n):
        d = int(rng.integers(D[0], D[1] + 1))
        m = int(rng.integers(max(M[0], d + 1), M[1] + 1))
        out.append(instances.known_face(rng, M=m, D=d, face_size=int(rng.integers(1, d + 1)),
                                        gap=float(rng.choice(gaps)),
                                        distance=float(rng.choice(distances))))
    return out


def exact_certificates(rng: np.random.Generator, n: int = 2) -> int:
    """Verify ``n`` small integer instances' KKT certificates in rational arithmetic; returns how
    many were proven (the float solver's active set, then an exact proof of optimality)."""
    proven = 0
    for _ in range(n):
        q, Kf, K, alpha = integer_instance(rng)
        qf = np.array([float(x) for x in q])
        p = project_onto_hull(qf, K, solver="wolfe")
        cert = verify_kkt_exact(q, Kf, p.active_set)
        if cert is not None and cert.alpha == alpha + [0] * (len(Kf) - len(alpha)):
            proven += 1
    return proven


def instance_record(inst) -> dict:
    """JSON-ready description of an instance (for counterexamples)."""
    return {"family": inst.family, "M": int(inst.K.shape[0]), "D": int(inst.K.shape[1]),
            "face": None if inst.face is None else inst.face.tolist(), "gap": inst.gap,
            "q": inst.q.tolist(), "K": inst.K.tolist()}
