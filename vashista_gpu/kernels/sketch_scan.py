"""Triton kernel: the certified-mode sketch scan with its per-token upper bounds, in one pass over the
sketch (SPEC 3b), with the dot products on the tensor cores. For query head h (KV head h // G) and
token j of quantization group g = j // group:

    ŝ_j  = Σ_d q_d·(o_{g,d} + δ_{g,d}·c_{j,d})                                           (float32)
    ub_j = scale·(ŝ_j + e⁺_j),   e⁺_j = Σ_d a_{g,d}·w_{j,d} + (float32 and tensor-core allowances)

with a = δ·(½ + η) (η covers the rounding of the metadata, as in ``vashista_gpu.sketch``) and the
one-sided weights w_{j,d} = q_d⁺ when c_{j,d} = 0 (the key lies above its code's point), q_d⁻ when
c_{j,d} = L = 2^b − 1, |q_d| otherwise. Written as  e⁺ = Σ a|q| − S_j  with the one-sided savings

    S_j = Σ_d b0_d·[c=0] + bL_d·[c=L],   b0 = a·q⁻,  bL = a·q⁺
        = Σ_d b0_d − Σ_d b0_d·min(c, 1) + Σ_d bL_d·max(c − L + 1, 0).

Why tensor cores: per code the previous CUDA-core scan converted, multiplied and did two compares and
two selects; at 8.6·10⁹ codes per step (paper shapes, 128k) that made it compute-bound at 20-46 % of
copy bandwidth. Here the codes become float16 with two integer ops (``0x6400 | c`` is the float16
1024 + c, exact, minus 1024; then centred, c − 2^(b−1), which halves the products' magnitudes and
with them the accumulation allowance below — Σ q·o becomes Σ q·(o + 2^(b−1)δ)), min(c, 1) and max(c − L + 1, 0) are two packed min/max, and the three
sums are one (BM × K) @ (K × N) product each with float32 accumulation:

    columns  [slot 0: (q·δ)·σ_h rounded to float16 (hi) | slot 1: the float16 remainder (lo) |
              slot 2: b0·σ'_h, bL·σ'_h (float16) | slot 3: unused]   for each query head h,

σ, σ' powers of two per head and block that put the largest entry near 2¹³ (no float16 overflow
or underflow). Everything lost is bounded and added to e⁺ (so ŝ ≤ true + e⁺ still holds):
  * the residuals r = x·σ − hi − lo (exact in float32) contribute 2^(b−1)·Σ|r|/σ;
  * the tensor-core accumulation: products of float16 numbers are exact in float32; the sums are
    modelled with error ≤ K·2⁻²² per unit of Σ|terms| (K the reduction length) — 8× the worst case
    of the alignment-and-truncation adders measured on NVIDIA tensor cores (Fasi, Higham, Mikaitis,
    Pranesh 2021), and NumPy's float32 matmul under the Triton interpreter is within it too;
  * the savings are only ever subtracted after lowering them by their own error bound.
The float32 part (Σ q·o, the additions) stays covered by 5γ_{D+2}(2⁻²⁴)·Σ|q|R, R = max(|o|, |o + Lδ|),
as in the reference; e⁺ and ŝ + e⁺ are rounded outward by a few float32 units.

Outputs per (row r = b·Hq + h, token j): ``s`` = ŝ float32 (the selection score), ``ub`` float32
(the certificate's token bound), and ``bmax`` (row, block) = max_j ŝ over the block's tokens (the
threshold selection in ``select_above.py``).

One program per (batch row × KV head, BM tokens): each code byte and each metadata element is loaded
once and serves the G query heads of the KV head (GQA). ``BM`` divides ``group`` so a block lies in
one quantization group. 4-bit codes are unpacked from a (BM, D/2) byte tile as the even (low nibble)
and odd (high nibble) channels, each its own product into the same accumulator.
"""
from __future__ import annotations

import triton
import triton.language as tl

U32 = 2.0 ** -24
TC_U = 2.0 ** -22        # tensor-core accumulation model: error ≤ K·TC_U·Σ|terms|


@triton.jit
def _pow2_scale(m):
    """Power of two σ with m·σ in [2¹³, 2¹⁴) (clamped to normal float32), and 1/σ: exact scalings."""
    eb = (m.to(tl.int32, bitcast=True) >> 23) & 0xFF
    sb = tl.minimum(tl.maximum(267 - eb, 1), 253)
    return (sb << 23).to(tl.float32, bitcast=True), ((254 - sb) << 23).to(tl.float32, bitcast=True)


