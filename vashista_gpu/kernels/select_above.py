"""Triton kernel: threshold compaction for the certified step's top-Kc selection.

Why: ``torch.topk`` over every token's tie-rule key (8 B per token and query head) cost ~1.9 ms of
a 9.8 ms step at 128k (paper shapes, H100). The scan already gives each block's largest sketch score;
the Kc-th largest block maximum τ_r is a threshold with at least Kc tokens at or above it (each of
those Kc blocks holds one), and every token of the exact top-Kc has ŝ ≥ its Kc-th score ≥ τ_r. So the
top-Kc of the tokens with ŝ ≥ τ_r, under the tie rule, *is* the top-Kc of the row.

This kernel writes the tie-rule keys (``keys.tie_key``) of the tokens with ŝ ≥ τ_r into a per-row
buffer of ``cap`` slots (unordered; the free slots keep the caller's INVALID key) and counts them
per row with one atomic per block. A row whose count exceeds ``cap`` is *overflowed*: its buffer
holds an arbitrary subset and the caller must select that row from all keys instead
(``vashista_gpu.sketch.fused_sketch_step`` does, or reports it when asked not to synchronise).
"""
from __future__ import annotations

import triton
import triton.language as tl

from .keys import tie_key

__all__ = ["select_above"]


@triton.jit
def _select_above_kernel(s_ptr, tau_ptr, keys_ptr, count_ptr, T, cap, BT: tl.constexpr):
    r = tl.program_id(0)
    blk = tl.program_id(1)
    toks = blk * BT + tl.arange(0, BT)
    m = toks < T
    s = tl.load(s_ptr + r.to(tl.int64) * T + toks, mask=m, other=float("-inf"))
    tau = tl.load(tau_ptr + r)
    take = m & (s >= tau)
    ti = take.to(tl.int32)
    n = tl.sum(ti, axis=0)
    if n > 0:
        base = tl.atomic_add(count_ptr + r, n)
        pos = base + tl.cumsum(ti, axis=0) - 1
        keys = tie_key(s, toks, take, toks < 0)
        tl.store(keys_ptr + r.to(tl.int64) * cap + pos, keys, mask=take & (pos < cap))


def select_above(s, tau, keys, count, *, block: int = 1024):
    """Fill ``keys`` (R, cap) int64 (pre-filled with the invalid key) with the tie-rule keys of the
    tokens of ``s`` (R, T) float32 whose score is ≥ ``tau`` (R,) float32; ``count`` (R,) int32,
    zeroed by the caller, receives the number of such tokens (> cap means overflow)."""
    R, T = s.shape
    _select_above_kernel[(R, triton.cdiv(T, block))](s, tau, keys, count, T, keys.shape[1], BT=block)
