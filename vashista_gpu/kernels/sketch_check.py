"""Triton kernel: is a caller's key sketch built from these keys? One launch, one flag.

The same test as ``sketch.sketch_mismatch`` (its torch form, the CPU path and the reference of the
tests): for ``n`` = min(T, sample) tokens j_i = ⌊i·T/n⌋ of every head h and every channel d, with g the
token's quantization group and c its code,

    |k_{h,j,d} − (offset_{h,g,d} + step_{h,g,d}·c)| ≤ step_{h,g,d}·(½ + 2⁻²⁰) + |k_{h,j,d}|·2⁻⁴⁰     (float64)

must hold; a sampled element where it does not (NaN included: the comparison is false) sets the flag.

Why: the fused certified step checks every call (a stale or foreign sketch would make its bounds
unsound), and the torch form's ~15 float64 ops over (heads, 256, D) tensors cost ~1.5-3 ms per call
at 512 heads (RESULTS.md, issue 13's refactor measurements; the step itself is ~3-5 ms there). Here
each program reads its head's sampled codes, metadata and keys once (bytes: H·n·(W + 2·D·meta + D·k)
≈ 50 MB at 512 heads, D 128, bf16) and writes nothing unless a mismatch is found.

Grid (H, ⌈n/BN⌉); ``flag`` (1,) int32 zeroed by the launcher, set to 1 by ``atomic_max``.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

__all__ = ["sketch_mismatch_flag"]


@triton.jit
def _sketch_check_kernel(k_ptr, codes_ptr, off_ptr, step_ptr, flag_ptr, T, n, Gr, group, skh, skt, skd,
                         D: tl.constexpr, W: tl.constexpr, BITS: tl.constexpr, BN: tl.constexpr,
                         BD: tl.constexpr):
    h = tl.program_id(0).to(tl.int64)
    i = tl.program_id(1) * BN + tl.arange(0, BN)
    ok_i = i < n
    tok = (i.to(tl.int64) * T) // n                               # ⌊i·T/n⌋, as the torch form
    g = tok // group
    d = tl.arange(0, BD)
    ok = ok_i[:, None] & (d < D)[None, :]
    PER: tl.constexpr = 8 // BITS
    byte = tl.load(codes_ptr + (h * T + tok)[:, None] * W + (d // PER)[None, :], mask=ok, other=0).to(tl.int32)
    c = (byte >> ((d % PER) * BITS)[None, :]) & ((1 << BITS) - 1)
    meta = (h * Gr + g)[:, None] * D + d[None, :]
    st = tl.load(step_ptr + meta, mask=ok, other=0.0).to(tl.float64)
    kt = tl.load(off_ptr + meta, mask=ok, other=0.0).to(tl.float64) + st * c.to(tl.float64)
    k = tl.load(k_ptr + h * skh + tok[:, None] * skt + d[None, :] * skd, mask=ok, other=0.0).to(tl.float64)
    good = tl.abs(k - kt) <= st * (0.5 + 2.0 ** -20) + tl.abs(k) * 2.0 ** -40
    bad = tl.max(tl.max((ok & ~good).to(tl.int32), axis=1), axis=0)
    if bad > 0:
        tl.atomic_max(flag_ptr, 1)


def sketch_mismatch_flag(K: torch.Tensor, codes: torch.Tensor, offset: torch.Tensor, step: torch.Tensor, *,
                         bits: int, group: int, sample: int = 256) -> torch.Tensor:
    """0-dim bool tensor on K's device: True when the sampled keys of ``K`` (H, T, D) do not lie within
    half a quantization step of the sketch (module doc). ``codes`` (H, T, W) uint8, W = ⌈D·bits/8⌉;
    ``offset``/``step`` (H, ⌈T/group⌉, D) float16/float32. No host synchronisation; K is read through
    its strides (no copy of the keys). The caller, ``sketch.sketch_mismatch``, has checked that the
    sketch lives on K's device."""
    H, T, D = K.shape
    n = min(T, sample)
    flag = torch.zeros(1, dtype=torch.int32, device=K.device)
    BN = 32
    _sketch_check_kernel[(H, triton.cdiv(n, BN))](
        K, codes.contiguous(), offset.contiguous(), step.contiguous(), flag, T, n, offset.shape[1],
        int(group), *K.stride(), D=D, W=codes.shape[2], BITS=bits, BN=BN, BD=triton.next_power_of_2(D))
    return flag[0] > 0
