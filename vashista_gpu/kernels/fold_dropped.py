"""Triton kernel: fold one routing level's dropped blocks into the certificate, one pass per row.

A block is dropped iff its key is valid and below the row's last kept key ``thr``. Each dropped block holds exactly n = S·F^level tokens (the newest,
possibly partial page is forced), so for every (batch row, query head):

    lse  = log n + log Σ_{dropped} e^{ub_p}    (online logsumexp),
    ubm  = max_{dropped} ub_p,   vnm = max_{dropped} vnorm_p   (−inf / 0 when none).
"""
from __future__ import annotations

import triton
import triton.language as tl

__all__ = ["fold_dropped"]


@triton.jit
def _fold_dropped_kernel(keys_ptr, thr_ptr, ub_ptr, vn_ptr, lse_ptr, ubm_ptr, vnm_ptr, M, log_n,
                         BM: tl.constexpr, NM: tl.constexpr):
    pid = tl.program_id(0)
    thr = tl.load(thr_ptr + pid)
    lane = tl.arange(0, BM)
    mx = tl.max(tl.full((BM,), float("-inf"), tl.float32), axis=0)
    z = tl.sum(tl.zeros((BM,), tl.float32), axis=0)
    vm = tl.sum(tl.zeros((BM,), tl.float32), axis=0)
    for i in range(NM):
        j = i * BM + lane
        inb = j < M
        key = tl.load(keys_ptr + pid * M + j, mask=inb, other=-9223372036854775807 - 1)
        d = inb & (key < thr) & (key != -9223372036854775807 - 1)
        ub = tl.load(ub_ptr + pid * M + j, mask=d, other=float("-inf"))
        vn = tl.load(vn_ptr + pid * M + j, mask=d, other=0.0)
        new = tl.maximum(mx, tl.max(tl.where(d, ub, float("-inf")), axis=0))
        part = tl.sum(tl.where(d, tl.exp(ub - new), 0.0), axis=0)
        z = tl.where(new == float("-inf"), 0.0, z * tl.exp(mx - new) + part)
        mx = new
        vm = tl.maximum(vm, tl.max(tl.where(d, vn, 0.0), axis=0))
    tl.store(lse_ptr + pid, tl.where(mx == float("-inf"), mx, log_n + mx + tl.log(z)))
    tl.store(ubm_ptr + pid, mx)
    tl.store(vnm_ptr + pid, vm)


def fold_dropped(keys, thr, ub, vn, lse, ubm, vnm, *, log_n: float, block: int = 1024) -> None:
    """Launch the fold over ``keys`` (int64), ``ub``, ``vn`` (float32), (B, Hq, M), with ``thr``
    (B, Hq) the last kept key; writes ``lse``/``ubm``/``vnm`` (B, Hq) float32 (preallocated).
    ``log_n`` = log of the tokens per block. Grid (B·Hq,), one program per row looping over M in
    chunks of min(block, M rounded up to a power of two).

    Bytes moved: one read of the row's keys, ub and vnorm (16 B per block), 12 B written per row.
    """
    B, Hq, M = keys.shape
    BM = min(block, triton.next_power_of_2(M))
    _fold_dropped_kernel[(B * Hq,)](keys, thr, ub, vn, lse, ubm, vnm, M, log_n, BM=BM, NM=triton.cdiv(M, BM))
