"""The projection-model solvers on candidate sets, batched over (batch row, query head) in torch —
twins of ``vashista_ref.entropic.eg_weights`` / ``fw_weights`` (same iterations, same start, same step).

Both approximately solve, on the candidate keys K_C (n valid rows of Kc),

    α ≈ argmin_{α ∈ Δ_C}  ½‖K_Cᵀα − q‖² + ε Σ_j α_j log α_j,

``eg``: proximal mirror descent in log space, log α ← log_softmax((log α − η ∇f)/(1 + ηε)),
η = 1 / max_j ‖k_j − mean(K_C)‖²;  ``fw``: Frank–Wolfe with step 2/(k+2) in the log domain.
Invalid candidate slots (fewer tokens than Kc) carry log α = −∞. Iterations run in float64 — the
candidate problem is tiny (Kc × D) and float32 would drift from the reference over 50 steps.

Example::

    >>> import torch
    >>> K = torch.eye(3, dtype=torch.float64)[None, None]           # (1, 1, 3, 3)
    >>> a = projection_weights_raw("eg", torch.tensor([[[1.0, 0, 0]]]), K, torch.ones(1, 1, 3, dtype=torch.bool), 0.01, 50)
    >>> int(a[0, 0].argmax())
    0
"""
from __future__ import annotations

import math

import torch

__all__ = ["projection_weights", "projection_weights_raw"]


def _masked_log_softmax(x: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    return torch.log_softmax(torch.where(valid, x, float("-inf")), dim=-1)


def projection_weights_raw(solver: str, q: torch.Tensor, K: torch.Tensor, valid: torch.Tensor, eps: float,
                           iters: int) -> torch.Tensor:
    """α (B, Hq, Kc) for queries q (B, Hq, D), candidate keys K (B, Hq, Kc, D), ``valid`` (B, Hq, Kc)."""
    q, K = q.double(), K.double()
    K = torch.where(valid[..., None], K, 0.0)
    n = valid.sum(-1, keepdim=True).clamp(min=1).double()
    log_a = torch.where(valid, -torch.log(n), float("-inf"))
    if solver == "eg":
        center = K.sum(-2, keepdim=True) / n[..., None]
        R2 = torch.where(valid, ((K - center) ** 2).sum(-1), 0.0).amax(-1, keepdim=True)
        eta = torch.where(R2 > 0, 1.0 / R2, 1.0)
        for _ in range(iters):
            y = (torch.exp(log_a)[..., None] * K).sum(-2)
            grad = (K * (y - q)[..., None, :]).sum(-1)
            log_a = _masked_log_softmax((log_a - eta * grad) / (1.0 + eta * eps), valid)
        return torch.exp(log_a)
    for it in range(1, iters + 1):
        alpha = torch.exp(log_a)
        y = (alpha[..., None] * K).sum(-2)
        grad = (K * (y - q)[..., None, :]).sum(-1) + eps * (log_a + 1.0)
        j = torch.where(valid, grad, float("inf")).argmin(-1, keepdim=True)
        gamma = 2.0 / (it + 2.0)
        new = log_a + math.log1p(-gamma)
        new = new.scatter(-1, j, torch.logaddexp(torch.gather(new, -1, j), torch.full_like(torch.gather(new, -1, j), math.log(gamma))))
        log_a = torch.where(valid, new, float("-inf"))
    return torch.exp(log_a)


def projection_weights(plan, q32: torch.Tensor, Kc: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Weights of ``plan.solver`` with the plan's ε and iteration count (float32 result)."""
    return projection_weights_raw(plan.solver, q32, Kc, valid, plan.eps, plan.iters).float()
