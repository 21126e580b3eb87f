"""Triton kernel: the routing pass over block summaries (pages, or hierarchy nodes) — one read of each
summary gives both what routing needs and what the certificate needs:

    ub_p    = scale · Σ_d max(q_d kmin_{p,d}, q_d kmax_{p,d})      (sound bound on scale·⟨q, k⟩, k ∈ p)
    score_p = ub_p (router "bound")  or  scale · ⟨q, kmean_p⟩ (router "mean")
    key_p   = tie-rule key of score_p (forced blocks — sink pages, newest page, their ancestors — on top)
    vnorm_p = max value norm of p.

Two launch shapes. *Shared blocks* (single level, or the top of the hierarchy: every query head of a
KV group scores the same blocks): one program per (batch row, KV head, tile of BM blocks) loads each
summary tile once and scores it for all G query heads of the group — GQA without re-reading.
*Per-head blocks* (lower hierarchy levels, where each head descends its own subtree): one program per
(batch row, query head, tile); candidate i is child i mod F of the parent level's kept block i div F
(read from the parent's kept list — the child ids are never materialised).

Example (``block_scores`` below is the launcher; ``triton_path.score_blocks`` calls it)::

    keys, ub, vn = score_blocks(plan, q32, cache, level=0, parent=None)
"""
from __future__ import annotations

import triton
import triton.language as tl

from .keys import tie_key

__all__ = ["block_scores"]


@triton.jit
def _block_scores_kernel(q_ptr, nodes_ptr, pvalid_ptr, seq_ptr, lens_ptr, table_ptr,
                         kmin_ptr, kmax_ptr, kmean_ptr, vn_ptr,
                         keys_ptr, ub_ptr, vout_ptr,
                         M, Hq, Hkv, D, S, span, n_lvl, table_stride, sink_pages, scale,
                         G: tl.constexpr, NH: tl.constexpr, FAN: tl.constexpr, PER_HEAD: tl.constexpr, LEVEL0: tl.constexpr,
                         MEAN: tl.constexpr, BM: tl.constexpr, BD: tl.constexpr):
    pid = tl.program_id(0)
    tile = tl.program_id(1)
    if PER_HEAD:
        b = pid // Hq
        h0 = pid % Hq
        kvh = h0 // G
    else:
        b = pid // Hkv
        kvh = pid % Hkv
        h0 = kvh * G
    rows = tile * BM + tl.arange(0, BM)
    cols = tl.arange(0, BD)
    in_m = rows < M
    seq = tl.load(seq_ptr + b).to(tl.int64)
    L = tl.load(lens_ptr + b).to(tl.int64)
    npg = (L + S - 1) // S
    n_nodes = (npg + span - 1) // span
    if PER_HEAD:
        # children of the parent level's kept blocks: candidate i is child i % FAN of kept[i // FAN]
        par = rows // FAN
        WP = M // FAN
        pk = tl.load(nodes_ptr + (b * Hq + h0) * WP + par, mask=in_m, other=0).to(tl.int64)
        pv = tl.load(pvalid_ptr + (b * Hq + h0) * WP + par, mask=in_m, other=0) != 0
        node = pk * FAN + (rows % FAN)
        valid = in_m & pv & (node < n_nodes)
    else:
        node = rows.to(tl.int64)
        valid = in_m & (node < n_nodes)
    forced = (node * span < sink_pages) | (node == (npg - 1) // span)
    if LEVEL0:
        blk = tl.load(table_ptr + seq * table_stride + node, mask=valid, other=0).to(tl.int64)
    else:
        blk = seq * n_lvl + tl.where(valid, node, 0)
    row_base = (blk * Hkv + kvh) * D
    m2 = valid[:, None] & (cols[None, :] < D)
    kmin = tl.load(kmin_ptr + row_base[:, None] + cols[None, :], mask=m2, other=0.0).to(tl.float32)
    kmax = tl.load(kmax_ptr + row_base[:, None] + cols[None, :], mask=m2, other=0.0).to(tl.float32)
    if MEAN:
        kmean = tl.load(kmean_ptr + row_base[:, None] + cols[None, :], mask=m2, other=0.0).to(tl.float32)
    vn = tl.load(vn_ptr + blk * Hkv + kvh, mask=valid, other=0.0)
    for g in tl.static_range(NH):
        h = h0 + g
        q = tl.load(q_ptr + (b * Hq + h) * D + cols, mask=cols < D, other=0.0)
        ub = tl.sum(tl.maximum(q[None, :] * kmin, q[None, :] * kmax), axis=1) * scale
        if MEAN:
            score = tl.sum(q[None, :] * kmean, axis=1) * scale
        else:
            score = ub
        out = (b * Hq + h) * M + rows
        tl.store(keys_ptr + out, tie_key(score, node, valid, forced), mask=in_m)
        tl.store(ub_ptr + out, ub, mask=in_m)
        tl.store(vout_ptr + out, vn, mask=in_m)


def block_scores(q32, nodes, pvalid, seq_ids, lens, block_table, kmin, kmax, kmean, vnorm, keys, ub, vn, *,
                 Hkv: int, D: int, S: int, span: int, n_lvl: int, sink_pages: int, scale: float, G: int, F: int,
                 per_head: bool, level0: bool, mean: bool, block: int = 32, num_warps: int = 4) -> None:
    """Launch the routing pass of one level into ``keys`` (int64), ``ub``, ``vn`` (float32), all
    (B, Hq, M) preallocated. ``q32`` (B, Hq, D) float32; ``nodes``/``pvalid`` (B, Hq, M/F) the parent
    level's kept blocks when ``per_head`` (else unused: pass any tensor); ``kmin``/``kmax``/``kmean``/
    ``vnorm`` the level's summaries (``span`` pages per block, ``n_lvl`` blocks per sequence above
    level 0). Grid: (B·Hkv, ⌈M/BM⌉) shared blocks, (B·Hq, ⌈M/BM⌉) per head; BM = min(block, M rounded
    up to a power of two).

    Bytes moved: each block's summary — kmin, kmax, kmean (3·D float32; ``mean`` reads kmean only)
    and vnorm (4 B) — once per KV head (shared) or per query head (per head), plus 16 B written per
    (query head, block): about B·Hkv·M·(12·D + 4) + 16·B·Hq·M bytes for a shared level.
    """
    B, Hq, M = keys.shape
    BM = min(block, triton.next_power_of_2(M))
    grid = (B * (Hq if per_head else Hkv), triton.cdiv(M, BM))
    _block_scores_kernel[grid](
        q32, nodes, pvalid, seq_ids, lens, block_table, kmin, kmax, kmean, vnorm, keys, ub, vn,
        M, Hq, Hkv, D, S, span, n_lvl, block_table.stride(0), sink_pages, scale,
        G=G, NH=1 if per_head else G, FAN=max(F, 1), PER_HEAD=per_head, LEVEL0=level0,
        MEAN=mean, BM=BM, BD=triton.next_power_of_2(D), num_warps=num_warps)
