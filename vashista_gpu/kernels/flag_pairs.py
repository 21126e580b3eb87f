"""Triton kernel: DenseFallback's flag, compaction and counts inside the graph, in one launch.

For the (B, Hq) certificates ``err`` of one step and the tolerance ``tol`` (a one-element tensor of
err's dtype, so the comparison is torch's ``err <= tol`` in that dtype):

* flag = not (err ≤ tol): an error above tol, or a non-finite certificate (NaN compares false);
* pairs (CAP, 2) int32: the flagged (row, head) in row-major order — pair k is the k-th flagged
  index (an inclusive prefix sum gives the slot) — then −1 up to the capacity; flagged pairs past
  the capacity are not listed;
* count: the number flagged n (int32; the pairs kernel lists min(n, CAP) of them);
* masks (uint8 0/1): flagged, listed (fell back), overflowed (flagged, not listed);
* counts (int64, accumulated in place, so a replayed graph keeps counting): flagged += n,
  fell back += min(n, CAP), overflow += n − min(n, CAP); any_overflow = n > CAP.

It replaces ~30 small torch ops per layer (compare, cumsum, where, stack, index_copy, the counter
updates), ~2 µs each inside a CUDA graph. One program: B·Hq ≤ a few thousand pairs per step.

Bytes moved: B·Hq·(4 read + 3 written) + 8·CAP (pairs) + 3·8 (counts).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

__all__ = ["flag_pairs"]


@triton.jit
def _flag_pairs_kernel(err_ptr, tol_ptr, pairs_ptr, count_ptr, counts_ptr, masks_ptr, any_ptr, N, Hq, CAP,
                       BLOCK: tl.constexpr, CBLOCK: tl.constexpr, CROUNDS: tl.constexpr):
    i = tl.arange(0, BLOCK)
    m = i < N
    e = tl.load(err_ptr + i, mask=m, other=0.0)
    flag = (~(e <= tl.load(tol_ptr))) & m
    fi = flag.to(tl.int32)
    pos = tl.cumsum(fi, axis=0) - 1                    # slot of each flagged pair
    keep = flag & (pos < CAP)
    n = tl.sum(fi, axis=0)
    listed = tl.minimum(n, CAP)
    tl.store(pairs_ptr + pos * 2, i // Hq, mask=keep)
    tl.store(pairs_ptr + pos * 2 + 1, i % Hq, mask=keep)
    for r in range(CROUNDS):                           # the unlisted slots: −1 (disjoint from the above)
        j = r * CBLOCK + tl.arange(0, CBLOCK)
        pad = (j >= listed) & (j < CAP)
        tl.store(pairs_ptr + j * 2, tl.full((CBLOCK,), -1, tl.int32), mask=pad)
        tl.store(pairs_ptr + j * 2 + 1, tl.full((CBLOCK,), -1, tl.int32), mask=pad)
    tl.store(masks_ptr + i, fi.to(tl.uint8), mask=m)
    tl.store(masks_ptr + N + i, keep.to(tl.uint8), mask=m)
    tl.store(masks_ptr + 2 * N + i, (flag & ~keep).to(tl.uint8), mask=m)
    tl.store(count_ptr, n)
    n64 = n.to(tl.int64)
    l64 = listed.to(tl.int64)
    tl.store(counts_ptr, tl.load(counts_ptr) + n64)
    tl.store(counts_ptr + 1, tl.load(counts_ptr + 1) + l64)
    tl.store(counts_ptr + 2, tl.load(counts_ptr + 2) + (n64 - l64))
    tl.store(any_ptr, (n > CAP).to(tl.uint8))


def flag_pairs(err: torch.Tensor, tol: torch.Tensor, capacity: int, counts: torch.Tensor):
    """Launch (module doc) for ``err`` (B, Hq) float, ``tol`` one-element tensor of err's dtype on its
    device, ``counts`` (3,) int64 accumulated in place. Returns (pairs (capacity, 2) int32, count (1,)
    int32, flagged, listed, overflowed (B, Hq) bool, any_overflow 0-d bool). No host synchronisation."""
    B, Hq = err.shape
    N = B * Hq
    dev = err.device
    pairs = torch.empty((capacity, 2), dtype=torch.int32, device=dev)
    count = torch.empty((1,), dtype=torch.int32, device=dev)
    masks = torch.empty((3, B, Hq), dtype=torch.uint8, device=dev)
    anyo = torch.empty((), dtype=torch.uint8, device=dev)
    _flag_pairs_kernel[(1,)](err.contiguous(), tol, pairs, count, counts, masks, anyo, N, Hq, capacity,
                             BLOCK=max(16, triton.next_power_of_2(N)), CBLOCK=1024, CROUNDS=triton.cdiv(capacity, 1024),
                             num_warps=4)
    masks = masks.view(torch.bool)
    return pairs, count, masks[0], masks[1], masks[2], anyo.view(torch.bool)
