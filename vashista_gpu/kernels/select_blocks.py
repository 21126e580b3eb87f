"""Triton kernel: one routing level's selection, fused (replaces ~25 small torch ops per level).

Per (batch row, query head), over the level's M ≤ 1024 tie-rule keys (``kernels/keys.py``):

    sorted = bitonic sort of the keys, descending            (the tie rule's order: keys are distinct)
    keep   = forced blocks ∪ the P best others: ranks < n_forced + P (and < Wl), valid keys only
    kept   = their block ids (decoded from the keys' low bits), ascending; ``level_size`` where unused
    thr    = the last kept key (or the invalid key when nothing is dropped)
    fold   = the dropped blocks (valid, key < thr) into the certificate terms, as ``fold_dropped``:
             lse ← logaddexp(lse, log n + log Σ e^{ub}),  ub_out ← max(ub_out, max ub),
             vmax_out ← max(vmax_out, max vnorm).
"""
from __future__ import annotations

import triton
import triton.language as tl

__all__ = ["select_blocks"]

INVALID = tl.constexpr(-9223372036854775807 - 1)
FORCED_HI = tl.constexpr(2147483647)
LOW = tl.constexpr(4294967295)


@triton.jit
def _select_blocks_kernel(keys_ptr, ub_ptr, vn_ptr, kept_ptr, ok_ptr, lse_ptr, ubo_ptr, vmo_ptr,
                          M, P, Wl, big, log_n,
                          BM: tl.constexpr, CERT: tl.constexpr):
    pid = tl.program_id(0)
    j = tl.arange(0, BM)
    inb = j < M
    key = tl.load(keys_ptr + pid * M + j, mask=inb, other=INVALID)
    srt = tl.sort(key, descending=True)
    nf = tl.sum(((srt >> 32) == FORCED_HI).to(tl.int32), axis=0)
    n_keep = nf + P
    ok = (srt != INVALID) & (j < n_keep) & (j < Wl)
    ids = tl.where(ok, LOW - (srt & LOW), big)
    ids = tl.sort(ids)                                   # kept ids ascending, unused slots last
    tl.store(kept_ptr + pid * Wl + j, ids, mask=j < Wl)
    tl.store(ok_ptr + pid * Wl + j, (ids != big).to(tl.int8), mask=j < Wl)
    if CERT:
        thr = tl.sum(tl.where(j == n_keep - 1, srt, 0), axis=0)
        thr = tl.where(n_keep > Wl, INVALID, thr)
        d = inb & (key != INVALID) & (key < thr)
        ub = tl.load(ub_ptr + pid * M + j, mask=d, other=float("-inf"))
        vn = tl.load(vn_ptr + pid * M + j, mask=d, other=0.0)
        mx = tl.max(tl.where(d, ub, float("-inf")), axis=0)
        z = tl.sum(tl.where(d, tl.exp(ub - mx), 0.0), axis=0)
        l_lse = tl.where(mx == float("-inf"), mx, log_n + mx + tl.log(z))
        old = tl.load(lse_ptr + pid)
        hi = tl.maximum(old, l_lse)
        lo = tl.minimum(old, l_lse)
        tl.store(lse_ptr + pid, tl.where(hi == float("-inf"), hi, hi + tl.log(1.0 + tl.exp(lo - hi))))
        tl.store(ubo_ptr + pid, tl.maximum(tl.load(ubo_ptr + pid), mx))
        tl.store(vmo_ptr + pid, tl.maximum(tl.load(vmo_ptr + pid), tl.max(tl.where(d, vn, 0.0), axis=0)))


def select_blocks(keys, ub, vn, kept, ok, lse, ubo, vmo, *, P: int, big: int, log_n: float, certify: bool) -> None:
    """Launch the fused selection of one level: ``keys`` (int64), ``ub``, ``vn`` (float32), (B, Hq, M)
    with M ≤ 1024 (the whole row is sorted in registers); writes the kept blocks ``kept`` (int64) and
    ``ok`` (int8), (B, Hq, Wl), and folds the dropped blocks into ``lse``/``ubo``/``vmo`` (B, Hq)
    (accumulated in place). ``big`` the level's block count, ``log_n`` log of its tokens per block.
    Grid (B·Hq,), 4 warps up to 1024 blocks, else 8.

    Bytes moved: one read of the row's keys, ub and vnorm (16 B per block), 9·Wl + 12 B written.
    """
    B, Hq, M = keys.shape
    Wl = kept.shape[-1]
    BM = triton.next_power_of_2(M)
    _select_blocks_kernel[(B * Hq,)](keys, ub, vn, kept, ok, lse, ubo, vmo, M, P, Wl, big, log_n, BM=BM,
                                     CERT=certify, num_warps=4 if BM <= 1024 else 8)
