"""Triton kernel: exact scores of the routed pages' tokens, s_j = scale·⟨q, k_j⟩, with tie-rule keys
on the logical token index (page·S + slot). Output layout (B, Hq, W·S): routed page w, slot t at w·S+t.
Slots past the sequence's end, and routing slots left unused, get s = −inf and the invalid key.

One program per (batch row, query head, BW routed pages): a (BW·S) × D tile of keys gathered through
the page table (K is indexed per KV head, never repeated for GQA).
"""
from __future__ import annotations

import triton
import triton.language as tl

from .keys import tie_key

__all__ = ["token_scores"]


@triton.jit
def _token_scores_kernel(q_ptr, pages_ptr, ok_ptr, seq_ptr, lens_ptr, table_ptr, k_ptr,
                         s_ptr, keys_ptr,
                         W, Hq, Hkv, D, S, table_stride, scale,
                         G: tl.constexpr, BW: tl.constexpr, BS: tl.constexpr, BD: tl.constexpr):
    pid = tl.program_id(0)
    tile = tl.program_id(1)
    b = pid // Hq
    h = pid % Hq
    kvh = h // G
    r = tl.arange(0, BW * BS)
    wi = tile * BW + r // BS
    slot = r % BS
    cols = tl.arange(0, BD)
    in_w = (wi < W) & (slot < S)
    seq = tl.load(seq_ptr + b).to(tl.int64)
    L = tl.load(lens_ptr + b).to(tl.int64)
    page = tl.load(pages_ptr + pid * W + wi, mask=wi < W, other=0).to(tl.int64)
    ok = tl.load(ok_ptr + pid * W + wi, mask=wi < W, other=0) != 0
    tok = page * S + slot
    valid = in_w & ok & (tok < L)
    phys = tl.load(table_ptr + seq * table_stride + page, mask=valid, other=0).to(tl.int64)
    row = ((phys * Hkv + kvh) * S + slot) * D
    k = tl.load(k_ptr + row[:, None] + cols[None, :], mask=valid[:, None] & (cols[None, :] < D), other=0.0)
    q = tl.load(q_ptr + pid * D + cols, mask=cols < D, other=0.0)
    s = tl.sum(k.to(tl.float32) * q[None, :], axis=1) * scale
    s = tl.where(valid, s, float("-inf"))
    out = pid * W * S + wi * S + slot
    tl.store(s_ptr + out, s, mask=in_w)
    tl.store(keys_ptr + out, tie_key(s, tok, valid, tok < 0), mask=in_w)


def token_scores(q32, pages, ok, seq_ids, lens, block_table, k_pages, s, keys, *, Hkv: int, D: int, S: int,
                 scale: float, G: int) -> None:
    """Launch the exact scoring of the routed pages' tokens: ``q32`` (B, Hq, D) float32, ``pages``
    (B, Hq, W) logical pages and ``ok`` (B, Hq, W) int8 validity; writes ``s`` (float32) and ``keys``
    (int64), (B, Hq, W·S), preallocated. Grid (B·Hq, ⌈W/BW⌉) with BW pages per program (BW·S ≤ 64
    tokens, at least one page).

    Bytes moved per query head: W·S key rows (W·S·D·itemsize, gathered through the page table) and
    12·W·S B written.
    """
    B, Hq, W = pages.shape
    BS = triton.next_power_of_2(S)
    BW = max(1, min(triton.next_power_of_2(W), 64 // BS))
    _token_scores_kernel[(B * Hq, triton.cdiv(W, BW))](
        q32, pages, ok, seq_ids, lens, block_table, k_pages, s, keys,
        W, Hq, Hkv, D, S, block_table.stride(0), scale,
        G=G, BW=BW, BS=BS, BD=triton.next_power_of_2(D))
