"""The context-parallel certified step (SPEC 3b over a sharded cache; docs/CONTEXT_PARALLEL.md).

Problem solved for every query head h of batch row b (KV head h // G), over the whole logical
sequence, whose tokens are spread over the ranks by ``shard.ShardLayout``:

    o_h = softmax(s_C)·V_C,   C = the candidate set (below),   ‖o_h − o_dense‖ ≤ certified_error,

each rank running the sketch scan and the exact rescoring on its own shard only. Collectives per step
(``torch.distributed``: gloo on CPU, NCCL on GPU; every rank of ``group`` calls the step with the
same q, seq_ids and arguments):

1. selection — ``selection="global"``: C = the top-Kc of the whole sequence by sketch score under the
   tie rule, the set the single-process step selects. Each rank's share of it is among the rank's
   local top-Kc (a token beaten by Kc tokens of its own shard is beaten by Kc tokens overall), so each
   rank sends its local top-Kc (score, logical index) pairs — one ``all_gather`` of (B, Hq, Kc, 2) —
   and every rank takes the top-Kc of the union: C, and its last element, the threshold that tells a
   rank which of its tokens are in C. ``selection="local"``: C = the union of the ranks' local top-Kc
   (a superset of the global top-Kc; no selection collective, R·Kc candidates);
2. merge — each rank rescores its candidates and packs its ``merge.ShardState``; one ``all_gather``
   of (B, Hq, 10 + Dv) and every rank merges and certifies identically (``merge.certificate``).

``policy``: ReportOnly (default), DenseFallback(tol) or Capped(tol, ·, Kc_max), run by the one policy
loop (``vashista_core.policy_loop``): Capped re-attempts the rows with an uncertified head at a
doubled Kc; heads still above tol are recomputed by the distributed dense decode
(``fallback.cp_dense_decode``). Each retry and the fallback are collectives taken by all ranks
together, which agree on them because all hold the same merged certificates.

This module is the torch path (any device; float32 or float64 scan). On CUDA the per-rank part of
the fused kernels is ``fused_terms.py`` (what benchmarks/cp_decode.py times).
"""
from __future__ import annotations

import math
import torch

from vashista_core.errors import VashistaInputError
from vashista_core.policies import Capped
from vashista_core.policy_loop import check_policy, run_policy

from .. import validate as V
from ..allowance import cast_output
from ..result import StepResult
from ..sketch import attach_sketch
from .fallback import cp_dense_decode
from .fused_terms import fused_shard_state
from .merge import MergedResult, all_gather_states, certificate, merge
from .torch_terms import empty_terms, local_top, scan_bounds, shard_terms

__all__ = ["NO_INDEX", "cp_certified_decode", "cp_fused_step", "global_threshold"]

NO_INDEX = float(2 ** 53)        # padding of a short shard's top-Kc: sorts after every real token


def global_threshold(local_keys: torch.Tensor, Kc: int, group=None):
    """From every rank's local top-Kc pairs ``local_keys`` (B, Hq, Kc, 2) float64 [score, logical
    index] (padded with (−inf, NO_INDEX)), by one all_gather: the merged top-Kc's logical positions
    (B, Hq, Kc) ascending and the threshold pair (τ, i_τ) (B, Hq) each — token j is in the set iff
    ŝ_j > τ or (ŝ_j = τ and j ≤ i_τ)."""
    allk = all_gather_states(local_keys, group)                             # (R, B, Hq, Kc, 2)
    u = allk.permute(1, 2, 0, 3, 4).flatten(2, 3)                           # (B, Hq, R·Kc, 2)
    by_idx = torch.sort(u[..., 1], dim=-1, stable=True).indices
    u = torch.gather(u, 2, by_idx[..., None].expand_as(u))
    by_score = torch.sort(u[..., 0], dim=-1, descending=True, stable=True).indices[..., :Kc]
    top = torch.gather(u, 2, by_score[..., None].expand(*by_score.shape, 2))
    return torch.sort(top[..., 1].long(), dim=-1).values, top[..., -1, 0], top[..., -1, 1]


