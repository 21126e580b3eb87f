"""Triton kernel: one layer's decode-step statistics (``engine/step.py``'s ``StepStats``) in one launch.

``StepStats.add`` in torch is ~16 small ops per layer per step (≈ 0.05 ms per layer on an H100,
launch-bound). This kernel updates the layer's float64 row of ``STAT_FIELDS`` in place from the
step's R = B·Hq certificates, with the same definitions:

    queries += R;  uncertified += #{not (e ≤ tol)} (NaN counts);  fell_back += #fell;  overflow += #overflow;
    error_sum += Σ e over finite e;  error_max = max(error_max, max of e with non-finite as 0);
    leakage_max = max(leakage_max, max of leak with NaN as 1, ±inf as ±float64 max — torch.nan_to_num);
    nonfinite += #{e not finite}.

Counts and maxima are exact, so they equal the torch version bit for bit; ``error_sum`` is a float64
sum in another order (a few float64 ulps). One program walks the row in blocks of ``BLOCK``: a
single writer, so the read-modify-write of the row needs no atomics, and a replayed CUDA graph
accumulates into the same tensor.

Bytes moved: reads R·(8 + 8 + 1 + 1) (error and leakage as float64, two bool masks), reads and
writes 8·8 (the row).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

__all__ = ["step_stats"]

_F64_MAX = tl.constexpr(1.7976931348623157e308)   # a constexpr: Triton compiles no other globals


@triton.jit
def _step_stats_kernel(row_ptr, err_ptr, leak_ptr, fell_ptr, ovf_ptr, tol_ptr, R,
                       HAS_FELL: tl.constexpr, HAS_OVF: tl.constexpr, BLOCK: tl.constexpr, NB: tl.constexpr):
    offs = tl.arange(0, BLOCK)
    tol = tl.load(tol_ptr)                     # float64 (a scalar argument would be float32)
    unc = tl.zeros((BLOCK,), dtype=tl.float64)
    fell = tl.zeros((BLOCK,), dtype=tl.float64)
    ovf = tl.zeros((BLOCK,), dtype=tl.float64)
    esum = tl.zeros((BLOCK,), dtype=tl.float64)
    emax = tl.full((BLOCK,), float("-inf"), tl.float64)
    lmax = tl.full((BLOCK,), float("-inf"), tl.float64)
    nonfin = tl.zeros((BLOCK,), dtype=tl.float64)
    for c in range(NB):                        # NB = ⌈R/BLOCK⌉ constexpr: a loop (R is fixed by the plan)
        i = c * BLOCK + offs
        m = i < R
        e = tl.load(err_ptr + i, mask=m, other=0.0).to(tl.float64)
        lk = tl.load(leak_ptr + i, mask=m, other=0.0).to(tl.float64)
        fin = (e == e) & (tl.abs(e) != float("inf"))
        ef = tl.where(fin, e, 0.0)
        unc += tl.where(m & ((e <= tol) == 0), 1.0, 0.0)
        esum += tl.where(m, ef, 0.0)
        emax = tl.maximum(emax, tl.where(m, ef, float("-inf")))
        lk = tl.where(lk != lk, 1.0, tl.where(lk == float("inf"), _F64_MAX, tl.where(lk == float("-inf"), -_F64_MAX, lk)))
        lmax = tl.maximum(lmax, tl.where(m, lk, float("-inf")))
        nonfin += tl.where(m & (fin == 0), 1.0, 0.0)
        if HAS_FELL:
            fell += tl.where(m & (tl.load(fell_ptr + i, mask=m, other=0) != 0), 1.0, 0.0)
        if HAS_OVF:
            ovf += tl.where(m & (tl.load(ovf_ptr + i, mask=m, other=0) != 0), 1.0, 0.0)
    tl.store(row_ptr + 0, tl.load(row_ptr + 0) + R * 1.0)     # exact: R < 2²⁴
    tl.store(row_ptr + 1, tl.load(row_ptr + 1) + tl.sum(unc, axis=0))
    if HAS_FELL:
        tl.store(row_ptr + 2, tl.load(row_ptr + 2) + tl.sum(fell, axis=0))
    if HAS_OVF:
        tl.store(row_ptr + 3, tl.load(row_ptr + 3) + tl.sum(ovf, axis=0))
    tl.store(row_ptr + 4, tl.load(row_ptr + 4) + tl.sum(esum, axis=0))
    tl.store(row_ptr + 5, tl.maximum(tl.load(row_ptr + 5), tl.max(emax, axis=0)))
    tl.store(row_ptr + 6, tl.maximum(tl.load(row_ptr + 6), tl.max(lmax, axis=0)))
    tl.store(row_ptr + 7, tl.load(row_ptr + 7) + tl.sum(nonfin, axis=0))


def step_stats(row: torch.Tensor, err: torch.Tensor, leak: torch.Tensor, tol: torch.Tensor, fell=None, overflow=None,
               block: int = 1024) -> None:
    """Accumulate one step into ``row`` (8,) float64 (a contiguous row of ``StepStats.t``) from
    ``err``/``leak`` (any shape, R elements, float), ``tol`` a 1-element float64 device tensor, and
    the optional bool masks ``fell``/``overflow`` (R elements); no host synchronisation."""
    e, lk = err.reshape(-1), leak.reshape(-1)
    R = e.numel()
    if R == 0:
        return
    f = fell.reshape(-1) if fell is not None else e        # unread when absent
    o = overflow.reshape(-1) if overflow is not None else e
    bl = min(block, triton.next_power_of_2(R))
    _step_stats_kernel[(1,)](row, e, lk, f, o, tol, R, HAS_FELL=fell is not None,
                             HAS_OVF=overflow is not None, BLOCK=bl, NB=triton.cdiv(R, bl))