@triton.jit
def _slot0(x, first, GP: tl.constexpr):
    """The (GP,) per-head values of a per-column vector (every slot of a head holds the same value)."""
    return tl.sum(tl.reshape(x, (4, GP)) * first, axis=0)


@triton.jit
def _code_tiles(codes_ptr, base, tmask, c, cmask, SHIFT: tl.constexpr, BITS: tl.constexpr):
    """float16 code tile (exact integers) and its two savings indicators, from a byte tile."""
    LEV: tl.constexpr = (1 << BITS) - 1
    byte = tl.load(codes_ptr + base[:, None] + c[None, :], mask=tmask[:, None] & cmask[None, :], other=0)
    code = byte.to(tl.int16)
    if BITS == 4:
        code = (code >> SHIFT) & 15
    C0: tl.constexpr = 1 << (BITS - 1)
    one = tl.full((1, 1), 1.0, tl.float16)
    cu = (code | 0x6400).to(tl.float16, bitcast=True) - 1024 * one     # 1024 + c, exact; minus 1024, exact
    mn = tl.minimum(cu, one)                                           # 1 − [c = 0]
    mx = tl.maximum(cu - (LEV - 1) * one, 0 * one)                     # [c = L]
    return cu - C0 * one, mn, mx                                       # centred c − 2^(b−1): halves |terms|


