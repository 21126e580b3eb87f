"""Triton kernel: the certified-mode sketch scan with its per-token upper bounds, in one pass over the
sketch (SPEC 3b). For query head h (KV head h // G) and token j of group g = j // group:

    ŝ_j  = Σ_d q_d·(o_{g,d} + δ_{g,d}·c_{j,d})                                  (float32)
    ub_j = scale·(ŝ_j + e⁺_j),  e⁺_j = Σ_d a_{g,d}·w_{j,d} + 5γ_{D+2}(2⁻²⁴)·Σ_d |q_d| R_{g,d}

with a = δ·(½ + η) (η covers the rounding of the metadata, as in ``vashista_gpu.sketch``), w_{j,d} =
q_d⁺ when c_{j,d} = 0 (the key lies above its code's point), q_d⁻ when c_{j,d} = 2^b − 1, |q_d|
otherwise (one-sided errors), R = max(|o|, |o + (2^b−1)δ|). ŝ is computed as Σ q·o + Σ (q·δ)·c
(one FMA per code; |δ·c| ≤ 2R, so its float32 error stays within 4γ_{D+2}·Σ|q|R) and e⁺ as
Σ a|q| − Σ_{c=0} a q⁻ − Σ_{c=L} a q⁺ (two selects per code). The second term covers the float32
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
def _codes_half(codes_ptr, base, tmask, c, SHIFT: tl.constexpr, BITS: tl.constexpr):
    """Codes of one channel set as float32: 4-bit → the low (SHIFT 0) or high (SHIFT 4) nibbles of a
    (BM, D/2) byte tile; 8-bit → a (BM, D) byte tile."""
    byte = tl.load(codes_ptr + base[:, None] + c[None, :], mask=tmask[:, None], other=0).to(tl.int32)
    if BITS == 4:
        byte = (byte >> SHIFT) & 15
    return byte.to(tl.float32)


@triton.jit
def _half_terms(codes, q, o, st, a, LEV: tl.constexpr):
    """Per token: Σ_c (q·δ)_c·code_c, and the one-sided reduction Σ_c [code=0]·a q⁻ + [code=L]·a q⁺;
    per block: Σ_c q_c o_c, Σ_c a_c|q_c|, Σ_c |q_c| R_c."""
    qs = q * st
    dot = tl.sum(codes * qs[None, :], axis=1)
    aqm = a * tl.maximum(-q, 0.0)
    aqp = a * tl.maximum(q, 0.0)
    red = tl.sum(tl.where(codes == 0.0, aqm[None, :], tl.where(codes == LEV, aqp[None, :], 0.0)), axis=1)
    R = tl.maximum(tl.abs(o), tl.abs(o + LEV * st))
    return dot, red, tl.sum(q * o), tl.sum(a * tl.abs(q)), tl.sum(tl.abs(q) * R)


@triton.jit
def _sketch_scan_bound_kernel(q_ptr, codes_ptr, off_ptr, step_ptr, keys_ptr, ub_ptr,
                              T, Gr, W, group, scale, a_fac, rnd_fac, grow,
                              G: tl.constexpr, BITS: tl.constexpr, D: tl.constexpr, BM: tl.constexpr):
    row_kv = tl.program_id(0)                     # b·Hkv + kvh
    blk = tl.program_id(1)
    LEV: tl.constexpr = (1 << BITS) - 1
    toks = blk * BM + tl.arange(0, BM)
    tmask = toks < T
    g = (blk * BM) // group
    meta = (row_kv.to(tl.int64) * Gr + g) * D
    base = (row_kv.to(tl.int64) * T + toks.to(tl.int64)) * W
    if BITS == 4:                                 # even channels = low nibbles, odd = high nibbles
        c = tl.arange(0, D // 2)
        codes_a = _codes_half(codes_ptr, base, tmask, c, 0, BITS)
        codes_b = _codes_half(codes_ptr, base, tmask, c, 4, BITS)
        ch_a = 2 * c
        ch_b = 2 * c + 1
    else:
        c = tl.arange(0, D)
        codes_a = _codes_half(codes_ptr, base, tmask, c, 0, BITS)
        ch_a = c
    o_a = tl.load(off_ptr + meta + ch_a).to(tl.float32)
    st_a = tl.load(step_ptr + meta + ch_a).to(tl.float32)
    if BITS == 4:
        o_b = tl.load(off_ptr + meta + ch_b).to(tl.float32)
        st_b = tl.load(step_ptr + meta + ch_b).to(tl.float32)
    for i in tl.static_range(G):
        r = row_kv * G + i                         # = b·Hq + h since h = kvh·G + i
        q_a = tl.load(q_ptr + r * D + ch_a)
        # ŝ = Σ q·o + Σ (q·δ)·code: one FMA per code; its float32 error is within 4γ_{D+2}·Σ|q|R
        dot, red, qo, aq, rnd = _half_terms(codes_a, q_a, o_a, st_a, st_a * a_fac, LEV)
        if BITS == 4:
            q_b = tl.load(q_ptr + r * D + ch_b)
            dot_b, red_b, qo_b, aq_b, rnd_b = _half_terms(codes_b, q_b, o_b, st_b, st_b * a_fac, LEV)
            dot += dot_b
            red += red_b
            qo += qo_b
            aq += aq_b
            rnd += rnd_b
        s = dot + qo
        # e⁺ = Σ a|q| − (one-sided savings): the total is inflated and the savings deflated by the
        # relative error of their float32 sums, then the difference is rounded up
        e = (aq + rnd * rnd_fac) * grow - red * (2.0 - grow)
        e = tl.maximum(e + tl.abs(e) * 5.960464477539063e-08 * 2, 0.0)
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
    rnd_fac = 5 * _gamma(D + 2, U32) * (1 + 4 * U32)    # 4γ_{D+2} covers the scan; + one γ for rnd's own sum
    grow = 1 + 2 * _gamma(D + 3, U32)
    grid = (RK, triton.cdiv(T, BM))
    _sketch_scan_bound_kernel[grid](q, codes, offset, step, keys, ub, T, offset.shape[1], W, group,
                                    float(scale), a_fac, rnd_fac, grow,
                                    G=R // RK, BITS=bits, D=D, BM=BM, num_warps=4)
    return keys, ub
