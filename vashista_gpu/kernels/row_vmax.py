"""Triton kernel: the certified step's max‖v‖ per query row from the page value norms, in one launch.

For batch row b (sequence ``seq[b]``, length n read on the device) and KV head h:

    vmax[b, h] = fl32( max(0, max_{logical pages p < P, p·S < n} vnorm[block_table[seq, p], h]) · factor ),

written to the G query rows b·Hq + h·G + g (g < G) of the output — the row → KV-head map of
``sketch_plan.plan_sketch_step`` (r = b·Hq + hq, KV head hq // G). The rounding ``factor`` is the
caller's (``sketch_plan.row_vmax`` owns the formula); the maximum is exact and the product is one
float32 multiplication by the float32 factor, as torch's ``tensor * float``, so the result is
bit-identical to the torch expression it replaces (~14 small ops per layer).

One program per (batch row, KV head) walks the row's P pages in blocks of ``BLOCK``.
Bytes moved per program: reads P·(4 + 4) (page-table entry, value norm) + 8; writes 4·G.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

__all__ = ["row_vmax_pages"]


@triton.jit
def _row_vmax_kernel(seq_ptr, bt_ptr, bt_stride, lens_ptr, vnorm_ptr, out_ptr, factor, P, S,
                     HKV: tl.constexpr, G: tl.constexpr, BLOCK: tl.constexpr, NB: tl.constexpr,
                     BG: tl.constexpr):
    b = tl.program_id(0)
    h = tl.program_id(1)
    seq = tl.load(seq_ptr + b).to(tl.int64)
    n = tl.load(lens_ptr + seq)
    offs = tl.arange(0, BLOCK)
    acc = tl.zeros((BLOCK,), dtype=tl.float32)
    nan = tl.zeros((BLOCK,), dtype=tl.int32)
    for c in range(NB):                        # NB = ⌈P/BLOCK⌉ constexpr (P is fixed by the plan)
        p = c * BLOCK + offs
        live = (p < P) & (p * S < n)
        page = tl.load(bt_ptr + seq * bt_stride + p, mask=live, other=0).to(tl.int64)
        x = tl.load(vnorm_ptr + page * HKV + h, mask=live, other=0.0)
        nan = nan | (x != x).to(tl.int32)
        acc = tl.maximum(acc, tl.where(x != x, 0.0, x))
    # a NaN norm makes the row's bound NaN (uncertified), as torch.amax propagates it
    vm = tl.where(tl.max(nan, axis=0) > 0, float("nan"), tl.max(acc, axis=0) * factor)
    g = tl.arange(0, BG)
    tl.store(out_ptr + b * (HKV * G) + h * G + g, tl.zeros((BG,), dtype=tl.float32) + vm, mask=g < G)


def row_vmax_pages(cache, seq_idx: torch.Tensor, n_pages: int, Hq: int, factor: float, *,
                   out: torch.Tensor | None = None, block: int = 1024) -> torch.Tensor:
    """(B·Hq,) float32 (kernel doc) for the B sequences ``seq_idx`` (int32, device) over their first
    ``n_pages`` logical pages, into ``out`` if given; no host synchronisation."""
    B, Hkv = seq_idx.numel(), cache.n_kv_heads
    G = Hq // Hkv
    if out is None:
        out = torch.empty(B * Hq, dtype=torch.float32, device=cache.device)
    bl = min(block, triton.next_power_of_2(n_pages))
    _row_vmax_kernel[(B, Hkv)](seq_idx, cache.block_table, cache.block_table.stride(0), cache.seq_lens, cache.vnorm,
                               out, float(factor), n_pages, cache.page_size, HKV=Hkv, G=G, BLOCK=bl,
                               NB=triton.cdiv(n_pages, bl), BG=triton.next_power_of_2(G))
    return out