def _check(q, shards, seq_ids, Kc, policy, selection, compute_dtype):
    local = shards.local
    q, ids = V.batch_query(q, local, seq_ids)
    if q.shape[1] % local.n_kv_heads:
        raise VashistaInputError("q", f"has {q.shape[1]} query heads, not a multiple of the {local.n_kv_heads} KV heads")
    shortest = min(shards.total_length(s) for s in ids)
    Kc = V.positive_int("Kc", Kc, upper=shortest, upper_name="tokens in the shortest sequence")
    policy = check_policy(policy)
    if isinstance(policy, Capped):
        policy.check_start(1, Kc)
    if selection not in ("global", "local"):
        raise VashistaInputError("selection", f"must be 'global' or 'local', got {selection!r}")
    if compute_dtype not in (torch.float32, torch.float64):
        raise VashistaInputError("compute_dtype", f"must be torch.float32 or torch.float64, got {compute_dtype}")
    return q, ids, Kc, policy


def _attempt(q, shards, ids, Kc, *, bits, scale, selection, one_sided, compute_dtype, group):
    """One context-parallel certified step of q (B, Hq, D) over ``ids`` at Kc (steps 1-2 of the module
    doc): (``merge.MergedResult``, candidates (B, Hq, Kc) as the ``candidates`` of
    :func:`cp_certified_decode`)."""
    local = shards.local
    B, Hq, _ = q.shape
    store = attach_sketch(local, bits)
    # 1. scan each row's shard; local top-Kc as (score, logical index) pairs
    rows, keys = [], torch.full((B, Hq, Kc, 2), -math.inf, dtype=torch.float64, device=q.device)
    keys[..., 1] = NO_INDEX
    for b, sid in enumerate(ids):
        if local.length(sid) == 0:
            rows.append(None)
            continue
        K, Vv = (x.permute(1, 0, 2) for x in local.gather(sid))
        shat, ub = scan_bounds(q[b], store.sequence_sketch(local, sid), scale=scale, compute_dtype=compute_dtype,
                               one_sided=one_sided)
        top = local_top(shat, Kc)
        kc = top.shape[1]
        keys[b, :, :kc, 0], keys[b, :, :kc, 1] = torch.gather(shat, 1, top), shards.global_positions(sid)[top].double()
        rows.append((K, Vv, ub, top))
    # 2. which of them are candidates
    if selection == "global":
        cand, tau, i_tau = global_threshold(keys, Kc, group)
        s_top, i_top = keys[..., 0], keys[..., 1]
        chosen = (s_top > tau[..., None]) | ((s_top == tau[..., None]) & (i_top <= i_tau[..., None]))
    else:
        chosen = torch.isfinite(keys[..., 0])
        cand = torch.sort(torch.where(chosen, keys[..., 1].long(), -1), dim=-1).values
    # 3. exact part on this rank's candidates, one merge for all rows
    terms = []
    for b, row in enumerate(rows):
        if row is None:
            terms.append(empty_terms(Hq, local.value_dim, q.device).pack())
            continue
        K, Vv, ub, top = row
        terms.append(shard_terms(q[b], K, Vv, ub, top, chosen[b, :, : top.shape[1]], scale=scale,
                                 compute_dtype=compute_dtype).pack())
    return certificate(merge(all_gather_states(torch.stack(terms), group))), cand