@triton.jit
def _channel_terms(q_ptr, off_ptr, step_ptr, meta, qrow, ch, cmask, qmask, a_fac, LEV: tl.constexpr):
    """(K, N) tiles for one channel set: q broadcast into every column of its head, v = q·δ, the
    savings weights b0 = a·q⁻ and bL = a·q⁺, and the block scalars' per-channel terms."""
    o = tl.load(off_ptr + meta + ch, mask=cmask, other=0.0).to(tl.float32)
    st = tl.load(step_ptr + meta + ch, mask=cmask, other=0.0).to(tl.float32)
    q = tl.load(q_ptr + qrow[None, :] + ch[:, None], mask=cmask[:, None] & qmask[None, :], other=0.0)
    a = (st * a_fac)[:, None]
    v = q * st[:, None]
    b0 = a * tl.maximum(-q, 0.0)
    bL = a * tl.maximum(q, 0.0)
    R = tl.maximum(tl.abs(o), tl.abs(o + LEV * st))[:, None]
    oc = o + ((LEV + 1) // 2) * st                 # the centred codes' offset o + 2^(b−1)·δ, |oc| ≤ R
    return v, b0, bL, q * oc[:, None], a * tl.abs(q), tl.abs(q) * R


@triton.jit
def _b_tiles(v, b0, bL, sv, sb, slot):
    """float16 B operands (slot 0 hi, slot 1 lo of v·σ; slot 2 the savings weights ·σ') and the sums of
    their exact residuals (per column)."""
    w = v * sv[None, :]
    hi = w.to(tl.float16)
    rem = w - hi.to(tl.float32)
    lo = rem.to(tl.float16)
    rv = tl.sum(tl.abs(rem - lo.to(tl.float32)), axis=0)
    w0 = b0 * sb[None, :]
    wL = bL * sb[None, :]
    h0 = w0.to(tl.float16)
    hL = wL.to(tl.float16)
    rb = tl.sum(tl.abs(w0 - h0.to(tl.float32)) + tl.abs(wL - hL.to(tl.float32)), axis=0)
    zero = tl.zeros_like(hi)
    s2 = (slot == 2)[None, :]
    Bv = tl.where((slot == 0)[None, :], hi, tl.where((slot == 1)[None, :], lo, zero))
    B0 = tl.where(s2, -h0, zero)
    BL = tl.where(s2, hL, zero)
    return Bv, B0, BL, rv, rb


@triton.jit
def _sketch_scan_bound_kernel(q_ptr, codes_ptr, off_ptr, step_ptr, s_ptr, ub_ptr, bmax_ptr,
                              T, NB, Gr, W, group, scale, a_fac, rnd_fac, grow,
                              G: tl.constexpr, GP: tl.constexpr, BITS: tl.constexpr, D: tl.constexpr,
                              KP: tl.constexpr, BM: tl.constexpr, ONE_SIDED: tl.constexpr):
    row_kv = tl.program_id(0)                     # b·Hkv + kvh
    blk = tl.program_id(1)
    LEV: tl.constexpr = (1 << BITS) - 1
    NP: tl.constexpr = 4 * GP
    toks = blk * BM + tl.arange(0, BM)
    tmask = toks < T
    meta = (row_kv.to(tl.int64) * Gr + (blk * BM) // group) * D
    base = (row_kv.to(tl.int64) * T + toks.to(tl.int64)) * W
    n = tl.arange(0, NP)
    slot = n // GP
    head = n % GP
    qmask = head < G
    qrow = (row_kv * G + head).to(tl.int64) * D
    c = tl.arange(0, KP)
    if BITS == 4:                                 # even channels = low nibbles, odd = high nibbles
        cm = c < W
        ch_a = 2 * c
        ch_b = 2 * c + 1
        va, b0a, bLa, qoa, aqa, rna = _channel_terms(q_ptr, off_ptr, step_ptr, meta, qrow, ch_a, cm, qmask, a_fac, LEV)
        vb, b0b, bLb, qob, aqb, rnb = _channel_terms(q_ptr, off_ptr, step_ptr, meta, qrow, ch_b, cm, qmask, a_fac, LEV)
        vmax = tl.maximum(tl.max(tl.abs(va), axis=0), tl.max(tl.abs(vb), axis=0))
        bmx = tl.maximum(tl.maximum(tl.max(b0a, axis=0), tl.max(bLa, axis=0)),
                         tl.maximum(tl.max(b0b, axis=0), tl.max(bLb, axis=0)))
        sv, isv = _pow2_scale(vmax)
        sb, isb = _pow2_scale(bmx)
        Bva, B0a, BLa, rva, rba = _b_tiles(va, b0a, bLa, sv, sb, slot)
        Bvb, B0b, BLb, rvb, rbb = _b_tiles(vb, b0b, bLb, sv, sb, slot)
        cfa, mna, mxa = _code_tiles(codes_ptr, base, tmask, c, cm, 0, BITS)
        cfb, mnb, mxb = _code_tiles(codes_ptr, base, tmask, c, cm, 4, BITS)
        acc = tl.dot(cfa, Bva)
        acc = tl.dot(cfb, Bvb, acc)
        if ONE_SIDED:
            acc = tl.dot(mna, B0a, acc)
            acc = tl.dot(mxa, BLa, acc)
            acc = tl.dot(mnb, B0b, acc)
            acc = tl.dot(mxb, BLb, acc)
        qo = tl.sum(qoa, axis=0) + tl.sum(qob, axis=0)
        aq = tl.sum(aqa, axis=0) + tl.sum(aqb, axis=0)
        rnd = tl.sum(rna, axis=0) + tl.sum(rnb, axis=0)
        vsum = tl.sum(tl.abs(va), axis=0) + tl.sum(tl.abs(vb), axis=0)
        b0sum = tl.sum(b0a, axis=0) + tl.sum(b0b, axis=0)
        bsum = b0sum + tl.sum(bLa, axis=0) + tl.sum(bLb, axis=0)
        rv = rva + rvb
        rb = rba + rbb
    else:
        cm = c < D
        va, b0a, bLa, qoa, aqa, rna = _channel_terms(q_ptr, off_ptr, step_ptr, meta, qrow, c, cm, qmask, a_fac, LEV)
        sv, isv = _pow2_scale(tl.max(tl.abs(va), axis=0))
        sb, isb = _pow2_scale(tl.maximum(tl.max(b0a, axis=0), tl.max(bLa, axis=0)))
        Bva, B0a, BLa, rv, rb = _b_tiles(va, b0a, bLa, sv, sb, slot)
        cfa, mna, mxa = _code_tiles(codes_ptr, base, tmask, c, cm, 0, BITS)
        acc = tl.dot(cfa, Bva)
        if ONE_SIDED:
            acc = tl.dot(mna, B0a, acc)
            acc = tl.dot(mxa, BLa, acc)
        qo = tl.sum(qoa, axis=0)
        aq = tl.sum(aqa, axis=0)
        rnd = tl.sum(rna, axis=0)
        vsum = tl.sum(tl.abs(va), axis=0)
        b0sum = tl.sum(b0a, axis=0)
        bsum = b0sum + tl.sum(bLa, axis=0)
    # per column (all columns of a head carry the same values): the allowances of the products —
    # slot 0/1 columns sum NV terms (c − C0)·hi, (c − C0)·lo; slot 2 columns NS terms of weight ≤ 1
    NV: tl.constexpr = KP * (2 if BITS == 4 else 1)
    NS: tl.constexpr = KP * (4 if BITS == 4 else 2)
    C0: tl.constexpr = 1 << (BITS - 1)          # |c − C0| ≤ C0
    e_dot = C0 * (rv * isv + vsum * (NV * 2.384185791015625e-07 * 1.001 + 4 * 5.960464477539063e-08))
    e_sav = rb * isb + bsum * (NS * 2.384185791015625e-07 * 1.001 + 4 * 5.960464477539063e-08)
    # (BM, NP) accumulator → per-(token, head): slot 0 + slot 1 = ŝ − Σq·o, slot 2 = the savings' sums
    acc3 = tl.reshape(acc, (BM, 4, GP))
    cs = tl.reshape(tl.where(slot < 2, isv, 0.0), (4, GP))
    c2 = tl.reshape(tl.where(slot == 2, isb, 0.0), (4, GP))
    dot = tl.sum(acc3 * cs[None, :, :], axis=1)                              # (BM, GP)
    sav = tl.sum(acc3 * c2[None, :, :], axis=1)
    first = tl.reshape(tl.where(slot == 0, 1.0, 0.0), (4, GP))
    qo_h = _slot0(qo, first, GP)
    aq_h = _slot0(aq, first, GP)
    rnd_h = _slot0(rnd, first, GP)
    edot_h = _slot0(e_dot * (1 + 2 ** -16), first, GP)
    esav_h = _slot0(e_sav * (1 + 2 ** -16), first, GP)
    b0_h = _slot0(b0sum, first, GP)
    s = dot + qo_h[None, :]
    e = (aq_h + rnd_h * rnd_fac)[None, :] * grow + edot_h[None, :]
    if ONE_SIDED:
        saving = tl.maximum(b0_h[None, :] + sav - esav_h[None, :], 0.0)
        e = e - saving * (2.0 - grow)
    e = tl.maximum(e + tl.abs(e) * 5.960464477539063e-08 * 2, 0.0)
    t = (s + e) * scale
    ub = t + tl.abs(t) * (8 * 5.960464477539063e-08)   # the addition, scale's float32 value, the product
    h = tl.arange(0, GP)
    rows = (row_kv * G + h).to(tl.int64)
    m2 = tmask[:, None] & (h < G)[None, :]
    out = rows[None, :] * T + toks[:, None]
    tl.store(s_ptr + out, s, mask=m2)
    tl.store(ub_ptr + out, ub, mask=m2)
    bm = tl.max(tl.where(m2, s, float("-inf")), axis=0)
    tl.store(bmax_ptr + rows * NB + blk, bm, mask=h < G)


def _gamma(n: int, u: float) -> float:
    return n * u / (1 - n * u)


def scan_constants(bits: int, D: int) -> tuple[float, float, float]:
    """(a_fac, rnd_fac, grow) of the scan's bound: the host-side rounding analysis."""
    levels = (1 << bits) - 1
    eta = 4.0 * (levels + 2) * 2.0 ** -53 + 4 * U32      # metadata rounding + float32 product a·w
    a_fac = (0.5 + eta) * (1 + 4 * U32)
    rnd_fac = 5 * _gamma(D + 2, U32) * (1 + 4 * U32)    # 4γ_{D+2} covers Σq·o and the adds; + one γ for rnd's own sum
    grow = 1 + 2 * _gamma(D + 3, U32)
    return a_fac, rnd_fac, grow


def sketch_scan_bound(q, codes, offset, step, *, bits: int, group: int, scale: float,
                      block_tokens: int | None = None, one_sided: bool = True, num_warps: int = 4):
    """Launch the scan. ``q`` (B·Hq, D) float32; ``codes`` (B·Hkv, T, W) uint8; ``offset``/``step``
    (B·Hkv, Gr, D) float16/float32. Returns (s float32 (B·Hq, T), ub float32 (B·Hq, T),
    bmax float32 (B·Hq, ⌈T/BM⌉), BM).

    >>> # see tests/test_gpu_sketch_fused.py: fused_sketch_step(q, K, V, codes, offset, step, vmax, ...)
    """
    import torch
    R, D = q.shape
    RK, T, W = codes.shape
    BM = block_tokens or min(group, 64)
    assert D % 2 == 0 and group % BM == 0 and BM >= 16 and R % RK == 0
    G = R // RK
    GP = max(4, triton.next_power_of_2(G))
    KP = max(16, triton.next_power_of_2(W))
    NB = triton.cdiv(T, BM)
    s = torch.empty((R, T), dtype=torch.float32, device=q.device)
    ub = torch.empty((R, T), dtype=torch.float32, device=q.device)
    bmax = torch.empty((R, NB), dtype=torch.float32, device=q.device)
    a_fac, rnd_fac, grow = scan_constants(bits, D)
    _sketch_scan_bound_kernel[(RK, NB)](q, codes, offset, step, s, ub, bmax, T, NB, offset.shape[1], W, group,
                                       float(scale), a_fac, rnd_fac, grow, G=G, GP=GP, BITS=bits, D=D, KP=KP,
                                       BM=BM, ONE_SIDED=one_sided, num_warps=num_warps)
    return s, ub, bmax, BM
