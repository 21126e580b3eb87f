"""The entropic relaxation of the hull projection (SPEC 1a), solved with a certificate.

Problem (primal), for keys K (M, D), query q (D,) and ε > 0:

    α_ε = argmin_{α ∈ Δ_M}  P(α) = ½‖Kᵀα − q‖² + ε Σ_j α_j log α_j .

P is strictly convex, so α_ε is unique and fully supported; it satisfies the fixed point
α_ε,j ∝ exp(⟨k_j, q − y_ε⟩/ε) with y_ε = Kᵀα_ε — a softmax of residual scores.

Dual. Writing ½‖y − q‖² = max_u ⟨u, y − q⟩ − ½‖u‖² and minimising over the simplex gives

    max_{u ∈ R^D}  g(u) = −ε·logsumexp(−K u / ε) − ⟨u, q⟩ − ½‖u‖²,

smooth and 1-strongly concave, with maximiser u* = y_ε − q and α(u) = softmax(−K u / ε).
Weak duality P(α) ≥ g(u) holds for every α ∈ Δ and u ∈ R^D, so every solver here reports the
**duality gap** P(α) − g(y(α) − q) ≥ P(α) − P(α_ε): a certificate that needs no knowledge of α_ε.
Because εΣα log α is ε-strongly convex in ‖·‖₁ on the simplex, it also bounds the weights:
‖α − α_ε‖₁ ≤ sqrt(2·gap/ε)  (reported as ``alpha_error_bound_l1``).

Solvers
  ``newton``  Newton's method on the D-dimensional dual with backtracking (default; quadratic
              convergence, accurate for ε from 1e-4 to 1e2).
  ``eg``      exponentiated gradient / proximal mirror descent on the primal: the smooth part is
              linearised, the entropy kept exact, step 1/R² with R the key radius about their mean
              (relative smoothness of ½‖Kᵀα − q‖² w.r.t. the entropy, by Pinsker) — always safe.
  ``fw``      Frank–Wolfe with step 2/(k+2); reports its own FW gap max_s ⟨∇P(α), α − s⟩ as well.
All arithmetic on weights is in the log domain, so nothing overflows for huge or tiny ε.
Regime: the problem only depends on ε/R² (R the key spread); ``newton`` converges for ε/R² down
to about 1e-8 (ε = 1e-4 at unit-scale keys). Below that the float64 dual is too flat to make
progress and a ConvergenceError says so instead of returning a wrong answer.

``eg_weights`` and ``fw_weights`` are the fixed-iteration forms the sparse decode runs on candidate
sets (the paper's ablation compares them).

Example
-------
>>> import numpy as np
>>> K = np.array([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0]]); q = np.array([1.0, 1.0])
>>> sol = entropic_projection(q, K, eps=1e-3)
>>> bool(sol.converged), np.round(sol.y, 3).tolist()
(True, [0.5, 0.5])
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy.special import logsumexp

from vashista_core.errors import ConvergenceError, VashistaInputError

from .validate import positive_int, positive_scalar, queries_and_keys, query_and_keys

__all__ = ["dual_objective", "duality_gap", "eg_weights", "entropic_projection", "entropic_projection_batch",
           "EntropicSolution", "fw_weights", "LOG_WEIGHT_TOL", "METHODS", "primal_objective"]

METHODS = ("newton", "eg", "fw")
LOG_WEIGHT_TOL = 1e-10   # newton polish stops once a step would move no log α_j more than this


@dataclass(frozen=True)
class EntropicSolution:
    """α_ε (and y_ε = Kᵀα_ε) with the certificate of how far from optimal it is."""

    alpha: np.ndarray            # (M,) weights on the simplex
    log_alpha: np.ndarray        # (M,) log weights (exact even where alpha underflows to 0)
    y: np.ndarray                # (D,) Kᵀα
    eps: float
    objective: float             # P(α)
    dual_objective: float        # g(y − q) ≤ P(α_ε)
    duality_gap: float           # P(α) − g(y − q) ≥ P(α) − P(α_ε) ≥ 0
    iterations: int
    converged: bool
    method: str

    @property
    def alpha_error_bound_l1(self) -> float:
        """Rigorous bound on ‖α − α_ε‖₁ from the gap (ε-strong convexity of the entropy in ℓ1)."""
        # the computed gap is itself rounded (~1e-16 of |P| and |g|): never certify below that floor
        floor = 8 * np.finfo(float).eps * (abs(self.objective) + abs(self.dual_objective))
        return math.sqrt(2.0 * max(self.duality_gap, floor) / self.eps)


# --- objective, dual and the certificate ------------------------------------------------------

def _log_softmax(z: np.ndarray) -> np.ndarray:
    la = z - z.max()                  # shift first: |z| can be ~1e10 when ε is tiny
    la -= logsumexp(la)
    return la - math.log(np.exp(la).sum())   # one correction so Σα = 1 to the last ulp


def primal_objective(log_alpha: np.ndarray, q: np.ndarray, K: np.ndarray, eps: float) -> float:
    """P(α) = ½‖Kᵀα − q‖² + ε Σ α log α, from log weights (0·log 0 = 0)."""
    alpha = np.exp(log_alpha)
    r = K.T @ alpha - q
    ent = float(np.sum(alpha * np.where(alpha > 0, log_alpha, 0.0)))
    return 0.5 * float(r @ r) + eps * ent


def dual_objective(u: np.ndarray, q: np.ndarray, K: np.ndarray, eps: float) -> float:
    """g(u) = −ε·logsumexp(−K u/ε) − ⟨u, q⟩ − ½‖u‖²  (a lower bound on min P)."""
    return -eps * float(logsumexp(-(K @ u) / eps)) - float(u @ q) - 0.5 * float(u @ u)


def duality_gap(log_alpha: np.ndarray, q: np.ndarray, K: np.ndarray, eps: float) -> tuple[float, float, float]:
    """(P(α), g(y − q), gap) for the weights exp(log_alpha); gap clipped at 0 against rounding."""
    y = K.T @ np.exp(log_alpha)
    p = primal_objective(log_alpha, q, K, eps)
    d = dual_objective(y - q, q, K, eps)
    return p, d, max(p - d, 0.0)


def _validated(q, K, eps):
    q, K = query_and_keys(q, K)
    eps = positive_scalar("eps", eps)
    return q, K, eps


def _gap_tolerance(tol: float, p: float, q: np.ndarray, K: np.ndarray, eps: float) -> float:
    # relative to the problem's own magnitudes (rounding in P and g is ~1e-16 of these)
    scale = max(abs(p), float(q @ q) + float(np.max(np.sum(K * K, axis=1))) + eps * math.log(K.shape[0]),
                1e-300)
    return tol * scale


def _newton_direction(u, q, K, eps):
    """(∇g(u), Newton step −∇²g(u)⁻¹∇g(u)) at the dual point u."""
    alpha = np.exp(_log_softmax(-(K @ u) / eps))
    y = K.T @ alpha
    grad = y - q - u                      # ∇g(u)
    Kc = K - y
    cov = (Kc * alpha[:, None]).T @ Kc    # Cov_α(K)
    H = np.eye(K.shape[1]) + cov / eps    # −∇²g(u), positive definite
    try:
        return grad, np.linalg.solve(H, grad)
    except np.linalg.LinAlgError:
        return grad, grad


def _newton_stage(u, q, K, eps, tol, max_iter):
    """Damped Newton ascent on g from u until the duality gap is below ``tol`` (relative);
    returns (u, iterations, converged)."""
    for it in range(1, max_iter + 1):
        p, _, gap = duality_gap(_log_softmax(-(K @ u) / eps), q, K, eps)
        if gap <= _gap_tolerance(tol, p, q, K, eps):
            return u, it, True
        grad, step = _newton_direction(u, q, K, eps)
        g0 = dual_objective(u, q, K, eps)
        slope = float(grad @ step)
        t = 1.0
        while t > 1e-14 and dual_objective(u + t * step, q, K, eps) < g0 + 0.25 * t * slope:
            t *= 0.5
        if t <= 1e-14:
            # g's rounding (~1e-16·|g|) hides the remaining ascent; near u* the gradient norm is
            # still measurable, so accept the full Newton step if it shrinks ‖∇g‖.
            if np.linalg.norm(_newton_direction(u + step, q, K, eps)[0]) < np.linalg.norm(grad):
                u = u + step
                continue
            return u, it, False
        u = u + t * step
    return u, max_iter, False


def _polish(u, q, K, eps, max_steps=8):
    """Full Newton steps while they shrink ‖∇g‖ — beyond what the duality gap can see.

    Why: the gap certifies the objective and the weights in l1, but tokens with tiny mass barely
    move either — a gap within 1e-10·scale left log α of an off-face token 60 off at ε = 3e-4 (keys
    at distance 14), and the face-stability bounds are statements about exactly those log-weights.
    Near u* Newton is quadratically convergent, and the gradient norm (unlike g itself, whose
    rounding hides ascents of 1e-20) stays measurable down to float64 resolution."""
    grad, step = _newton_direction(u, q, K, eps)
    for _ in range(max_steps):
        if float(np.max(np.abs(K @ step))) / eps <= LOG_WEIGHT_TOL:
            break
        new_grad, new_step = _newton_direction(u + step, q, K, eps)
        if np.linalg.norm(new_grad) >= np.linalg.norm(grad):
            break                                 # at float64 resolution
        u, grad, step = u + step, new_grad, new_step
    return u


def _newton(q, K, eps, tol, max_iter):
    """Newton on the dual with adaptive continuation in ε, from the key spread² R² down to ε.

    Each stage warm-starts from the previous, accurately solved and polished, stage; a stage that
    fails (the line search stalls when the start sits on a vertex of the simplex) is retried from
    the last good point with a gentler step in ε (ratio √ratio), so Newton stays in its quadratic
    region even when ε ≪ R²."""
    center = K.mean(axis=0)
    R2 = float(np.max(np.sum((K - center) ** 2, axis=1))) + float((q - center) @ (q - center))
    u = center - q                            # dual point of the uniform weights
    current, ratio, total = max(R2, eps), 4.0, 0
    u, it, ok = _newton_stage(u, q, K, current, tol, max_iter)
    total += it
    while True:
        if ok:
            u = _polish(u, q, K, current)
            if current <= eps:
                break
            nxt = max(eps, current / ratio)
        elif ratio < 1.01 or total > 20 * max_iter:
            break                             # give up honestly: ok stays False
        else:
            ratio = math.sqrt(ratio)
            nxt = max(eps, current / ratio)
        u_try, it, ok = _newton_stage(u, q, K, nxt, tol, max_iter // 4 if nxt > eps else max_iter)
        total += it
        if ok:
            u, current, ratio = u_try, nxt, min(4.0, ratio * 2)
        else:
            ok = False
    return _log_softmax(-(K @ u) / eps), total, ok and current <= eps


def _eg_iterations(q, K, eps, iters, step, tol=None):
    """Proximal mirror descent in log space; returns (log_alpha, iterations, stopped_by_tol)."""
    M = K.shape[0]
    center = K.mean(axis=0)
    R2 = float(np.max(np.sum((K - center) ** 2, axis=1)))
    eta = step if step is not None else (1.0 / R2 if R2 > 0 else 1.0)
    log_alpha = np.full(M, -math.log(M))
    for it in range(1, iters + 1):
        y = K.T @ np.exp(log_alpha)
        grad_smooth = K @ (y - q)
        # argmin ⟨∇f, α⟩ + ε Σ α log α + KL(α, α_k)/η  ⇒  log α ∝ (log α_k − η ∇f)/(1 + η ε)
        log_alpha = _log_softmax((log_alpha - eta * grad_smooth) / (1.0 + eta * eps))
        if tol is not None and it % 10 == 0:
            p, _, gap = duality_gap(log_alpha, q, K, eps)
            if gap <= _gap_tolerance(tol, p, q, K, eps):
                return log_alpha, it, True
    return log_alpha, iters, False


def _fw_iterations(q, K, eps, iters, tol=None):
    """Frank–Wolfe on P with step 2/(k+2); returns (log_alpha, iterations, stopped_by_tol, fw_gap)."""
    M = K.shape[0]
    log_alpha = np.full(M, -math.log(M))
    fw_gap = math.inf
    for it in range(1, iters + 1):
        alpha = np.exp(log_alpha)
        grad = K @ (K.T @ alpha - q) + eps * (log_alpha + 1.0)
        j = int(np.argmin(grad))
        fw_gap = float(grad @ alpha - grad[j])
        if tol is not None and it % 10 == 0:
            p, _, gap = duality_gap(log_alpha, q, K, eps)
            if gap <= _gap_tolerance(tol, p, q, K, eps):
                return log_alpha, it, True, fw_gap
        gamma = 2.0 / (it + 2.0)
        # α ← (1−γ)α + γ e_j, in the log domain (stays strictly positive)
        new = log_alpha + math.log1p(-gamma)
        new[j] = np.logaddexp(new[j], math.log(gamma))
        log_alpha = new
    alpha = np.exp(log_alpha)
    grad = K @ (K.T @ alpha - q) + eps * (log_alpha + 1.0)
    fw_gap = float(grad @ alpha - grad.min())
    return log_alpha, iters, False, fw_gap


def entropic_projection(q, K, eps, *, method: str = "newton", tol: float = 1e-10,
                        max_iter: int | None = None, step: float | None = None,
                        raise_on_failure: bool = True) -> EntropicSolution:
    """Solve min_{α∈Δ} ½‖Kᵀα − q‖² + εΣα log α; stop when the duality gap ≤ tol·scale.

    ``scale`` = max(|P|, ‖q‖² + max‖k‖² + ε log M) makes ``tol`` relative. Raises ConvergenceError if the
    gap is still above tolerance after ``max_iter`` iterations (unless ``raise_on_failure=False``,
    in which case ``converged`` is False and the gap says how far off the answer is).
    """
    q, K, eps = _validated(q, K, eps)
    tol = positive_scalar("tol", tol)
    if method not in METHODS:
        raise VashistaInputError("method", f"must be one of {METHODS}, got {method!r}")
    if method == "newton":
        max_iter = positive_int("max_iter", max_iter if max_iter is not None else 100)
        log_alpha, it, ok = _newton(q, K, eps, tol, max_iter)
    elif method == "eg":
        max_iter = positive_int("max_iter", max_iter if max_iter is not None else 100_000)
        log_alpha, it, ok = _eg_iterations(q, K, eps, max_iter, step, tol)
    else:
        max_iter = positive_int("max_iter", max_iter if max_iter is not None else 100_000)
        log_alpha, it, ok, _ = _fw_iterations(q, K, eps, max_iter, tol)
    p, d, gap = duality_gap(log_alpha, q, K, eps)
    if not ok and raise_on_failure:
        raise ConvergenceError(f"entropic_projection(method={method!r}, eps={eps:g}) did not reach "
                               f"duality gap {tol:g}·scale in {it} iterations (gap {gap:.3e})")
    alpha = np.exp(log_alpha)
    return EntropicSolution(alpha=alpha, log_alpha=log_alpha, y=K.T @ alpha, eps=eps, objective=p,
                            dual_objective=d, duality_gap=gap, iterations=it, converged=ok,
                            method=method)


def entropic_projection_batch(Q, K, eps, **kwargs) -> list[EntropicSolution]:
    """``entropic_projection`` for each row of Q (B, D) against one key set K."""
    Q, K = queries_and_keys(Q, K)
    return [entropic_projection(q, K, eps, **kwargs) for q in Q]


def eg_weights(q, K, eps, iters: int = 50, step: float | None = None) -> tuple[np.ndarray, float]:
    """``iters`` steps of exponentiated gradient; returns (α, duality gap certificate)."""
    q, K, eps = _validated(q, K, eps)
    iters = positive_int("iters", iters)
    if step is not None:
        step = positive_scalar("step", step)
    log_alpha, _, _ = _eg_iterations(q, K, eps, iters, step)
    return np.exp(log_alpha), duality_gap(log_alpha, q, K, eps)[2]


def fw_weights(q, K, eps, iters: int = 50) -> tuple[np.ndarray, float]:
    """``iters`` Frank–Wolfe steps; returns (α, FW duality gap max_s ⟨∇P(α), α − s⟩ ≥ P(α) − P*)."""
    q, K, eps = _validated(q, K, eps)
    iters = positive_int("iters", iters)
    log_alpha, _, _, fw_gap = _fw_iterations(q, K, eps, iters)
    return np.exp(log_alpha), max(fw_gap, 0.0)
