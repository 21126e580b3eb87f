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

import os

import triton
import triton.language as tl

U32 = 2.0 ** -24
SUB = 16                                          # tokens per entry of ``smax``


@triton.jit
def _codes_at(w, P: tl.constexpr, BITS: tl.constexpr, ASM: tl.constexpr):
    """Codes at position P of each 32-bit word as float32: 4-bit → x = 1 + c/16 (the float bits
    0x3F800000 | c << 19, exact; one shift and one AND-OR), 8-bit → c (2²³ + c exact, minus 2²³).
    ``ASM`` (compiled kernels only; the interpreter has no PTX) makes the 4-bit AND-OR one ``lop3``."""
    if BITS == 4:
        SH: tl.constexpr = 19 - 4 * P
        if SH >= 0:
            t = w << SH
        else:
            t = w >> (-SH)
        if ASM:
            return tl.inline_asm_elementwise("lop3.b32 $0, $1, 0x780000, 0x3F800000, 0xEA;", "=r,r", [t],
                                             dtype=tl.int32, is_pure=True, pack=1).to(tl.float32, bitcast=True)
        return ((t & 0x780000) | 0x3F800000).to(tl.float32, bitcast=True)
    else:                                  # (ptxas already extracts and ORs a byte in two ops here)
        return (((w >> (8 * P)) & 255) | 0x4B000000).to(tl.float32, bitcast=True) - 8388608.0


