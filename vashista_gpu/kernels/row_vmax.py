"""Triton kernel: the certified step's max‖v‖ per query row, in one launch, from the cache's running
maxima.

For batch row b (sequence ``seq[b]``) and KV head h:

    vmax[b, h] = fl32( vabs[seq, h] · factor ),

written to the G query rows b·Hq + h·G + g (g < G) of the output — the row → KV-head map of
``sketch_plan.plan_sketch_step`` (r = b·Hq + hq, KV head hq // G). ``vabs`` (``paged_cache``) is the
running maximum of the sequence's page value norms, raised on every append and reset when its slot is
(re)added, so it equals the maximum over the sequence's live pages bit for bit (a page's norm only grows
as it fills), NaN included. The rounding ``factor`` is the caller's (``sketch_plan.row_vmax`` owns the
formula); the product is one float32 multiplication by the float32 factor, as torch's
``tensor * float``.

Why not the pages: the earlier kernel walked every live page's norm per (row, KV head) through the
page table — dependent loads, 22 µs per layer at 128k on an H100 (1B shape, batch 1), ~0.36 ms of a
token; this reads 4 bytes per (row, KV head).

Bytes moved: reads B·(4 + 4·Hkv); writes 4·B·Hq.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

__all__ = ["row_vmax_seqs"]


@triton.jit
def _row_vmax_kernel(seq_ptr, vabs_ptr, out_ptr, factor, HKV: tl.constexpr, G: tl.constexpr, BG: tl.constexpr):
    b = tl.program_id(0)
    h = tl.program_id(1)
    seq = tl.load(seq_ptr + b).to(tl.int64)
    vm = tl.load(vabs_ptr + seq * HKV + h) * factor          # NaN stays NaN (uncertified)
    g = tl.arange(0, BG)
    tl.store(out_ptr + b * (HKV * G) + h * G + g, tl.zeros((BG,), dtype=tl.float32) + vm, mask=g < G)


def row_vmax_seqs(cache, seq_idx: torch.Tensor, Hq: int, factor: float, *, out: torch.Tensor | None = None) -> torch.Tensor:
    """(B·Hq,) float32 (module doc) for the B sequences ``seq_idx`` (int32, device), into ``out`` if
    given; no host synchronisation. The cache must keep value norms (``cache.vabs``)."""
    B, Hkv = seq_idx.numel(), cache.n_kv_heads
    G = Hq // Hkv
    if out is None:
        out = torch.empty(B * Hq, dtype=torch.float32, device=cache.device)
    _row_vmax_kernel[(B, Hkv)](seq_idx, cache.vabs, out, float(factor), HKV=Hkv, G=G, BG=triton.next_power_of_2(G))
    return out
