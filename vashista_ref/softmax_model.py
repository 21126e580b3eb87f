"""The softmax model (SPEC 1b): what a transformer computes, read as an entropic linear program.

Problem:  a = argmax_{a ∈ Δ_M} ⟨s, a⟩ + ε H(a) = softmax(s/ε),   scores s_j = ⟨q, k_j⟩·scale.

Its hard limit (ε → 0) picks the face F = argmax_j s_j. Multipliers μ_j = s_max − s_j ≥ 0, gap
Δ_lin = min_{j∉F} μ_j. Exact leakage (mass off the face) and its bound:

    L = Σ_{j∉F} e^{−μ_j/ε} / (|F| + Σ_{j∉F} e^{−μ_j/ε})  ≤  (M − |F|) e^{−Δ_lin/ε} / |F|.

With ``face_tol`` > 0, F = {j : μ_j ≤ face_tol}; then |F| above is replaced by Σ_{j∈F} e^{−μ_j/ε}
(the exact face mass) so both statements stay exact. Everything is computed from log-masses, so
ε from 1e-300 to 1e300 neither overflows nor divides 0 by 0.

Example
-------
>>> import numpy as np
>>> c = softmax_certificate(np.array([2.0, 2.0, 0.0, -1.0]), eps=1.0)
>>> c.face.tolist(), c.gap, round(c.leakage, 6), round(c.leakage_bound, 6)
([0, 1], 2.0, 0.084719, 0.135335)
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy.special import expit, logsumexp

from .validate import as_real_array, nonnegative_scalar, positive_scalar, query_and_keys

__all__ = ["softmax_certificate", "softmax_certificate_qk", "SoftmaxCertificate"]


@dataclass(frozen=True)
class SoftmaxCertificate:
    weights: np.ndarray          # softmax(s/ε)
    face: np.ndarray             # sorted indices with μ_j ≤ face_tol
    mu: np.ndarray               # s_max − s_j
    gap: float | None            # Δ_lin, None when every token is on the face
    leakage: float               # exact mass off the face
    leakage_bound: float         # (M − |F|) e^{−Δ_lin/ε} / |F| (0 when gap is None)
    log_leakage_bound: float     # its logarithm (−inf when gap is None)
    eps: float

    def as_dict(self) -> dict:
        return {"face": self.face.tolist(), "gap": self.gap, "leakage": self.leakage,
                "leakage_bound": self.leakage_bound, "eps": self.eps}


def softmax_certificate(scores, eps: float = 1.0, *, face_tol: float = 0.0) -> SoftmaxCertificate:
    """Face, multipliers, Δ_lin and leakage of softmax(scores/ε)."""
    s = as_real_array("scores", scores, ndim=1)
    eps = positive_scalar("eps", eps)
    face_tol = nonnegative_scalar("face_tol", face_tol)
    mu = s.max() - s
    on_face = mu <= face_tol
    face = np.flatnonzero(on_face)
    z = -mu / eps
    log_all = logsumexp(z)
    weights = np.exp(z - log_all)
    if on_face.all():
        return SoftmaxCertificate(weights=weights, face=face, mu=mu, gap=None, leakage=0.0,
                                  leakage_bound=0.0, log_leakage_bound=-math.inf, eps=eps)
    log_face = logsumexp(z[on_face])
    log_out = logsumexp(z[~on_face])
    gap = float(mu[~on_face].min())
    leakage = float(expit(log_out - log_face))       # Z_out / (Z_face + Z_out), no cancellation
    log_bound = math.log(int((~on_face).sum())) - gap / eps - float(log_face)
    bound = math.exp(log_bound) if log_bound < 700 else math.inf
    return SoftmaxCertificate(weights=weights, face=face, mu=mu, gap=gap, leakage=leakage,
                              leakage_bound=bound, log_leakage_bound=log_bound, eps=eps)


def softmax_certificate_qk(q, K, eps: float = 1.0, *, scale: float | None = None,
                           face_tol: float = 0.0) -> SoftmaxCertificate:
    """``softmax_certificate`` of the scores s = K q · scale (scale defaults to 1/√D)."""
    q, K = query_and_keys(q, K)
    scale = 1.0 / math.sqrt(K.shape[1]) if scale is None else positive_scalar("scale", scale)
    return softmax_certificate((K @ q) * scale, eps, face_tol=face_tol)
