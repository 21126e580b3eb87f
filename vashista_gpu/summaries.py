"""Summary maintenance for ``TorchPagedKVCache``: page level (kernel or torch) and hierarchy levels.

Page summaries are defined in ``kernels/page_summary.py``. Hierarchy node j at level l ≥ 1 of a
sequence has children j·F .. j·F+F−1 at level l−1 (level 0 = logical pages) and summarises them as
one box:  kmin = min of the children's kmin, kmax = max of kmax, kmean = token-count-weighted mean of
kmean, vnorm = max of vnorm — so UB_node(q) ≥ UB_child(q) ≥ ⟨q, k⟩ for every token below it.
Touched nodes are recomputed from their ≤ F children (a small torch op per level).

Example::

    >>> import torch
    >>> from vashista_gpu.paged_cache import TorchPagedKVCache
    >>> c = TorchPagedKVCache(2, 1, 4, fanout=2, num_pages=8, max_seqs=1, dtype=torch.float32, backend="torch")
    >>> s = c.add_sequence(); c.append(s, torch.arange(20.).view(5, 1, 4), torch.ones(5, 1, 4))
    >>> c.levels[0]["kmax"][s, :2, 0, 0].tolist()   # pages {0,1} hold tokens 0..3, page {2} token 4
    [12.0, 16.0]
"""
from __future__ import annotations

import torch

__all__ = ["level_fields", "node_counts", "update_levels", "update_page_summaries"]


def update_page_summaries(cache, pages: torch.Tensor, counts: torch.Tensor) -> None:
    """Recompute kmin/kmax/kmean/vnorm of physical ``pages`` holding ``counts`` valid tokens."""
    if pages.numel() == 0 or cache.vnorm is None:                  # no summaries kept (dense-only cache)
        return
    if cache.backend == "triton":
        from .kernels.page_summary import page_summary
        page_summary(cache, pages, counts)
        return
    p = pages.long()
    v = cache.v_pages[p].float()
    valid = (torch.arange(cache.page_size, device=v.device)[None, :] < counts[:, None].long())[:, None, :, None]
    cache.vnorm[p] = torch.where(valid[..., 0], v.norm(dim=-1), 0.0).amax(dim=-1)
    if cache.kmin is None:                                         # a cache without key summaries
        return
    k = cache.k_pages[p].float()                                   # (n, H, S, D)
    cache.kmin[p] = torch.where(valid, k, float("inf")).amin(dim=2).to(cache.dtype)
    cache.kmax[p] = torch.where(valid, k, float("-inf")).amax(dim=2).to(cache.dtype)
    cache.kmean[p] = torch.where(valid, k, 0.0).sum(dim=2) / counts.float()[:, None, None]


def node_counts(lens: torch.Tensor, nodes: torch.Tensor, span_tokens: int) -> torch.Tensor:
    """Tokens under each node of ``span_tokens`` tokens: clamp(len − node·span, 0, span)."""
    return (lens - nodes * span_tokens).clamp(0, span_tokens)


def level_fields(cache, level: int, seqs: torch.Tensor, nodes: torch.Tensor):
    """(kmin, kmax, kmean, vnorm) of ``nodes`` (n, m) of sequences ``seqs`` (n,) at ``level``."""
    if level == 0:
        phys = cache.block_table[seqs[:, None], nodes.clamp(0, cache.max_pages_per_seq - 1)].long()
        return cache.kmin[phys], cache.kmax[phys], cache.kmean[phys], cache.vnorm[phys]
    L = cache.levels[level - 1]
    n = L["kmin"].shape[1]
    idx = nodes.clamp(0, n - 1)
    s = seqs[:, None]
    return L["kmin"][s, idx], L["kmax"][s, idx], L["kmean"][s, idx], L["vnorm"][s, idx]


def update_levels(cache, seqs: torch.Tensor, pages: torch.Tensor) -> None:
    """Recompute, level by level, every hierarchy node above the touched (seq, logical page) pairs."""
    F, S, dev = cache.fanout, cache.page_size, cache.device
    width = cache.max_pages_per_seq
    seqs, node = seqs.long(), pages.long()
    for level in range(1, len(cache.levels) + 1):
        key = torch.unique(seqs * width + node // F)
        seqs, node = key // width, key % width
        child = node[:, None] * F + torch.arange(F, device=dev)[None, :]            # (n, F)
        lens = cache.seq_lens[seqs].long()[:, None]
        cnt = node_counts(lens, child, S * F ** (level - 1)).float()
        valid = cnt > 0
        kmin, kmax, kmean, vnorm = level_fields(cache, level - 1, seqs, child)
        m = valid[:, :, None, None]
        L = cache.levels[level - 1]
        L["kmin"][seqs, node] = torch.where(m, kmin.float(), float("inf")).amin(1).to(cache.dtype)
        L["kmax"][seqs, node] = torch.where(m, kmax.float(), float("-inf")).amax(1).to(cache.dtype)
        w = cnt[:, :, None, None]
        L["kmean"][seqs, node] = (torch.where(m, kmean, 0.0) * w).sum(1) / w.sum(1)
        L["vnorm"][seqs, node] = torch.where(valid[:, :, None], vnorm, 0.0).amax(1)
