"""Triton kernel: the certified-mode sketch scan with its per-token upper bounds, in one pass over the
sketch (SPEC 3b). For query head h (KV head h // G) and token j of quantization group g = j // group:

    ŝ_j  = Σ_d q_d·(o_{g,d} + δ_{g,d}·c_{j,d})                                           (float32)
    ub_j = scale·(ŝ_j + e⁺_j),   e⁺_j = Σ_d a_{g,d}·w_{j,d} + 5γ_{D+2}(2⁻²⁴)·Σ_d |q_d| R_{g,d}

with a = δ·(½ + η) (η covers the rounding of the metadata, as in ``vashista_gpu.sketch``) and
R = max(|o|, |o + Lδ|), L = 2^b − 1. With ``ONE_SIDED`` (the reference's bound) w_{j,d} = q_d⁺ when
c_{j,d} = 0 (the key lies above its code's point), q_d⁻ when c_{j,d} = L, |q_d| otherwise; without
it w = |q| (SPEC 3b's two-sided e_p = ½Σ|q|δ, a per-block constant). Written as e⁺ = Σ a|q| − S_j
with the one-sided savings

    S_j = Σ_d β_d·[c_{j,d} = t_d],   β = a|q|,  t_d = 0 where q_d < 0, L where q_d > 0
        = Σ_d β_d·max(α_d·c_{j,d} + γ_d, 0),   (α, γ) = (−1, 1) or (1, 1 − L)

(exact 0/1 indicators: one FMA and one max per code and head, then one FMA into the sum), lowered
by its float32 summation error before it is subtracted.

Cost per code (why this shape): the first scan converted every code with an integer-to-float
instruction (a quarter-rate unit on NVIDIA GPUs) and selected the one-sided weights with two compares
and two selects; it ran compute-bound at 20-46 % of copy bandwidth on an H100. Here a code becomes
float32 with one OR and one subtraction — ``c | 0x4B000000`` is the float 2²³ + c, exact — then one
FMA for ŝ, and the savings cost two FMAs and a max. ŝ as Σ q·o + Σ (q·δ)·c has
|δ·c| ≤ 2R, so its float32 error stays within 4γ_{D+2}·Σ|q|R; e⁺ and ŝ + e⁺ are rounded outward by a
few float32 units, so ub_j ≥ scale·⟨q, k_j⟩ for the true key whatever the rounding.

Outputs per (row r = b·Hq + h, token j): ``s`` = ŝ float32 (the selection score), ``ub`` float32
(the certificate's token bound), and ``smax`` (row, ⌈T/16⌉) = the largest ŝ of every 16 tokens,
from which ``select_above.py``'s threshold is taken.

One program per (batch row × KV head, BM tokens): each code byte and each metadata element is loaded
once and serves the G query heads of the KV head (GQA). ``BM`` divides ``group`` so a block lies in
one quantization group and its metadata is a single (D,) vector. 4-bit codes are unpacked from a
(BM, D/2) byte tile as the even (low nibble) and odd (high nibble) channels.
"""
from __future__ import annotations

import triton
import triton.language as tl

U32 = 2.0 ** -24
SUB = 16                                          # tokens per entry of ``smax``


@triton.jit
def _code_tiles(codes_ptr, base, tmask, c, SHIFT: tl.constexpr, BITS: tl.constexpr):
    """Codes c of a (BM, ·) byte tile as float32, exactly."""
    byte = tl.load(codes_ptr + (base[:, None] + c[None, :]), mask=tmask[:, None], other=0).to(tl.int32)
    if BITS == 4:
        byte = (byte >> SHIFT) & 15
    return (byte | 0x4B000000).to(tl.float32, bitcast=True) - 8388608.0      # 2²³ + c, exact; − 2²³, exact


