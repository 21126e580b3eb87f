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

(``Z_out`` relative to the candidates' max m is then e^{lse_out − m}: no second pass over the bounds.)

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

from dataclasses import dataclass

import torch

from .selection import FORCED_ORDERABLE, INVALID_KEY
from .summaries import node_counts


@dataclass
class Routed:
    pages: torch.Tensor      # (B, Hq, W) routed logical pages ascending; NP where not ok
    ok: torch.Tensor         # (B, Hq, W) bool
    lse_out: torch.Tensor    # (B, Hq) log of the excluded blocks' exp-mass bound (absolute)
    ub_out: torch.Tensor     # (B, Hq) largest excluded bound (−inf if none)
    vmax_out: torch.Tensor   # (B, Hq) largest excluded value norm (0 if none)
    scored: int              # summaries scored per query head (routing cost)


def forced_blocks(plan, level: int, nodes: torch.Tensor) -> torch.Tensor:
    span = plan.F ** level if level else 1
    npg = (plan.lens + plan.S - 1) // plan.S
    last = ((npg - 1) // span)[:, None, None]
    return (nodes * span < plan.sink_pages) | (nodes == last)


def route(plan, q32: torch.Tensor, cache, score_blocks) -> Routed:
    B, Hq, F, S, dev = plan.B, plan.Hq, plan.F, plan.S, q32.device
    npg = (plan.lens + S - 1) // S
    top = plan.L - 1
    n_top = plan.level_size(top)
    nodes = torch.arange(n_top, device=dev)[None, None, :].expand(B, Hq, -1)
    ok_parent = None
    lse = torch.full((B, Hq), float("-inf"), device=dev)
    ub_out = torch.full((B, Hq), float("-inf"), device=dev)
    vmax_out = torch.zeros((B, Hq), device=dev)
    scored = 0
    for level in range(top, -1, -1):
        span = F ** level if level else 1
        n_nodes = ((npg + span - 1) // span)[:, None, None]
        valid = nodes < n_nodes
        if ok_parent is not None:
            valid = valid & ok_parent
        keys, ub, vn = score_blocks(plan, q32, cache, level, nodes, valid, forced_blocks(plan, level, nodes))
        scored += nodes.shape[-1]
        Wl = min(plan.W, nodes.shape[-1])
        vals, pos = torch.topk(keys, Wl, dim=-1, sorted=True)
        n_forced = ((vals >> 32) == FORCED_ORDERABLE).sum(-1, keepdim=True)
        ok = (vals != INVALID_KEY) & (torch.arange(Wl, device=dev) < n_forced + plan.P)
        kept_mask = torch.zeros_like(valid)
        kept_mask.scatter_(-1, pos, ok)
        dropped = valid & ~kept_mask
        n_tok = node_counts(plan.lens[:, None, None], nodes, S * span).float()
        log_u = torch.where(dropped, torch.log(n_tok.clamp(min=1)) + ub, float("-inf"))
        lse = torch.logaddexp(lse, torch.logsumexp(log_u, dim=-1))
        ub_out = torch.maximum(ub_out, torch.where(dropped, ub, float("-inf")).amax(-1))
        vmax_out = torch.maximum(vmax_out, torch.where(dropped, vn, 0.0).amax(-1))
        kept = torch.where(ok, torch.gather(nodes, -1, pos), plan.level_size(level))
        kept, order = torch.sort(kept, dim=-1)
        ok = torch.gather(ok, -1, order)
        if level == 0:
            return Routed(pages=kept, ok=ok, lse_out=lse, ub_out=ub_out, vmax_out=vmax_out, scored=scored)
        nodes = (kept[..., :, None] * F + torch.arange(F, device=dev)).reshape(B, Hq, -1)
        ok_parent = ok[..., :, None].expand(-1, -1, -1, F).reshape(B, Hq, -1)
    raise AssertionError("unreachable")
