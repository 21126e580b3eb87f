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