@triton.jit
def _half_terms(cf, q, o, st, a, LEV: tl.constexpr, ONE_SIDED: tl.constexpr):
    """Per token: Σ_c (q·δ)_c·code_c and the savings Σ_c β_c·[code_c = t_c]; per block: Σ q·o, Σ a|q|,
    Σ |q|R, Σ β. With β = a|q| and t = 0 where q < 0, L where q > 0, the indicator is
    max(α·c + γ, 0) with (α, γ) = (−1, 1) or (1, 1 − L): one FMA and one max per code and head."""
    dot = tl.sum(cf * (q * st)[None, :], axis=1)
    beta = a * tl.abs(q)
    if ONE_SIDED:
        neg = q < 0.0
        alpha = tl.where(neg, -1.0, 1.0)
        gam = tl.where(neg, 1.0, 1.0 - LEV)
        ind = tl.maximum(cf * alpha[None, :] + gam[None, :], 0.0)
        sav = tl.sum(ind * beta[None, :], axis=1)
    else:
        sav = dot * 0.0
    R = tl.maximum(tl.abs(o), tl.abs(o + LEV * st))
    return dot, sav, tl.sum(q * o), tl.sum(beta), tl.sum(tl.abs(q) * R)


@triton.jit
def _sketch_scan_bound_kernel(q_ptr, codes_ptr, off_ptr, step_ptr, s_ptr, ub_ptr, smax_ptr,
                              T, NS, Gr, W, group, scale, a_fac, rnd_fac, grow,
                              G: tl.constexpr, BITS: tl.constexpr, D: tl.constexpr, BM: tl.constexpr,
                              ONE_SIDED: tl.constexpr):
    row_kv = tl.program_id(0)                     # b·Hkv + kvh
    blk = tl.program_id(1)
    LEV: tl.constexpr = (1 << BITS) - 1
    NSUB: tl.constexpr = BM // 16
    toks = blk * BM + tl.arange(0, BM)
    tmask = toks < T
    g = (blk * BM) // group
    meta = (row_kv.to(tl.int64) * Gr + g) * D
    # int64 row offset on the scalar pointer, int32 offsets inside the row: keeps the tile's
    # contiguity visible to the compiler (16-byte vector loads, channels mostly inside a thread)
    codes_row = codes_ptr + row_kv.to(tl.int64) * T * W
    base = tl.multiple_of(toks * W, 16)
    if BITS == 4:                                 # even channels = low nibbles, odd = high nibbles
        c = tl.arange(0, D // 2)
        cf_a = _code_tiles(codes_row, base, tmask, c, 0, BITS)
        cf_b = _code_tiles(codes_row, base, tmask, c, 4, BITS)
        ch_a = 2 * c
        ch_b = 2 * c + 1
    else:
        c = tl.arange(0, D)
        cf_a = _code_tiles(codes_row, base, tmask, c, 0, BITS)
        ch_a = c
    o_a = tl.load(off_ptr + meta + ch_a).to(tl.float32)
    st_a = tl.load(step_ptr + meta + ch_a).to(tl.float32)
    if BITS == 4:
        o_b = tl.load(off_ptr + meta + ch_b).to(tl.float32)
        st_b = tl.load(step_ptr + meta + ch_b).to(tl.float32)
    for i in tl.static_range(G):
        r = row_kv * G + i                         # = b·Hq + h since h = kvh·G + i
        q_a = tl.load(q_ptr + r * D + ch_a)
        dot, sav, qo, aq, rnd = _half_terms(cf_a, q_a, o_a, st_a, st_a * a_fac, LEV, ONE_SIDED)
        if BITS == 4:
            q_b = tl.load(q_ptr + r * D + ch_b)
            dot_b, sav_b, qo_b, aq_b, rnd_b = _half_terms(cf_b, q_b, o_b, st_b, st_b * a_fac, LEV, ONE_SIDED)
            dot += dot_b
            sav += sav_b
            qo += qo_b
            aq += aq_b
            rnd += rnd_b
        s = dot + qo
        e = (aq + rnd * rnd_fac) * grow
        if ONE_SIDED:
            # the savings' float32 sum (exact products of β by 0/1) is within γ_D of itself
            e = e - sav * (2.0 - grow)
        e = tl.maximum(e + tl.abs(e) * 5.960464477539063e-08 * 2, 0.0)
        t = (s + e) * scale
        ub = t + tl.abs(t) * (8 * 5.960464477539063e-08)   # the addition, scale's float32 value, the product
        out = r.to(tl.int64) * T + toks
        tl.store(s_ptr + out, s, mask=tmask)
        tl.store(ub_ptr + out, ub, mask=tmask)
        sm = tl.max(tl.reshape(tl.where(tmask, s, float("-inf")), (NSUB, 16)), axis=1)
        sub = blk * NSUB + tl.arange(0, NSUB)
        tl.store(smax_ptr + r.to(tl.int64) * NS + sub, sm, mask=sub < NS)


def _gamma(n: int, u: float) -> float:
    return n * u / (1 - n * u)


def scan_constants(bits: int, D: int) -> tuple[float, float, float, float]:
    """(a_fac, rnd_fac, grow) of the scan's bound: the host-side rounding analysis."""
    levels = (1 << bits) - 1
    eta = 4.0 * (levels + 2) * 2.0 ** -53 + 4 * U32      # metadata rounding + float32 product a·w
    a_fac = (0.5 + eta) * (1 + 4 * U32)
    rnd_fac = 5 * _gamma(D + 2, U32) * (1 + 4 * U32)    # 4γ_{D+2} covers the scan; + one γ for rnd's own sum
    grow = 1 + 2 * _gamma(D + 3, U32)
    return a_fac, rnd_fac, grow


def sketch_scan_bound(q, codes, offset, step, *, bits: int, group: int, scale: float,
                      block_tokens: int | None = None, one_sided: bool = True, num_warps: int | None = None):
    """Launch the scan. ``q`` (B·Hq, D) float32; ``codes`` (B·Hkv, T, W) uint8; ``offset``/``step``
    (B·Hkv, Gr, D) float16/float32. Returns (s float32 (B·Hq, T), ub float32 (B·Hq, T),
    smax float32 (B·Hq, ⌈T/16⌉)). ``num_warps`` defaults to 1 (fastest on an H200 for both bounds): with
    a (BM, D·b/8) byte tile a thread then holds 16 contiguous bytes of a few tokens, so the sums over
    channels are mostly in-thread and the per-channel setup is shared by those tokens (instruction
    counts per code from the compiled SASS for sm_90, D = 128, BM = 64: two-sided int4 6.9 / int8 6.2
    at 1 warp, one-sided 15.0 / 14.8 at 1-2 warps, 24 / 17 at 4 warps).

    >>> # see tests/test_gpu_sketch_fused.py: fused_sketch_step(q, K, V, codes, offset, step, vmax, ...)
    """
    import torch
    R, D = q.shape
    RK, T, W = codes.shape
    BM = block_tokens or min(group, 64)
    assert D % 2 == 0 and group % BM == 0 and BM % SUB == 0 and R % RK == 0
    NS = triton.cdiv(T, SUB)
    s = torch.empty((R, T), dtype=torch.float32, device=q.device)
    ub = torch.empty((R, T), dtype=torch.float32, device=q.device)
    smax = torch.empty((R, NS), dtype=torch.float32, device=q.device)
    a_fac, rnd_fac, grow = scan_constants(bits, D)
    _sketch_scan_bound_kernel[(RK, triton.cdiv(T, BM))](
        q, codes, offset, step, s, ub, smax, T, NS, offset.shape[1], W, group,
        float(scale), a_fac, rnd_fac, grow, G=R // RK, BITS=bits, D=D, BM=BM, ONE_SIDED=one_sided,
        num_warps=num_warps or 1)
    return s, ub, smax
