"""Triton kernel: the tie-rule keys of every score of a row block, in one launch.

``selection.tie_keys(s, arange(W))`` on a (R, W) float32 score matrix is ~10 elementwise torch ops
(−0 → +0, bit view, sign flip, shift, index complement, add); this kernel computes the same int64
keys with the in-kernel twin ``kernels/keys.tie_key`` (integer arithmetic: bit-identical):

    keys[r, j] = orderable(s[r, j]) << 32 | (2**32 − 1 − j),   j < W (the first W columns of s).

Grid (R, ⌈W/BLOCK⌉). Bytes moved: reads 4·R·W (scores, any row stride), writes 8·R·W (keys).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from .keys import tie_key

__all__ = ["row_keys"]


@triton.jit
def _row_keys_kernel(s_ptr, s_stride, out_ptr, W, BLOCK: tl.constexpr):
    r = tl.program_id(0).to(tl.int64)
    j = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    m = j < W
    s = tl.load(s_ptr + r * s_stride + j, mask=m, other=0.0)
    tl.store(out_ptr + r * W + j, tie_key(s, j, m, j < 0), mask=m)     # masks as tensors, as the other callers


def row_keys(s: torch.Tensor, width: int | None = None, block: int = 1024) -> torch.Tensor:
    """(R, width) int64 keys of the first ``width`` (default all) columns of ``s`` (R, T) float32
    (unit column stride); no host synchronisation."""
    R, T = s.shape
    W = T if width is None else int(width)
    out = torch.empty((R, W), dtype=torch.int64, device=s.device)
    bl = min(block, triton.next_power_of_2(W))
    _row_keys_kernel[(R, triton.cdiv(W, bl))](s, s.stride(0), out, W, BLOCK=bl)
    return out
