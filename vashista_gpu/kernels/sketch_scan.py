"""Triton kernel: the certified-mode sketch scan with its per-token upper bounds, in one pass over the
sketch (SPEC 3b). For query head h (KV head h // G) and token j of group g = j // group:

    ŝ_j  = Σ_d q_d·(o_{g,d} + δ_{g,d}·c_{j,d})                                  (float32)
    ub_j = scale·(ŝ_j + e⁺_j),  e⁺_j = Σ_d a_{g,d}·w_{j,d} + 4γ_{D+2}(2⁻²⁴)·Σ_d |q_d| R_{g,d}

with a = δ·(½ + η) (η covers the rounding of the metadata, as in ``vashista_gpu.sketch``), w_{j,d} =
q_d⁺ when c_{j,d} = 0 (the key lies above its code's point), q_d⁻ when c_{j,d} = 2^b − 1, |q_d|
otherwise (one-sided errors), R = max(|o|, |o + (2^b−1)δ|). The second term covers the float32
dequantization and dot product; e⁺ and the sum ŝ + e⁺ are then rounded outward (relative margins
of a few float32 units), so ub_j ≥ scale·⟨q, k_j⟩ for the true key whatever the float32 rounding.

Outputs per (row r = b·Hq + h, token j): ``keys`` int64 tie-rule keys of ŝ (``keys.tie_key``: score
descending, lower index first) for the top-Kc selection, and ``ub`` float32 for the certificate.

One program per (batch row × KV head, BM tokens): each code byte and each metadata element is loaded
once and serves the G query heads of the KV head (GQA). ``BM`` divides ``group`` so one block lies in
one quantization group and its metadata is a single (D,) vector. 4-bit codes are unpacked from a
(BM, D/2) byte tile as the even (low nibble) and odd (high nibble) channels.
"""
from __future__ import annotations

import triton
import triton.language as tl

from .keys import tie_key

U32 = 2.0 ** -24


