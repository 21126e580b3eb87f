"""Dense decode baseline over a ``TorchPagedKVCache``: PyTorch SDPA (flash / memory-efficient kernels
on GPU).

GQA without repeating K/V (``sdpa_decode``). Solves, for each batch row and query head, a = argmax_{a∈Δ_T} ⟨s, a⟩ + H(a) = softmax(s),
s_j = scale·⟨q, k_j⟩ over all T tokens of the sequence, and returns o = Vᵀa.

Example::

    >>> import torch
    >>> from vashista_gpu.paged_cache import TorchPagedKVCache
    >>> c = TorchPagedKVCache(4, 1, 8, num_pages=8, max_seqs=1, dtype=torch.float32)
    >>> s = c.add_sequence(); c.append(s, torch.randn(10, 1, 8), torch.randn(10, 1, 8))
    >>> dense_decode(torch.randn(1, 2, 8), c, [s]).shape      # 2 query heads share 1 KV head
    torch.Size([1, 2, 8])
"""
from __future__ import annotations

import torch
import torch.nn.functional as Fn

from vashista_core.errors import VashistaInputError

from . import validate as V

__all__ = ["dense_decode", "sdpa_decode"]


def sdpa_decode(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float) -> torch.Tensor:
    """q (B, Hq, D), k (B, Hkv, T, D), v (B, Hkv, T, Dv) -> (B, Hq, Dv) by SDPA.

    GQA without repeating K/V: the G query heads of a KV head become G query *positions* of one head
    (no causal mask in decode, so this is exactly grouped attention), which every SDPA backend —
    flash included — supports.
    """
    B, Hq, D = q.shape
    Hkv = k.shape[1]
    o = Fn.scaled_dot_product_attention(q.view(B, Hkv, Hq // Hkv, D), k, v, scale=scale)
    return o.reshape(B, Hq, v.shape[-1])


def dense_decode(q: torch.Tensor, cache, seq_ids, *, scale: float | None = None,
                 heads: torch.Tensor | None = None) -> torch.Tensor:
    """Exact attention of q (B, Hq, D) over each sequence's whole cache; returns (B, Hq, Dv) in q's dtype.

    Sequences of different lengths are attended one by one (no padding mask needed).
    """
    q, ids = V.batch_query(q, cache, seq_ids)
    if q.shape[1] % cache.n_kv_heads:
        raise VashistaInputError("q", f"has {q.shape[1]} query heads, not a multiple of the cache's {cache.n_kv_heads} KV heads")
    sc = cache.head_dim ** -0.5 if scale is None else V.positive_scalar("scale", scale)
    out = torch.empty(q.shape[0], q.shape[1], cache.value_dim, dtype=q.dtype, device=q.device)
    for b, s in enumerate(ids):
        if cache.length(s) == 0:
            raise VashistaInputError("cache", f"sequence {s} is empty (no tokens to attend to)")
        k, v = cache.gather(s)
        k = k.permute(1, 0, 2)[None].to(q.dtype)
        v = v.permute(1, 0, 2)[None].to(q.dtype)
        out[b] = sdpa_decode(q[b:b + 1], k, v, sc)[0]
    return out
