"""Hard attention as a projection: q onto the convex hull of the keys, with its KKT certificate.

Problem (SPEC 1a):

    α* ∈ argmin_{α ∈ Δ_M} ½‖Kᵀα − q‖²,   y* = Kᵀα* = Π_conv(K)(q),   r* = q − y*.

KKT (λ for Σα = 1, μ ≥ 0 for α ≥ 0):  ⟨k_j, y* − q⟩ − λ − μ_j = 0,  μ_j α_j = 0, hence

    λ = −⟨r*, y*⟩,   μ*_j = ⟨r*, y* − k_j⟩ = max_i ⟨r*, k_i⟩ − ⟨r*, k_j⟩ ≥ 0.

Active set I = supp(α*) (α_j > ``active_tol``); face F = argmax_j ⟨r*, k_j⟩ (μ_j ≤ ``face_tol``·‖r*‖·D_K,
D_K the key diameter); support gap Δ = min_{j ∉ I} μ*_j. No certificate (``gap is None``) when q lies
in the hull (‖r*‖ ≤ ``inside_tol``·scale: every μ* is 0) or when every key is active.

Two exact solvers: ``"cvxpy"`` (Clarabel interior point, tight tolerances) and ``"wolfe"`` (finite
minimum-norm-point method, ``minnorm.py``). y* is unique; α* need not be. cvxpy returns the
interior-point limit, which spreads weight evenly over duplicate keys; Wolfe returns a basic solution
on an affinely independent corral (|supp| ≤ D+1), lowest index first among duplicates.
``kkt_certificate`` builds the same certificate from *any* α, so the caller can check a third solver.

Example
-------
>>> import numpy as np
>>> K = np.array([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
>>> p = project_onto_hull(np.array([1.0, 1.0]), K, solver="wolfe")
>>> p.y.round(9).tolist(), p.active_set.tolist(), round(p.gap, 9)
([0.5, 0.5], [1, 2], 0.5)
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np

from vashista_core.errors import ConvergenceError, VashistaInputError

from .minnorm import wolfe_min_norm_point
from .validate import nonnegative_scalar, queries_and_keys, query_and_keys

__all__ = ["DEFAULT_ACTIVE_TOL", "DEFAULT_FACE_TOL", "DEFAULT_INSIDE_TOL", "HullProjection",
           "kkt_certificate", "KKTResiduals", "project_onto_hull", "project_onto_hull_batch", "SOLVERS"]

SOLVERS = ("cvxpy", "wolfe")
DEFAULT_ACTIVE_TOL = 1e-7   # α_j above this (weights live on the simplex, so it is scale-free)
DEFAULT_FACE_TOL = 1e-7     # μ_j ≤ face_tol·‖r‖·D_K counts as on the face
DEFAULT_INSIDE_TOL = 1e-6   # ‖r‖ ≤ inside_tol·max(‖q‖, max‖k‖, D_K): q is in the hull
# (interior-point accuracy is ~sqrt(tolerance) when the optimal distance is 0, hence 1e-6, not 1e-9)


@dataclass(frozen=True)
class KKTResiduals:
    """Each is ≥ 0 and zero at an exact optimum (up to rounding)."""

    primal_feasibility: float       # max(|Σα − 1|, max_j(−α_j))
    stationarity: float             # max_j |⟨k_j, y − q⟩ − λ − μ_j|
    complementary_slackness: float  # max_j α_j·|μ_j|
    dual_feasibility: float         # max_j(−μ_j), relative violations of μ ≥ 0

    @property
    def max(self) -> float:
        return max(self.primal_feasibility, self.stationarity, self.complementary_slackness,
                   self.dual_feasibility)

    def as_dict(self) -> dict:
        return {"primal_feasibility": self.primal_feasibility, "stationarity": self.stationarity,
                "complementary_slackness": self.complementary_slackness,
                "dual_feasibility": self.dual_feasibility, "max": self.max}


@dataclass(frozen=True)
class HullProjection:
    alpha: np.ndarray           # (M,) α* (see module doc for which one)
    y: np.ndarray               # (D,) y* = Kᵀα*
    r: np.ndarray               # (D,) r* = q − y*
    lam: float                  # λ = −⟨r*, y*⟩
    mu: np.ndarray              # (M,) μ*_j = ⟨r*, y* − k_j⟩
    active_set: np.ndarray      # sorted indices with α_j > active_tol
    face: np.ndarray            # sorted indices of argmax_j ⟨r*, k_j⟩ (within face_tol)
    gap: float | None           # Δ = min_{j∉I} μ*_j, or None (no certificate)
    gap_reason: str             # why there is / is not a certificate
    kkt: KKTResiduals
    solver: str
    tolerances: dict = field(default_factory=dict)

    @property
    def strictly_complementary(self) -> bool:
        """I = F: every key off the active set has μ_j > 0 (within the face tolerance)."""
        return np.array_equal(self.active_set, self.face)

    @property
    def inside_hull(self) -> bool:
        return self.gap_reason == "q is in the hull (r* = 0): every multiplier is 0, no gap exists"


def _diameter(K: np.ndarray) -> float:
    # exact for small M, else the (≤ 2×) bound via the centroid — used only to scale tolerances
    if K.shape[0] <= 2048:
        sq = np.sum(K * K, axis=1)
        d2 = sq[:, None] + sq[None, :] - 2.0 * (K @ K.T)
        return float(np.sqrt(max(float(d2.max()), 0.0)))
    c = K.mean(axis=0)
    return 2.0 * float(np.sqrt(np.max(np.sum((K - c) ** 2, axis=1))))


def kkt_certificate(q, K, alpha, *, active_tol: float = DEFAULT_ACTIVE_TOL,
                    face_tol: float = DEFAULT_FACE_TOL, inside_tol: float = DEFAULT_INSIDE_TOL,
                    solver: str = "given") -> HullProjection:
    """The KKT certificate (SPEC 1a) of the weights ``alpha`` for projecting q onto conv(K).

    Multipliers are computed from α alone: λ = −⟨r, y⟩, μ_j = ⟨r, y − k_j⟩ with y = Kᵀα, r = q − y.
    The residuals say how far α is from optimal; nothing here assumes it is.
    """
    q, K = query_and_keys(q, K)
    alpha = np.asarray(alpha, dtype=np.float64)
    if alpha.shape != (K.shape[0],):
        raise VashistaInputError("alpha", f"expected shape ({K.shape[0]},), got {alpha.shape}")
    if not np.all(np.isfinite(alpha)):
        raise VashistaInputError("alpha", "contains NaN or infinite values")
    active_tol = nonnegative_scalar("active_tol", active_tol)
    face_tol = nonnegative_scalar("face_tol", face_tol)
    inside_tol = nonnegative_scalar("inside_tol", inside_tol)

    y = K.T @ alpha
    r = q - y
    lam = -float(r @ y)
    mu = float(r @ y) - K @ r
    diam = _diameter(K)
    rnorm = float(np.linalg.norm(r))
    scale = max(float(np.linalg.norm(q)), float(np.sqrt(np.max(np.sum(K * K, axis=1)))), diam, 1e-300)

    active = np.flatnonzero(alpha > active_tol)
    face = np.flatnonzero(mu <= face_tol * rnorm * max(diam, 1e-300))
    M = K.shape[0]
    if rnorm <= inside_tol * scale:
        gap, reason = None, "q is in the hull (r* = 0): every multiplier is 0, no gap exists"
        face = np.arange(M)
    elif active.size == M:
        gap, reason = None, "every key is active: no key off the face to separate"
    else:
        inactive = np.setdiff1d(np.arange(M), active, assume_unique=True)
        gap = float(mu[inactive].min())
        reason = ("strict complementarity: Δ > 0 separates the face" if np.array_equal(active, face)
                  else "degenerate: a key off the active set lies on the face (Δ ≈ 0)")

    grad = K @ (y - q)
    kkt = KKTResiduals(
        primal_feasibility=float(max(abs(alpha.sum() - 1.0), max(0.0, float(-alpha.min())))),
        stationarity=float(np.max(np.abs(grad - lam - mu))),
        complementary_slackness=float(np.max(np.abs(alpha * mu))),
        dual_feasibility=float(max(0.0, float(-mu.min()))),
    )
    return HullProjection(alpha=alpha, y=y, r=r, lam=lam, mu=mu, active_set=active, face=face,
                          gap=gap, gap_reason=reason, kkt=kkt, solver=solver,
                          tolerances={"active_tol": active_tol, "face_tol": face_tol,
                                      "inside_tol": inside_tol})


def _solve_cvxpy(q: np.ndarray, K: np.ndarray) -> np.ndarray:
    import cvxpy as cp  # imported here: the GPU machine has no cvxpy and never calls this

    # Center and scale so Clarabel's absolute tolerances mean the same thing at every scale.
    c = K.mean(axis=0)
    s = max(float(np.max(np.abs(K - c))), float(np.max(np.abs(q - c))), 1e-300)
    Ks, qs = (K - c) / s, (q - c) / s
    # y as its own variable: Clarabel then sees a plain QP with an identity Hessian block, which
    # measured ~2x more accurate in y* than sum_squares(Kᵀα − q) (worst 4e-9 vs 8e-9, 150 instances)
    # and never forms the dense M x M Gram matrix.
    a = cp.Variable(K.shape[0], nonneg=True)
    y = cp.Variable(K.shape[1])
    prob = cp.Problem(cp.Minimize(0.5 * cp.sum_squares(y) - qs @ y), [cp.sum(a) == 1, y == Ks.T @ a])
    # 1e-14 first: at 1e-12 a 5-key face in D = 5 came back 5.5e-8 off y* (1 in 600 known-face
    # instances; 3e-10 at 1e-14). When q is in the hull (optimal distance 0) Clarabel cannot reach
    # 1e-14 and stops "inaccurate" at a worse point, so fall back to 1e-12 then.
    for tol in (1e-14, 1e-12):
        try:
            prob.solve(solver=cp.CLARABEL, tol_gap_abs=tol, tol_gap_rel=tol, tol_feas=tol,
                       tol_ktratio=1e-10, max_iter=500)
        except cp.error.SolverError as exc:
            raise ConvergenceError(f"cvxpy/Clarabel failed on the hull projection: {exc}") from exc
        if prob.status == "optimal":
            break
    if prob.status not in ("optimal", "optimal_inaccurate") or a.value is None:
        raise ConvergenceError(f"cvxpy/Clarabel did not solve the hull projection (status {prob.status})")
    alpha = np.clip(np.asarray(a.value, dtype=np.float64), 0.0, None)
    return alpha / alpha.sum()


def project_onto_hull(q, K, *, solver: str = "cvxpy", active_tol: float = DEFAULT_ACTIVE_TOL,
                      face_tol: float = DEFAULT_FACE_TOL,
                      inside_tol: float = DEFAULT_INSIDE_TOL) -> HullProjection:
    """Exact Euclidean projection of q (D,) onto conv(K), K (M, D), with its KKT certificate."""
    q, K = query_and_keys(q, K)
    if solver not in SOLVERS:
        raise VashistaInputError("solver", f"must be one of {SOLVERS}, got {solver!r}")
    # The problem is translation- and scale-equivariant: solve and certify it centred on the keys' mean
    # and scaled to unit size, so that no solver or tolerance sees the caller's units (q and K scaled by
    # 1e-300 read "in the hull", and Wolfe's bordered system lost the simplex constraint at 1e4 and
    # 1e30; issue 15), then map back: y = c + s·y', r = s·r', μ = s²·μ', Δ = s²·Δ'.
    c, s = _frame(q, K)
    qn, Kn = (q - c) / s, (K - c) / s
    alpha = _solve_cvxpy(qn, Kn) if solver == "cvxpy" else wolfe_min_norm_point(qn, Kn)
    cert = kkt_certificate(qn, Kn, alpha, active_tol=active_tol, face_tol=face_tol,
                           inside_tol=inside_tol, solver=solver)
    if cert.kkt.max > KKT_REFUSE:
        raise ConvergenceError(f"{solver} returned weights whose KKT residual is {cert.kkt.max:.1e} (> "
                               f"{KKT_REFUSE:g} in unit-scaled coordinates): not the projection")
    return _in_caller_units(cert, c, s)


KKT_REFUSE = 1e-5            # a solution whose unit-scaled KKT residual exceeds this is refused
_SCALE_RANGE = (1e-140, 1e140)   # s² and the multipliers (∝ s²) must stay normal float64 numbers


def _frame(q: np.ndarray, K: np.ndarray) -> tuple[np.ndarray, float]:
    """Centre c (the keys' mean) and size s of the instance; refuses sizes whose squares leave float64."""
    c = K.mean(axis=0)
    with np.errstate(over="ignore"):
        s = max(float(np.max(np.abs(K - c))), float(np.max(np.abs(q - c))))
    if s == 0.0:
        return c, 1.0                           # q equals every key: the hull is that point
    if not (_SCALE_RANGE[0] <= s <= _SCALE_RANGE[1]):
        raise VashistaInputError("q", f"q and K span ~{s:.1e}: the multipliers and the gap (squared "
                                      f"distances) would leave float64's range; rescale both by one factor "
                                      f"(the projection is scale-invariant)")
    return c, s


def _in_caller_units(cert: HullProjection, c: np.ndarray, s: float) -> HullProjection:
    """Map a certificate computed at (q − c)/s, (K − c)/s back to the caller's coordinates."""
    s2 = s * s
    y = c + s * cert.y
    r = s * cert.r
    k = cert.kkt
    kkt = KKTResiduals(primal_feasibility=k.primal_feasibility, stationarity=k.stationarity * s2,
                       complementary_slackness=k.complementary_slackness * s2,
                       dual_feasibility=k.dual_feasibility * s2)
    return replace(cert, y=y, r=r, lam=-float(r @ y), mu=cert.mu * s2,
                   gap=None if cert.gap is None else cert.gap * s2, kkt=kkt)


def project_onto_hull_batch(Q, K, **kwargs) -> list[HullProjection]:
    """``project_onto_hull`` for every row of Q (B, D) against one key set K (M, D)."""
    Q, K = queries_and_keys(Q, K)
    return [project_onto_hull(q, K, **kwargs) for q in Q]
