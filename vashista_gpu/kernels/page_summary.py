"""Triton kernel: recompute the summaries of touched pages after an append.

For page p with n_p valid slots and KV head h it computes, over its valid tokens j:
    kmin[p,h,d] = min_j k_j[d],  kmax[p,h,d] = max_j k_j[d],  kmean[p,h,d] = (1/n_p) Σ_j k_j[d],
    vnorm[p,h]  = max_j ‖v_j‖₂.
One program per (touched page, head): reads the page's ≤ S keys and values once.

Example (runs under TRITON_INTERPRET=1 on CPU)::

    cache = TorchPagedKVCache(4, 2, 8, dtype=torch.float32, backend="triton")
    s = cache.add_sequence(); cache.append(s, torch.randn(5, 2, 8), torch.randn(5, 2, 8))
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

__all__ = ["page_summary"]


@triton.jit
def _page_summary_kernel(k_ptr, v_ptr, pages_ptr, counts_ptr, kmin_ptr, kmax_ptr, kmean_ptr, vnorm_ptr,
                         H, S, D, DV,
                         BS: tl.constexpr, BD: tl.constexpr, BDV: tl.constexpr, KEYS: tl.constexpr):
    i = tl.program_id(0)
    h = tl.program_id(1)
    page = tl.load(pages_ptr + i).to(tl.int64)
    n = tl.load(counts_ptr + i)
    rows = tl.arange(0, BS)
    cols = tl.arange(0, BD)
    rmask = rows < n
    base = (page * H + h) * S
    if KEYS:                                  # False: a cache without key summaries (vnorm only)
        kmask = rmask[:, None] & (cols[None, :] < D)
        k = tl.load(k_ptr + (base + rows[:, None]) * D + cols[None, :], mask=kmask, other=0.0).to(tl.float32)
        kmin = tl.min(tl.where(kmask, k, float("inf")), axis=0)
        kmax = tl.max(tl.where(kmask, k, float("-inf")), axis=0)
        kmean = tl.div_rn(tl.sum(k, axis=0), n.to(tl.float32))   # IEEE division: '/' is approximate on GPU
        out = (page * H + h) * D + cols
        cmask = cols < D
        tl.store(kmin_ptr + out, kmin.to(kmin_ptr.dtype.element_ty), mask=cmask)
        tl.store(kmax_ptr + out, kmax.to(kmax_ptr.dtype.element_ty), mask=cmask)
        tl.store(kmean_ptr + out, kmean, mask=cmask)
    vcols = tl.arange(0, BDV)
    vmask = rmask[:, None] & (vcols[None, :] < DV)
    v = tl.load(v_ptr + (base + rows[:, None]) * DV + vcols[None, :], mask=vmask, other=0.0).to(tl.float32)
    norms = tl.sqrt_rn(tl.sum(v * v, axis=1))
    tl.store(vnorm_ptr + page * H + h, tl.max(tl.where(rmask, norms, 0.0), axis=0))


def page_summary(cache, pages: torch.Tensor, counts: torch.Tensor) -> None:
    """Launch over the touched physical ``pages`` (int32) with their valid-slot ``counts`` (int32)."""
    n = pages.numel()
    if n == 0:
        return
    H, S, D, Dv = cache.n_kv_heads, cache.page_size, cache.head_dim, cache.value_dim
    keys = cache.kmin is not None
    kmin, kmax, kmean = (cache.kmin, cache.kmax, cache.kmean) if keys else (cache.vnorm,) * 3   # unread
    _page_summary_kernel[(n, H)](
        cache.k_pages, cache.v_pages, pages, counts, kmin, kmax, kmean, cache.vnorm,
        H, S, D, Dv,
        BS=triton.next_power_of_2(S), BD=triton.next_power_of_2(D), BDV=triton.next_power_of_2(Dv), KEYS=keys)
