"""Page routing of a planned step (SPEC 2 step 1), shared by the torch and Triton paths.

At each summary level, from the top of the hierarchy down to the pages (or the pages alone), the
candidate blocks of every (batch row, query head) are scored by a backend's ``score_blocks``
(torch: ``torch_path.score_blocks``; Triton: ``kernels/block_scores.py``), which returns in ONE pass
over the summaries

    keys  : int64 tie-rule keys of the router score (UB or mean-key score; forced blocks on top),
    ub    : scale·UB_p(q) = scale·Σ_d max(q_d kmin_{p,d}, q_d kmax_{p,d})  (the certificate's bound),
    vnorm : the block's max value norm.

Kept = forced blocks (sink pages, the newest page, or their ancestors) ∪ the P best others — the
reference's rule (``vashista_ref.routing``), with its tie rule. Blocks dropped at any level are folded
at once into the certificate's excluded terms, which do not depend on the candidates:

    lse_out = log Σ_{dropped p} n_p e^{scale·UB_p},  ub_out = max scale·UB_p,  vmax_out = max vnorm_p.

The dropped blocks are exactly the valid ones whose key falls below the last kept key, so folding them
is one pass over (key, ub, vnorm) (``fold_dropped``; a kernel on the Triton path). ``Z_out`` relative
to the candidates' max m is then e^{lse_out − m}: no second pass over the summaries.

Example::

    >>> import torch
    >>> from vashista_gpu.paged_cache import TorchPagedKVCache
    >>> from vashista_gpu.plan import plan_decode
    >>> from vashista_gpu.torch_path import score_blocks
    >>> c = TorchPagedKVCache(2, 1, 4, num_pages=8, max_seqs=1, dtype=torch.float32)
    >>> s = c.add_sequence(); c.append(s, torch.randn(9, 1, 4), torch.randn(9, 1, 4))
    >>> plan = plan_decode(c, [s], 1, P=1, Kc=4)
    >>> r = route(plan, torch.randn(1, 1, 4), c, score_blocks)
    >>> r.pages.shape, int(r.ok.sum())       # sink 0, newest 4, one more
    (torch.Size([1, 1, 3]), 3)
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from .selection import FORCED_ORDERABLE, INVALID_KEY, key_index

__all__ = ["Routed", "child_blocks", "fold_dropped", "forced_blocks", "route", "select_torch", "valid_blocks"]


@dataclass
class Routed:
    pages: torch.Tensor      # (B, Hq, W) routed logical pages ascending; NP where not ok
    ok: torch.Tensor         # (B, Hq, W) bool
    lse_out: torch.Tensor    # (B, Hq) log of the excluded blocks' exp-mass bound (absolute)
    ub_out: torch.Tensor     # (B, Hq) largest excluded bound (−inf if none)
    vmax_out: torch.Tensor   # (B, Hq) largest excluded value norm (0 if none)
    scored: int              # summaries scored per query head (routing cost)


def forced_blocks(plan, level: int, nodes: torch.Tensor) -> torch.Tensor:
    """Blocks holding a sink page or the newest page (always kept)."""
    span = plan.F ** level if level else 1
    npg = (plan.lens + plan.S - 1) // plan.S
    last = ((npg - 1) // span)[:, None, None]
    return (nodes * span < plan.sink_pages) | (nodes == last)


def valid_blocks(plan, level: int, nodes: torch.Tensor, parent_ok) -> torch.Tensor:
    """Blocks that exist for the row's sequence (and whose parent was kept)."""
    span = plan.F ** level if level else 1
    npg = (plan.lens + plan.S - 1) // plan.S
    valid = nodes < ((npg + span - 1) // span)[:, None, None]
    return valid if parent_ok is None else valid & parent_ok


def fold_dropped(plan, level, keys, thr, ub, vn):
    """Certificate terms of the dropped blocks of one level, i.e. the valid blocks whose key is below
    the last kept key ``thr`` (B, Hq, 1). A dropped block never holds the newest (possibly partial)
    page — that one is forced — so it holds exactly S·F^level tokens:
    returns (log Σ n e^{ub}, max ub, max vnorm) over them."""
    span = plan.F ** level if level else 1
    dropped = (keys < thr) & (keys != INVALID_KEY)
    ubd = torch.where(dropped, ub, float("-inf"))
    lse = math.log(plan.S * span) + torch.logsumexp(ubd, dim=-1)
    return lse, ubd.amax(-1), torch.where(dropped, vn, 0.0).amax(-1)


def select_torch(plan, level, keys, ub, vn, Wl, acc, fold=fold_dropped):
    """Keep forced ∪ top-P of one level's blocks (tie-rule keys), fold the dropped ones into ``acc``
    (lse, ub_out, vmax_out); returns (kept ids ascending, ``level_size`` where unused; ok mask)."""
    dev = keys.device
    vals, _ = torch.topk(keys, Wl, dim=-1, sorted=True)
    n_keep = ((vals >> 32) == FORCED_ORDERABLE).sum(-1, keepdim=True) + plan.P
    ok = (vals != INVALID_KEY) & (torch.arange(Wl, device=dev) < n_keep)
    if plan.certify:
        thr = torch.gather(vals, -1, (n_keep - 1).clamp(max=Wl - 1))
        thr = torch.where(n_keep > Wl, INVALID_KEY, thr)         # everything kept: nothing dropped
        l_lse, l_ub, l_vn = fold(plan, level, keys, thr, ub, vn)
        acc["lse"] = torch.logaddexp(acc["lse"], l_lse)
        acc["ub"] = torch.maximum(acc["ub"], l_ub)
        acc["vmax"] = torch.maximum(acc["vmax"], l_vn)
    kept = torch.sort(torch.where(ok, key_index(vals), plan.level_size(level)), dim=-1).values
    return kept, kept < plan.level_size(level)


def child_blocks(plan, parent) -> tuple[torch.Tensor, torch.Tensor]:
    """Children (ids, parent-kept mask) of the kept blocks one level up; (B, Hq, Wl·F)."""
    kept, ok = parent
    B, Hq, F = kept.shape[0], kept.shape[1], plan.F
    nodes = (kept[..., :, None] * F + torch.arange(F, device=kept.device)).reshape(B, Hq, -1)
    return nodes, ok.bool()[..., :, None].expand(-1, -1, -1, F).reshape(B, Hq, -1)


def route(plan, q32: torch.Tensor, cache, score_blocks, select=select_torch) -> Routed:
    """Descend the summary levels. ``score_blocks(plan, q32, cache, level, parent)`` returns (keys, ub,
    vnorm) of the level's candidate blocks — all blocks at the top (``parent`` None), else the children
    of ``parent = (kept, ok)``; ``select`` keeps forced ∪ top-P and folds the dropped blocks."""
    B, Hq, dev = plan.B, plan.Hq, q32.device
    acc = dict(lse=torch.full((B, Hq), float("-inf"), device=dev),
               ub=torch.full((B, Hq), float("-inf"), device=dev),
               vmax=torch.zeros((B, Hq), device=dev))
    parent, scored = None, 0
    for level in range(plan.L - 1, -1, -1):
        keys, ub, vn = score_blocks(plan, q32, cache, level, parent)
        scored += keys.shape[-1]
        kept, ok = select(plan, level, keys, ub, vn, min(plan.W, keys.shape[-1]), acc)
        if level == 0:
            return Routed(pages=kept, ok=ok.bool(), lse_out=acc["lse"], ub_out=acc["ub"], vmax_out=acc["vmax"],
                          scored=scored)
        parent = (kept, ok)
    raise AssertionError("unreachable")