@triton.jit
def _sketch_scan_bound_kernel(q_ptr, codes_ptr, off_ptr, step_ptr, keys_ptr, ub_ptr,
                              T, Gr, W, group, scale, a_fac, rnd_fac, grow,
                              G: tl.constexpr, BITS: tl.constexpr, D: tl.constexpr, BM: tl.constexpr):
    row_kv = tl.program_id(0)                     # b·Hkv + kvh
    blk = tl.program_id(1)
    LEV: tl.constexpr = (1 << BITS) - 1
    HALF: tl.constexpr = D // 2
    toks = blk * BM + tl.arange(0, BM)
    tmask = toks < T
    g = (blk * BM) // group
    meta = (row_kv.to(tl.int64) * Gr + g) * D
    base = (row_kv.to(tl.int64) * T + toks.to(tl.int64)) * W
    if BITS == 4:
        c2 = tl.arange(0, HALF)
        byte = tl.load(codes_ptr + base[:, None] + c2[None, :], mask=tmask[:, None], other=0).to(tl.int32)
        codes_e = (byte & 15).to(tl.float32)
        codes_o = (byte >> 4).to(tl.float32)
        ch_e = 2 * c2
        ch_o = 2 * c2 + 1
    else:
        c2 = tl.arange(0, HALF)
        codes_e = tl.load(codes_ptr + base[:, None] + (2 * c2)[None, :], mask=tmask[:, None], other=0).to(tl.float32)
        codes_o = tl.load(codes_ptr + base[:, None] + (2 * c2 + 1)[None, :], mask=tmask[:, None], other=0).to(tl.float32)
        ch_e = 2 * c2
        ch_o = 2 * c2 + 1
    o_e = tl.load(off_ptr + meta + ch_e).to(tl.float32)
    o_o = tl.load(off_ptr + meta + ch_o).to(tl.float32)
    st_e = tl.load(step_ptr + meta + ch_e).to(tl.float32)
    st_o = tl.load(step_ptr + meta + ch_o).to(tl.float32)
    k_e = o_e[None, :] + st_e[None, :] * codes_e
    k_o = o_o[None, :] + st_o[None, :] * codes_o
    R_e = tl.maximum(tl.abs(o_e), tl.abs(o_e + LEV * st_e))
    R_o = tl.maximum(tl.abs(o_o), tl.abs(o_o + LEV * st_o))
    a_e = st_e * a_fac
    a_o = st_o * a_fac
    bot_e, top_e = codes_e == 0.0, codes_e == LEV
    bot_o, top_o = codes_o == 0.0, codes_o == LEV
    for i in tl.static_range(G):
        r = row_kv * G + i                         # = b·Hq + h since h = kvh·G + i
        q_e = tl.load(q_ptr + r * D + ch_e)
        q_o = tl.load(q_ptr + r * D + ch_o)
        s = tl.sum(k_e * q_e[None, :], axis=1) + tl.sum(k_o * q_o[None, :], axis=1)
        # one-sided error weights: code 0 can only under-estimate the key, code L only over-estimate
        w_e = tl.where(bot_e, tl.maximum(q_e, 0.0)[None, :],
                       tl.where(top_e, tl.maximum(-q_e, 0.0)[None, :], tl.abs(q_e)[None, :]))
        w_o = tl.where(bot_o, tl.maximum(q_o, 0.0)[None, :],
                       tl.where(top_o, tl.maximum(-q_o, 0.0)[None, :], tl.abs(q_o)[None, :]))
        e = tl.sum(w_e * a_e[None, :], axis=1) + tl.sum(w_o * a_o[None, :], axis=1)
        rnd = tl.sum(tl.abs(q_e) * R_e) + tl.sum(tl.abs(q_o) * R_o)
        e = (e + rnd * rnd_fac) * grow            # grow covers the float32 sums of e itself
        t = (s + e) * scale
        ub = t + tl.abs(t) * (8 * 5.960464477539063e-08)   # the addition, scale's float32 value, the product
        keys = tie_key(s, toks, tmask, toks < 0)
        out = r.to(tl.int64) * T + toks
        tl.store(keys_ptr + out, keys, mask=tmask)
        tl.store(ub_ptr + out, tl.where(tmask, ub, float("-inf")), mask=tmask)


def _gamma(n: int, u: float) -> float:
    return n * u / (1 - n * u)


def sketch_scan_bound(q, codes, offset, step, *, bits: int, group: int, scale: float, block_tokens: int | None = None):
    """Launch the scan. ``q`` (B·Hq, D) float32; ``codes`` (B·Hkv, T, W) uint8; ``offset``/``step``
    (B·Hkv, Gr, D) float16/float32. Returns (keys int64, ub float32), both (B·Hq, T)."""
    import torch
    R, D = q.shape
    RK, T, W = codes.shape
    BM = block_tokens or min(group, 64)
    assert D % 2 == 0 and group % BM == 0 and R % RK == 0
    keys = torch.empty((R, T), dtype=torch.int64, device=q.device)
    ub = torch.empty((R, T), dtype=torch.float32, device=q.device)
    levels = (1 << bits) - 1
    eta = 4.0 * (levels + 2) * 2.0 ** -53 + 4 * U32      # metadata rounding + float32 product a·w
    a_fac = (0.5 + eta) * (1 + 4 * U32)
    rnd_fac = 4 * _gamma(D + 2, U32) * (1 + 4 * U32)
    grow = 1 + 2 * _gamma(D + 3, U32)
    grid = (RK, triton.cdiv(T, BM))
    _sketch_scan_bound_kernel[grid](q, codes, offset, step, keys, ub, T, offset.shape[1], W, group,
                                    float(scale), a_fac, rnd_fac, grow,
                                    G=R // RK, BITS=bits, D=D, BM=BM, num_warps=4)
    return keys, ub
