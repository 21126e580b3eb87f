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

Example (see ``triton_path.score_blocks`` for the launcher)::

    keys, ub, vn = score_blocks(plan, q32, cache, level=0, parent=None)
"""
from __future__ import annotations

import triton
import triton.language as tl

from .keys import tie_key


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
