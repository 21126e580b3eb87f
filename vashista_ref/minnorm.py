"""Wolfe's minimum-norm-point algorithm: the exact projection of q onto conv(K), by a finite method.

Problem:  min_{α ∈ Δ_M} ½‖Kᵀα − q‖²,  solved as the point of minimum norm in conv(K − q).

Wolfe (1976) keeps a *corral* S — an affinely independent subset of keys whose affine hull's
minimum-norm point lies in their relative interior. Each major step adds the key most violating
optimality (argmin_j ⟨x, p_j⟩); minor steps drop keys whose affine weights turn non-positive. The
method terminates after finitely many steps; this implementation stops when the optimality gap
‖x‖² − min_j ⟨x, p_j⟩ is below ``tol`` times the problem's squared scale.

Which α* when α* is not unique (duplicate or affinely dependent keys): Wolfe returns a *basic*
solution, supported on an affinely independent corral (so |supp α| ≤ D + 1), preferring among
duplicates the key that entered first, i.e. the lowest index (argmin takes the first minimiser).
cvxpy's interior-point solver (``projection.project_onto_hull(solver="cvxpy")``) instead spreads
weight over duplicates. y* = Kᵀα* is the same for both.

Example
-------
>>> import numpy as np
>>> K = np.array([[0.0, 0.0], [2.0, 0.0], [0.0, 2.0]])
>>> alpha = wolfe_min_norm_point(np.array([2.0, 2.0]), K)
>>> (K.T @ alpha).round(12).tolist()
[1.0, 1.0]
"""
from __future__ import annotations

import numpy as np

from vashista_core.errors import ConvergenceError

from .validate import positive_int, positive_scalar, query_and_keys


def _affine_min_norm(P_S: np.ndarray) -> np.ndarray:
    """Weights w (Σw = 1) of the minimum-norm point of the affine hull of the rows of P_S."""
    n = P_S.shape[0]
    if n == 1:
        return np.ones(1)
    G = P_S @ P_S.T
    A = np.zeros((n + 1, n + 1))
    A[:n, :n] = G
    A[:n, n] = 1.0
    A[n, :n] = 1.0
    b = np.zeros(n + 1)
    b[n] = 1.0
    sol = np.linalg.lstsq(A, b, rcond=None)[0]
    w = sol[:n]
    return w / w.sum()


def wolfe_min_norm_point(q, K, *, tol: float = 1e-12, max_iter: int = 10_000) -> np.ndarray:
    """Return α* (M,) with Kᵀα* the Euclidean projection of q onto conv(K).

    Raises ConvergenceError if ``max_iter`` major+minor steps do not reach the optimality gap.
    """
    q, K = query_and_keys(q, K)
    tol = positive_scalar("tol", tol)
    max_iter = positive_int("max_iter", max_iter)
    P = K - q
    M = P.shape[0]
    norms2 = np.einsum("ij,ij->i", P, P)
    scale2 = max(float(norms2.max()), 1e-300)
    S = [int(np.argmin(norms2))]
    lam = np.ones(1)
    x = P[S[0]].copy()
    for _ in range(max_iter):
        dots = P @ x
        j = int(np.argmin(dots))
        xx = float(x @ x)
        if xx - dots[j] <= tol * scale2 or j in S:
            break
        S.append(j)
        lam = np.append(lam, 0.0)
        while True:                                   # minor cycle
            w = _affine_min_norm(P[S])
            if np.all(w > 1e-15):
                lam = w
                break
            neg = w <= 1e-15
            with np.errstate(divide="ignore", invalid="ignore"):
                ratios = np.where(neg, lam / (lam - w), np.inf)
            theta = float(np.min(ratios))
            lam = lam + theta * (w - lam)
            keep = lam > 1e-15
            if not np.any(keep):                      # numerically degenerate: keep the best point
                keep[np.argmax(lam)] = True
            S = [s for s, k in zip(S, keep) if k]
            lam = lam[keep] / lam[keep].sum()
        x = P[S].T @ lam
    else:
        raise ConvergenceError(f"wolfe_min_norm_point did not terminate in {max_iter} iterations")
    alpha = np.zeros(M)
    alpha[S] = lam
    return alpha