def cp_certified_decode(q: torch.Tensor, shards, seq_ids, Kc: int, *, bits: int = 4, scale: float | None = None,
                        policy=None, selection: str = "global", one_sided: bool = True,
                        compute_dtype=torch.float32, group=None) -> StepResult:
    """Certified decode of q (B, Hq, D) over sequences ``seq_ids`` sharded as ``shards`` (this rank's
    ``shard.ShardedCache``), Kc candidates per head (module doc). A collective over ``group``.

    Returns the GPU tier's ``result.StepResult``, identical on every rank: ``out`` in q's dtype; the
    certificate (float64) of the whole sequence; ``candidates`` (B, Hq, max Kc_used) logical positions
    ascending of the attempt reported for each head, −1 padded — the merged set for
    ``selection="global"``, this rank's share of the union for ``"local"``; ``Kc_used`` that attempt's
    Kc; ``summaries_scored`` the sketch tokens this rank scanned per query head (its longest shard);
    ``path="torch"``.

    The policy runs in ``vashista_core.policy_loop.run_policy`` with the batch row as the unit, as the
    single-process GPU steps: ``Capped(tol, ·, Kc_max)`` widens Kc only (doubling, at most the row's
    length), a retry replacing the row's uncertified heads; every rank takes the same retries, because
    every rank holds the same merged certificates."""
    q, ids, Kc, policy = _check(q, shards, seq_ids, Kc, policy, selection, compute_dtype)
    B, Hq, D = q.shape
    sc = 1.0 / math.sqrt(D) if scale is None else V.positive_scalar("scale", scale)
    tol = getattr(policy, "tol", math.inf)
    kw = dict(bits=bits, scale=sc, selection=selection, one_sided=one_sided, compute_dtype=compute_dtype,
              group=group)
    f64 = dict(dtype=torch.float64, device=q.device)
    out = torch.zeros(B, Hq, shards.local.value_dim, **f64)
    leak, err, gap = (torch.full((B, Hq), math.nan, **f64) for _ in range(3))   # NaN: not attempted yet
    cands = [[None] * Hq for _ in range(B)]
    fell_back = torch.zeros(B, Hq, dtype=torch.bool, device=q.device)

    def attempt(rows, _P, kc):
        r, c = _attempt(q[rows], shards, [ids[b] for b in rows], kc, **kw)
        # the output is returned in q's dtype: the certificate is raised by that cast (docs/ROUNDING.md
        # §2.5) before the policy reads it, as in the single-process steps
        o_cast, e_cast = cast_output(r.out, r.certified_error, q.dtype)
        for i, b in enumerate(rows):
            redo = ~(err[b] <= tol)                     # the first attempt: every head (err is NaN)
            out[b] = torch.where(redo[:, None], o_cast[i].double(), out[b])
            for t, new in ((leak, r.certified_leakage), (err, e_cast), (gap, r.gap)):
                t[b] = torch.where(redo, new[i], t[b])
            for h in torch.nonzero(redo).flatten().tolist():
                cands[b][h] = c[i, h]

    def dense(rows):
        d = cp_dense_decode(q[rows], shards, [ids[b] for b in rows], scale=sc, group=group).double()
        for i, b in enumerate(rows):
            fell_back[b] = ~(err[b] <= tol)
            out[b] = torch.where(fell_back[b][:, None], d[i], out[b])

    run_policy(policy, list(range(B)), 1, Kc, attempt=attempt,
                      uncertified=lambda: [b for b in range(B) if not bool((err[b] <= tol).all())],
                      limits=lambda b: (shards.total_length(ids[b]), 1), dense=dense)
    width = max(c.numel() for row in cands for c in row)
    cand = torch.full((B, Hq, width), -1, dtype=torch.int64, device=q.device)
    for b in range(B):
        for h in range(Hq):
            cand[b, h, : cands[b][h].numel()] = cands[b][h]
    return StepResult(out=out.to(q.dtype), certified_leakage=leak, certified_error=err, gap=gap, candidates=cand,
                      certified=err <= tol, fell_back=fell_back,
                      Kc_used=torch.tensor([[c.numel() for c in row] for row in cands], device=q.device),
                      summaries_scored=max(shards.local.length(s) for s in ids), path="torch")

def cp_fused_step(plan, q: torch.Tensor, group=None) -> MergedResult:
    """The context-parallel certified step on the fused kernels, local selection (``fused_terms``):
    this rank's packed state for ``plan`` (``sketch_plan.plan_sketch_step`` on ``shards.local``, every
    shard ≥ Kc tokens) and q (B, Hq, D), one ``all_gather``, the merge and the certificate. No host
    synchronisation besides the collective; no policy (``cp_certified_decode`` has them)."""
    return certificate(merge(all_gather_states(fused_shard_state(plan, q), group)))