@triton.jit
def _sketch_scan_bound_kernel(q_ptr, words_ptr, off_ptr, step_ptr, s_ptr, ub_ptr, smax_ptr,
                              T, NS, Gr, group, scale, a_fac, rnd_fac, grow, x_fac,
                              seq_ptr, len_ptr, table_ptr, table_stride, Hkv,
                              G: tl.constexpr, BITS: tl.constexpr, D: tl.constexpr, BM: tl.constexpr,
                              ONE_SIDED: tl.constexpr, ASM: tl.constexpr = False, PAGED: tl.constexpr = False):
    row_kv = tl.program_id(0)                     # b·Hkv + kvh
    blk = tl.program_id(1)
    LEV: tl.constexpr = (1 << BITS) - 1
    NPOS: tl.constexpr = 32 // BITS                # codes per 32-bit word
    NW: tl.constexpr = D // NPOS                   # words per token
    NSUB: tl.constexpr = BM // 16
    toks = blk * BM + tl.arange(0, BM)
    k = tl.arange(0, NW)
    if PAGED:
        # paged cache: block = logical page blk of sequence seq (BM = page size = quantization group);
        # the sketch store is (pages, Hkv, S, W) bytes and (pages, Hkv, D) metadata; T is the longest
        # row, each row's own length comes from the cache
        seq = tl.load(seq_ptr + row_kv // Hkv)
        tmask = toks < tl.load(len_ptr + seq)
        phys = tl.load(table_ptr + seq.to(tl.int64) * table_stride + blk).to(tl.int64)
        slot = phys * Hkv + row_kv % Hkv
        meta = slot * D
        wrow = words_ptr + slot * BM * NW
        w = tl.load(wrow + ((tl.arange(0, BM) * NW)[:, None] + k[None, :]), mask=tmask[:, None], other=0)
    else:
        tmask = toks < T
        g = (blk * BM) // group
        meta = (row_kv.to(tl.int64) * Gr + g) * D
        # int64 row offset on the scalar pointer, int32 offsets inside the row: keeps the tile's
        # contiguity visible to the compiler (16-byte vector loads, a few tokens' words per thread)
        wrow = words_ptr + row_kv.to(tl.int64) * T * NW
        w = tl.load(wrow + (tl.multiple_of(toks * NW, 4)[:, None] + k[None, :]), mask=tmask[:, None], other=0)
    dc = tl.arange(0, D)                           # all channels, distributed: the block's scalars
    o_all = tl.load(off_ptr + meta + dc).to(tl.float32)
    st_all = tl.load(step_ptr + meta + dc).to(tl.float32)
    R_all = tl.maximum(tl.abs(o_all), tl.abs(o_all + LEV * st_all))
    for i in tl.static_range(G):
        r = row_kv * G + i                         # = b·Hq + h since h = kvh·G + i
        q_all = tl.load(q_ptr + r * D + dc)
        v_all = q_all * st_all
        qo = tl.sum(q_all * o_all)
        aq = tl.sum((st_all * a_fac) * tl.abs(q_all))
        rnd = tl.sum(tl.abs(q_all) * R_all)
        acc = tl.zeros((BM, NW), tl.float32)
        sacc = tl.zeros((BM, NW), tl.float32)
        for P in tl.static_range(NPOS):
            ch = k * NPOS + P
            q = tl.load(q_ptr + r * D + ch)
            st = tl.load(step_ptr + meta + ch).to(tl.float32)
            x = _codes_at(w, P, BITS, ASM)
            acc = tl.fma(x, (q * st)[None, :], acc)
            if ONE_SIDED:
                # indicator [c = 0] where q < 0, [c = L] where q > 0: max(α·c + γ, 0), exact; for
                # 4-bit codes in terms of x = 1 + c/16: α·c + γ = 16α·x + (γ − 16α)
                neg = q < 0.0
                alpha = tl.where(neg, -1.0, 1.0)
                gam = tl.where(neg, 1.0, 1.0 - LEV)
                if BITS == 4:
                    ind = tl.maximum(tl.fma(x, (16.0 * alpha)[None, :], (gam - 16.0 * alpha)[None, :]), 0.0)
                else:
                    ind = tl.maximum(tl.fma(x, alpha[None, :], gam[None, :]), 0.0)
                sacc = tl.fma(ind, ((st * a_fac) * tl.abs(q))[None, :], sacc)
        dot = tl.sum(acc, axis=1)
        if BITS == 4:                              # Σ v·x = Σ v + Σ v·c/16
            dot = (dot - tl.sum(v_all)) * 16.0
        s = dot + qo
        e = (aq + rnd * rnd_fac + x_fac * tl.sum(tl.abs(v_all))) * grow
        if ONE_SIDED:
            # the savings' float32 sum (exact products of β by 0/1) is within γ_D of itself
            e = e - tl.sum(sacc, axis=1) * (2.0 - grow)
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
    """(a_fac, rnd_fac, grow, x_fac) of the scan's bound: the host-side rounding analysis."""
    levels = (1 << bits) - 1
    eta = 4.0 * (levels + 2) * 2.0 ** -53 + 4 * U32      # metadata rounding + float32 product a·w
    a_fac = (0.5 + eta) * (1 + 4 * U32)
    rnd_fac = 5 * _gamma(D + 2, U32) * (1 + 4 * U32)    # 4γ_{D+2} covers Σq·o, v = q·δ and the adds; + one γ for rnd's own sum
    grow = 1 + 2 * _gamma(D + 3, U32)
    # 4-bit: Σ v·c = 16·(Σ v·x − Σ v) with |v·x| ≤ 2|v|: the two sums and the difference are within
    # 3γ_{D+1}·Σ|v| before the (exact) ×16
    x_fac = 16 * 3 * _gamma(D + 2, U32) * (1 + 4 * U32) if bits == 4 else 0.0
    return a_fac, rnd_fac, grow, x_fac


def sketch_scan_bound(q, codes, offset, step, *, bits: int, group: int, scale: float,
                      block_tokens: int | None = None, one_sided: bool = True, num_warps: int | None = None):
    """Launch the scan. ``q`` (B·Hq, D) float32; ``codes`` (B·Hkv, T, W) uint8 with W = D·bits/8 a
    multiple of 4 (read as 32-bit words); ``offset``/``step`` (B·Hkv, Gr, D) float16/float32. Returns
    (s float32 (B·Hq, T), ub float32 (B·Hq, T), smax float32 (B·Hq, ⌈T/16⌉)).

    ``num_warps`` defaults to 1: a thread then holds 16 contiguous bytes of a few tokens, so the sums
    over channels are in-thread FMA chains and the per-channel setup is shared by those tokens.
    SASS instructions per code (sm_90, D = 128, group 64, one warp, with the lop3): int4 5.2 two-sided /
    9.2 one-sided; without it 6.2 / 10.2 (measured with ``cuobjdump`` on the compiled kernel).

    >>> # see tests/test_gpu_sketch_fused.py: fused_sketch_step(q, K, V, codes, offset, step, vmax, ...)
    """
    import torch
    R, D = q.shape
    RK, T, W = codes.shape
    BM = block_tokens or min(group, 64)
    assert D * bits == 8 * W and W % 4 == 0, "codes must be (rows, T, D·bits/8) with D·bits a multiple of 32"
    assert D & (D - 1) == 0 and group % BM == 0 and BM % SUB == 0 and R % RK == 0
    words = codes.view(torch.int32)
    NS = triton.cdiv(T, SUB)
    s = torch.empty((R, T), dtype=torch.float32, device=q.device)
    ub = torch.empty((R, T), dtype=torch.float32, device=q.device)
    smax = torch.empty((R, NS), dtype=torch.float32, device=q.device)
    a_fac, rnd_fac, grow, x_fac = scan_constants(bits, D)
    # one PTX lop3 per code for the AND-OR (ptxas otherwise emits two): NVIDIA devices, compiled only
    asm = _use_asm(q)
    _sketch_scan_bound_kernel[(RK, triton.cdiv(T, BM))](
        q, words, offset, step, s, ub, smax, T, NS, offset.shape[1], group,
        float(scale), a_fac, rnd_fac, grow, x_fac, q, q, q, 0, 1, G=R // RK, BITS=bits, D=D, BM=BM,
        ONE_SIDED=one_sided, ASM=asm, num_warps=num_warps or 1)
    return s, ub, smax


def _use_asm(q) -> bool:
    import torch
    return q.is_cuda and torch.version.hip is None and os.environ.get("TRITON_INTERPRET", "0") != "1"


def paged_sketch_scan_bound(q, store, cache, seq_idx, T: int, *, scale: float, one_sided: bool = True,
                            num_warps: int | None = None):
    """The same scan over a paged cache's sketch store (``vashista_gpu.sketch.TorchPageSketchStore``,
    quantization group = page): ``q`` (B·Hq, D) float32, ``seq_idx`` (B,) int32 sequence ids, ``T`` ≥
    every sequence's length. Returns (s, ub, smax) as :func:`sketch_scan_bound` for rows of length T,
    −inf past each sequence's end."""
    import torch
    R, D = q.shape
    N, Hkv, S, W = store.codes.shape
    B = seq_idx.shape[0]
    bits = store.bits
    assert D * bits == 8 * W and W % 4 == 0 and D & (D - 1) == 0 and S % SUB == 0 and R % (B * Hkv) == 0
    NS = triton.cdiv(T, SUB)
    s = torch.full((R, T), float("-inf"), dtype=torch.float32, device=q.device)
    ub = torch.full((R, T), float("-inf"), dtype=torch.float32, device=q.device)
    smax = torch.full((R, NS), float("-inf"), dtype=torch.float32, device=q.device)
    a_fac, rnd_fac, grow, x_fac = scan_constants(bits, D)
    table = cache.block_table
    _sketch_scan_bound_kernel[(B * Hkv, triton.cdiv(T, S))](
        q, store.codes.view(torch.int32), store.offset, store.step, s, ub, smax, T, NS, 1, S,
        float(scale), a_fac, rnd_fac, grow, x_fac, seq_idx, cache.seq_lens, table, table.stride(0), Hkv,
        G=R // (B * Hkv), BITS=bits, D=D, BM=S, ONE_SIDED=one_sided, ASM=_use_asm(q), PAGED=True,
        num_warps=num_warps or 1)
    return s, ub, smax
