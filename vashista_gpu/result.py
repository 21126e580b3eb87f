"""The one result type of a GPU-tier decode step, paged sparse or certified: :class:`StepResult`.

Its fields carry the reference tier's names (``vashista_ref.sparse_decode.DecodeResult``) where the
idea is the same: ``out``, ``certified_leakage`` L̂, ``certified_error``, ``gap`` Δ̂, ``certified``,
``fell_back``, ``P_used``, ``Kc_used``, ``pages``, ``candidates``. Every step fills the same object:

* the device-only steps (``decode.run_plan``'s paged step; ``sketch_plan.run_sketch_plan`` and
  ``sketch.fused_sketch_step``, certified mode) fill the step's own fields — ``out``, ``candidates``,
  the certificate and ``gap`` (and ``overflow`` in certified mode) — and leave the policy's
  fields (``certified``, ``fell_back``, ``P_used``, ``Kc_used``, ``pages``, ``weights``) None;
* the one-call functions with a policy (``decode.sparse_decode``, ``sketch_plan.paged_certified_decode``,
  ``sketch.sketch_decode``; the loop is ``vashista_core.policy_loop``) fill every field.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

__all__ = ["StepResult"]


@dataclass
class StepResult:
    """Output and per-(batch row, query head) certificate of one step; (B, Hq) tensors unless noted.

    ``out`` (B, Hq, Dv); ``certified_leakage`` L̂ ≥ the dense mass outside the candidates,
    ``certified_error`` ≥ ‖out − dense‖ and ``gap`` Δ̂ (softmax; NaN for eg/fw); ``candidates``
    (B, Hq, Kc) logical token indices ascending, −1 padded. Filled by the policy (None from a
    device-only step): ``certified`` error ≤ tol; ``fell_back`` recomputed densely; ``P_used`` /
    ``Kc_used`` after a ``Capped`` policy; ``pages`` (B, Hq, W) routed logical pages ascending, −1
    padded (every page in certified mode); ``weights`` (B, Hq, Kc) aligned with ``candidates``.
    ``overflow`` (certified mode) rows whose threshold selection overflowed its buffer without a
    synchronisation (``selection.select_candidates``); ``summaries_scored`` per query head (routing
    cost); ``path`` the implementation that ran: ``"paged"``, ``"fused"`` or ``"torch"``.
    """
    out: torch.Tensor
    certified_leakage: torch.Tensor
    certified_error: torch.Tensor
    gap: torch.Tensor
    candidates: torch.Tensor
    certified: torch.Tensor | None = None
    fell_back: torch.Tensor | None = None
    P_used: torch.Tensor | None = None
    Kc_used: torch.Tensor | None = None
    pages: torch.Tensor | None = None
    weights: torch.Tensor | None = None
    overflow: torch.Tensor | None = None
    summaries_scored: int = 0
    path: str = "paged"
