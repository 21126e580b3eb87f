"""Summary maintenance for ``TorchPagedKVCache``: page level (kernel or torch) and superpage level.

Page summaries are defined in ``kernels/page_summary.py``. A superpage j of sequence s covers the
logical pages [j·R, (j+1)·R) (R = ``pages_per_super``) and summarises them as one box:
    super_kmin = min over its pages of kmin,  super_kmax = max of kmax,
    super_kmean = count-weighted mean of kmean,  super_vnorm = max of vnorm,
so UB_super(q) ≥ UB_p(q) ≥ ⟨q, k⟩ for every token below it (the hierarchical router's bound).

Example::

    >>> import torch
    >>> from vashista_gpu.paged_cache import TorchPagedKVCache
    >>> c = TorchPagedKVCache(1, 4, page_size=2, pages_per_super=2, num_pages=8, max_seqs=1,
    ...                       dtype=torch.float32, backend="torch")
    >>> s = c.add_sequence(); c.append(s, torch.arange(20.).view(5, 1, 4), torch.ones(5, 1, 4))
    >>> c.super_kmax[s, :2, 0, 0].tolist()   # pages {0,1} hold tokens 0..3, page {2} token 4
    [12.0, 16.0]
"""
from __future__ import annotations

import torch


def update_page_summaries(cache, pages: torch.Tensor, counts: torch.Tensor) -> None:
    if pages.numel() == 0:
        return
    if cache.backend == "triton":
        from .kernels.page_summary import page_summary
        page_summary(cache, pages, counts)
        return
    p = pages.long()
    k = cache.k_pages[p].float()                                   # (n, H, S, D)
    v = cache.v_pages[p].float()
    valid = (torch.arange(cache.page_size, device=k.device)[None, :] < counts[:, None].long())[:, None, :, None]
    cache.kmin[p] = torch.where(valid, k, float("inf")).amin(dim=2).to(cache.dtype)
    cache.kmax[p] = torch.where(valid, k, float("-inf")).amax(dim=2).to(cache.dtype)
    cache.kmean[p] = torch.where(valid, k, 0.0).sum(dim=2) / counts.float()[:, None, None]
    norms = torch.where(valid[..., 0], v.norm(dim=-1), 0.0)       # (n, H, S)
    cache.vnorm[p] = norms.amax(dim=-1)


def update_super_summaries(cache, touched: list[tuple[int, int]]) -> None:
    """Recompute superpages ``(seq_id, super_index)`` from their pages' summaries (a small torch op)."""
    if not touched:
        return
    R, S = cache.pages_per_super, cache.page_size
    dev = cache.device
    seqs = torch.tensor([s for s, _ in touched], dtype=torch.long, device=dev)
    sup = torch.tensor([j for _, j in touched], dtype=torch.long, device=dev)
    lp = sup[:, None] * R + torch.arange(R, device=dev)[None, :]            # (n, R) logical pages
    npages = torch.tensor([cache.num_pages_of(s) for s, _ in touched], device=dev)
    lens = torch.tensor([cache.length(s) for s, _ in touched], device=dev)
    valid = lp < npages[:, None]
    phys = cache.page_table[seqs[:, None], lp.clamp(max=cache.max_pages_per_seq - 1)].long()
    cnt = (lens[:, None] - lp * S).clamp(min=0, max=S).float() * valid      # tokens per page
    m = valid[:, :, None, None]
    cache.super_kmin[seqs, sup] = torch.where(m, cache.kmin[phys].float(), float("inf")).amin(1).to(cache.dtype)
    cache.super_kmax[seqs, sup] = torch.where(m, cache.kmax[phys].float(), float("-inf")).amax(1).to(cache.dtype)
    w = cnt[:, :, None, None]
    cache.super_kmean[seqs, sup] = (torch.where(m, cache.kmean[phys], 0.0) * w).sum(1) / w.sum(1)
    cache.super_vnorm[seqs, sup] = torch.where(valid[:, :, None], cache.vnorm[phys], 0.0).amax(1)
