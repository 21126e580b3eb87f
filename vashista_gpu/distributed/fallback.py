"""Distributed dense decode: exact attention over the whole (sharded) sequence. It is the fallback of
the context-parallel certified step (a query whose merged certificate exceeds the policy's tolerance)
and the baseline of benchmarks/cp_decode.py (dense context-parallel decode under the same sharding).

Each rank attends over its shard and returns the partial softmax state (m, l, o) per (row, head)
(``merge`` module doc); one ``all_gather`` of the packed (B, Hq, 2 + Dv) states and the same rescaling
merge give o / l on every rank. A rank attends

* on CUDA in a half-precision cache: with the flash kernel, whose log-sum-exp is the state's m (l = 1,
  o = the normalised shard output) — GQA as G query positions of one KV head, as ``dense.sdpa_decode``;
* otherwise: in float64 (scores, exponentials, sums), the reference for tests.
"""
from __future__ import annotations

import math

import torch

from vashista_core.errors import VashistaInputError

from .. import validate as V
from .merge import all_gather_states, merge_softmax

__all__ = ["cp_dense_decode", "dense_partial"]


def dense_partial(Q: torch.Tensor, K: torch.Tensor, Vv: torch.Tensor, scale: float) -> torch.Tensor:
    """Packed (B, Hq, 2 + Dv) float64 state [m, l, o] of queries Q (B, Hq, D) over keys K (B, Hkv, T, D)
    and values Vv (B, Hkv, T, Dv) (one length T for the batch); T may be 0 (m = −inf, l = 0, o = 0)."""
    B, Hq, D = Q.shape
    _, Hkv, T, Dv = Vv.shape
    G = Hq // Hkv
    if T == 0:
        out = torch.zeros(B, Hq, 2 + Dv, dtype=torch.float64, device=Q.device)
        out[..., 0] = -math.inf
        return out
    if Q.is_cuda and K.dtype in (torch.bfloat16, torch.float16):
        o, lse = torch.ops.aten._scaled_dot_product_flash_attention(
            Q.to(K.dtype).view(B, Hkv, G, D), K, Vv, scale=scale)[:2]
        m, l = lse.reshape(B, Hq).double(), torch.ones(B, Hq, dtype=torch.float64, device=Q.device)
        o = o.reshape(B, Hq, Dv)
    else:
        s = torch.matmul(Q.double().view(B, Hkv, G, D), K.double().transpose(-1, -2)) * scale   # (B, Hkv, G, T)
        m = s.amax(-1, keepdim=True)
        w = torch.exp(s - m)
        m, l, o = m.reshape(B, Hq), w.sum(-1).reshape(B, Hq), torch.matmul(w, Vv.double()).reshape(B, Hq, Dv)
    return torch.cat([m[..., None], l[..., None], o.double()], -1)


def cp_dense_decode(q: torch.Tensor, shards, seq_ids, *, scale: float | None = None, group=None) -> torch.Tensor:
    """Exact attention (B, Hq, Dv) in q's dtype of q (B, Hq, D) over each sequence's whole logical
    cache, sharded as ``shards`` (this rank's ``shard.ShardedCache``). A collective: every rank of
    ``group`` calls it with the same q and seq_ids."""
    q = V.tensor("q", q, ndim=3)
    local = shards.local
    ids = [int(s) for s in V.index_tensor("seq_ids", seq_ids).tolist()]
    if len(ids) != q.shape[0]:
        raise VashistaInputError("seq_ids", f"has {len(ids)} ids but q has batch size {q.shape[0]}")
    if q.shape[2] != local.head_dim or q.shape[1] % local.n_kv_heads:
        raise VashistaInputError("q", f"expected (B, a multiple of {local.n_kv_heads} heads, {local.head_dim}), "
                                      f"got {tuple(q.shape)}")
    for s in ids:
        if shards.total_length(s) == 0:
            raise VashistaInputError("seq_ids", f"sequence {s} is empty (no tokens to attend to)")
    sc = local.head_dim ** -0.5 if scale is None else V.positive_scalar("scale", scale)
    parts = []
    for b, s in enumerate(ids):
        K, Vv = local.gather(s)
        parts.append(dense_partial(q[b:b + 1], K.permute(1, 0, 2)[None], Vv.permute(1, 0, 2)[None], sc)[0])
    st = all_gather_states(torch.stack(parts), group)
    _, l, o = merge_softmax(st[..., 0], st[..., 1], st[..., 2:])
    return (o / l[..., None]).to(q.dtype)
