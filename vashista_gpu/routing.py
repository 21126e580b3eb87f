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

from .selection import FORCED_ORDERABLE, INVALID_KEY


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


def route(plan, q32: torch.Tensor, cache, score_blocks, fold=fold_dropped) -> Routed:
    """Descend the summary levels; ``score_blocks(plan, q32, cache, level, nodes, parent_ok)``
    returns (keys, ub, vnorm) for ``nodes`` (B, Hq, M); ``fold`` is ``fold_dropped`` or its kernel."""
    B, Hq, F, S, dev = plan.B, plan.Hq, plan.F, plan.S, q32.device
    top = plan.L - 1
    nodes = torch.arange(plan.level_size(top), device=dev)[None, None, :].expand(B, Hq, -1)
    ok_parent = None
    lse = torch.full((B, Hq), float("-inf"), device=dev)
    ub_out = torch.full((B, Hq), float("-inf"), device=dev)
    vmax_out = torch.zeros((B, Hq), device=dev)
    scored = 0
    for level in range(top, -1, -1):
        keys, ub, vn = score_blocks(plan, q32, cache, level, nodes, ok_parent)
        scored += nodes.shape[-1]
        Wl = min(plan.W, nodes.shape[-1])
        vals, pos = torch.topk(keys, Wl, dim=-1, sorted=True)
        n_keep = ((vals >> 32) == FORCED_ORDERABLE).sum(-1, keepdim=True) + plan.P
        rank = torch.arange(Wl, device=dev)
        ok = (vals != INVALID_KEY) & (rank < n_keep)
        if plan.certify:
            thr = torch.gather(vals, -1, (n_keep - 1).clamp(max=Wl - 1))
            thr = torch.where(n_keep > Wl, INVALID_KEY, thr)         # everything kept: nothing dropped
            l_lse, l_ub, l_vn = fold(plan, level, keys, thr, ub, vn)
            lse = torch.logaddexp(lse, l_lse)
            ub_out = torch.maximum(ub_out, l_ub)
            vmax_out = torch.maximum(vmax_out, l_vn)
        kept = torch.where(ok, torch.gather(nodes, -1, pos), plan.level_size(level))
        kept, order = torch.sort(kept, dim=-1)
        ok = torch.gather(ok, -1, order)
        if level == 0:
            return Routed(pages=kept, ok=ok, lse_out=lse, ub_out=ub_out, vmax_out=vmax_out, scored=scored)
        nodes = (kept[..., :, None] * F + torch.arange(F, device=dev)).reshape(B, Hq, -1)
        ok_parent = ok[..., :, None].expand(-1, -1, -1, F).reshape(B, Hq, -1)
    raise AssertionError("unreachable")
