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


def dense_partial(Q: torch.Tensor, K: torch.Tensor, Vv: torch.Tensor, scale: float) -> torch.Tensor:
    """Packed (Hq, 2 + Dv) state [m, l, o] of queries Q (Hq, D) over keys K (Hkv, T, D) and values
    Vv (Hkv, T, Dv); T may be 0 (m = −inf, l = 0, o = 0)."""
    Hq, D = Q.shape
    Hkv, T, Dv = Vv.shape
    G = Hq // Hkv
    if T == 0:
        out = torch.zeros(Hq, 2 + Dv, dtype=torch.float64, device=Q.device)
        out[:, 0] = -math.inf
        return out
    if Q.is_cuda and K.dtype in (torch.bfloat16, torch.float16):
        o, lse = torch.ops.aten._scaled_dot_product_flash_attention(
            Q.to(K.dtype).view(1, Hkv, G, D), K[None], Vv[None], scale=scale)[:2]
        m, l, o = lse.reshape(Hq).double(), torch.ones(Hq, dtype=torch.float64, device=Q.device), o.reshape(Hq, Dv)
    else:
        s = torch.bmm(K.double(), Q.double().view(Hkv, G, D).transpose(1, 2)).transpose(1, 2).reshape(Hq, T) * scale
        m = s.amax(-1)
        w = torch.exp(s - m[:, None]).view(Hkv, G, T)
        l, o = w.sum(-1).reshape(Hq), torch.bmm(w, Vv.double()).reshape(Hq, Dv)
    return torch.cat([m[:, None], l[:, None], o.double()], -1)


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
        parts.append(dense_partial(q[b], K.permute(1, 0, 2), Vv.permute(1, 0, 2), sc))
    st = all_gather_states(torch.stack(parts), group)
    _, l, o = merge_softmax(st[..., 0], st[..., 1], st[..., 2:])
    return (o / l[..., None]).to(q.dtype)
