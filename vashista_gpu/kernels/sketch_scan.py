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

Integer dots (``INTDOT``, the default whenever int32 cannot overflow). Per block and query head,
v = q·δ is rounded to int16, ṽ = round(v/sv) with sv the power of two ≥ max|v|/32767, and
Σ_d v_d·c_{j,d} is taken as sv·Σ_d ṽ_d·c_{j,d}, an exact int32 dot of two codes per instruction (PTX
``dp2a``; int4 codes are first spread into bytes, even and odd nibbles; int8 codes already are
bytes). The rounding costs |Σ v·c − sv·Σ ṽ·c| ≤ L·Σ_d |v_d − sv·ṽ_d|: the residuals are computed
exactly (one fma each) and added to e⁺. One-sided, the savings are a second integer dot,
sβ/128·Σ_d β̃_d·z_{j,d} with β̃ = ⌊β·(1 − 8u)/sβ⌋ (rounded *down*: the savings may only shrink) and
z = 0x80 in the bytes where c = t (one XOR of the word with the target codes, then a zero-byte test:
an add and a logic op). The per-block setup (ṽ, β̃, the targets) is computed on a (words × positions)
tile spread over the warp, not on the token tile's replicated (words,) vectors.

What it costs and buys (SmolLM2 heads; sm_90 SASS; H200 at 128k, paper shapes): the certificate
loosens by 0.4 % (median, at most 1.4 %); the selection score ŝ carries the int16 rounding too
(|Δŝ| ≤ L·Σ residuals, ~2⁻¹⁵·L·max|v| per channel), so candidates differ from the reference's only
between tokens whose reference scores are that close. Instructions per code (D = 128, group 64): int4
two-sided 2.9 / one-sided 5.3 (the float dots below: 5.2 / 9.3), int8 2.7 / 5.3 (6.2 / 10.3). For 16-
and 32-token groups several groups share one 64-token program (``NG``: the per-program loads, the
reductions over channels and the epilogue are shared): int4 group 16 two-sided 6.8 → 4.5 instructions
per code. The int4 scan went from 66 % to 89-103 % of copy bandwidth two-sided at group 64 and from
40 % to 89 % at group 16.

Float dots (the fallback): a code becomes float32 with one OR and one subtraction — ``c | 0x4B000000``
is the float 2²³ + c, exact (int4: 1 + c/16 with one PTX ``lop3``) — then one FMA for ŝ; the savings
cost two FMAs and a max. ŝ as Σ q·o + Σ (q·δ)·c has |δ·c| ≤ 2R, so its float32 error stays within
4γ_{D+2}·Σ|q|R; e⁺ and ŝ + e⁺ are rounded outward by a few float32 units, so ub_j ≥ scale·⟨q, k_j⟩
for the true key whatever the rounding. (The first scan converted every code with a quarter-rate
integer-to-float instruction and ran compute-bound at 20-46 % of copy bandwidth on an H100.)

Outputs per (row r = b·Hq + h, token j): ``s`` = ŝ float32 (the selection score), ``ub`` float32
(the certificate's token bound), and ``smax`` (row, ⌈T/16⌉) = the largest ŝ of every 16 tokens,
from which ``select_above.py``'s threshold is taken.

Slack (``bounds="slack"``, two-sided bounds, what the certified steps use then): a two-sided token's
bound is its group's constant e added to ŝ_j, ub_j = t + 8u|t| with t = (ŝ_j + e)·scale, so the scan
writes e once per group (rows, groups) instead of ub per token and query head, and the certificate's
log-sum-exp (``row_lse.row_lse_chunks``) derives ub_j from the ŝ it reads anyway — the same float32
operations on the same values. (Writing per-16-token block bounds in the scan instead — max, sum of
exponentials — was tried in the eighth session and made the scan 1.5× slower: RESULTS.md.)

One program per (BM tokens, batch row × KV head), consecutive programs on consecutive blocks of a row
(2-6 % faster than row-major on an H200): each code byte and each metadata element is loaded once and
serves the G query heads of the KV head (GQA). A block lies in one quantization group (``BM`` divides
``group``), or, with the integer dots, holds NG = 64/group whole groups of 16 or 32 tokens, whose
metadata is an (NG, D) tile. 4-bit codes are unpacked from a (BM, D/2) byte tile as the even (low
nibble) and odd (high nibble) channels.
"""
from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

from vashista_core.rounding import U32, gamma

__all__ = ["SUB", "outward_slack", "paged_sketch_scan_bound", "pow2_at_least", "scan_constants", "sketch_scan_bound",
           "sketch_scores", "step_bounds", "token_bound", "use_int_dot"]
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
def _dp2a(a, b, c, HI: tl.constexpr, ASM: tl.constexpr):
    """c + a.lo16·b.byte(0|2) + a.hi16·b.byte(1|3) in int32 (PTX ``dp2a``: two signed 16-bit × two
    unsigned 8-bit products and the add in one instruction); exact, and the same integers without
    ``ASM`` (the interpreter has no PTX)."""
    if ASM:
        if HI:
            return tl.inline_asm_elementwise("dp2a.hi.s32.u32 $0, $1, $2, $3;", "=r,r,r,r", [a, b, c],
                                             dtype=tl.int32, is_pure=True, pack=1)
        return tl.inline_asm_elementwise("dp2a.lo.s32.u32 $0, $1, $2, $3;", "=r,r,r,r", [a, b, c],
                                         dtype=tl.int32, is_pure=True, pack=1)
    SH: tl.constexpr = 16 if HI else 0
    return c + ((a << 16) >> 16) * ((b >> SH) & 255) + (a >> 16) * ((b >> (SH + 8)) & 255)


@triton.jit
def pow2_at_least(x):
    """The smallest power of two ≥ x ≥ 0 (at least 2⁻¹²⁶): round the float's bits up to a bare exponent."""
    b = x.to(tl.int32, bitcast=True)
    return tl.maximum(((b + 0x7FFFFF) & 0x7F800000).to(tl.float32, bitcast=True), 1.1754943508222875e-38)


@triton.jit
def _slot_words(fields, slot):
    """The four dp2a operand words per (group, word): sums — ORs, the bit fields are disjoint — of the
    shifted int16 ``fields`` (NG, NW, NPOS) over the positions of each slot; (NG, 1, NW) each."""
    return (tl.sum(tl.where(slot == 0, fields, 0), axis=2)[:, None, :],
            tl.sum(tl.where(slot == 1, fields, 0), axis=2)[:, None, :],
            tl.sum(tl.where(slot == 2, fields, 0), axis=2)[:, None, :],
            tl.sum(tl.where(slot == 3, fields, 0), axis=2)[:, None, :])


@triton.jit
def _slot_dot(a0, a1, a2, a3, ev, od, BITS: tl.constexpr, ASM: tl.constexpr):
    """Σ over a word's codes of (int16 weight)·(byte) in int32: int4 — slots 0/1 against the bytes of
    ``ev`` (even nibbles), 2/3 against ``od`` (odd nibbles); int8 — slots 0/1 against ``ev`` (the
    word's bytes; ``od`` unused)."""
    acc = tl.zeros(ev.shape, tl.int32)
    acc = _dp2a(tl.broadcast_to(a0, ev.shape), ev, acc, False, ASM)
    acc = _dp2a(tl.broadcast_to(a1, ev.shape), ev, acc, True, ASM)
    if BITS == 4:
        acc = _dp2a(tl.broadcast_to(a2, ev.shape), od, acc, False, ASM)
        acc = _dp2a(tl.broadcast_to(a3, ev.shape), od, acc, True, ASM)
    return acc


@triton.jit
def outward_slack(e):
    """A slack e rounded up over its own evaluation, max(e + 2u|e|, 0): every token's e⁺ in the scan
    and, with ``SLACK``, each group's written slack — one expression, so both are the same number."""
    return tl.maximum(e + tl.abs(e) * 5.960464477539063e-08 * 2, 0.0)


@triton.jit
def token_bound(s, e, scale):
    """ub = t + 8u|t|, t = (ŝ + e)·scale (the addition, scale's float32 value, the product): ≥ scale·⟨q, k⟩
    for e ≥ the token's slack. The scan's bound, and the one ``row_lse`` derives from ŝ and a slack."""
    t = (s + e) * scale
    return t + tl.abs(t) * (8 * 5.960464477539063e-08)


@triton.jit
def _sketch_scan_bound_kernel(q_ptr, words_ptr, off_ptr, step_ptr, s_ptr, ub_ptr, smax_ptr,
                              T, NS, Gr, group, scale, a_fac, rnd_fac, grow, x_fac, ri_fac,
                              seq_ptr, len_ptr, table_ptr, table_stride, Hkv, NGR,
                              G: tl.constexpr, BITS: tl.constexpr, D: tl.constexpr, BM: tl.constexpr,
                              ONE_SIDED: tl.constexpr, ASM: tl.constexpr = False, PAGED: tl.constexpr = False,
                              INTDOT: tl.constexpr = False, BLK_FIRST: tl.constexpr = False, NG: tl.constexpr = 1,
                              SLACK: tl.constexpr = False):
    # SLACK (two-sided only): ``ub_ptr`` receives each group's slack e (rows, NGR) instead of the token
    # bounds (rows, T): ub_j = outward((ŝ_j + e)·scale) is derived where it is read (module doc)
    if BLK_FIRST:     # consecutive programs read consecutive blocks of one row (2-6 % faster on an H200)
        blk = tl.program_id(0)
        row_kv = tl.program_id(1)
    else:
        row_kv = tl.program_id(0)                     # b·Hkv + kvh
        blk = tl.program_id(1)
    LEV: tl.constexpr = (1 << BITS) - 1
    NPOS: tl.constexpr = 32 // BITS                # codes per 32-bit word
    NW: tl.constexpr = D // NPOS                   # words per token
    NSUB: tl.constexpr = BM // 16
    GS: tl.constexpr = BM // NG                    # tokens per quantization group of the block (NG > 1)
    gi = tl.arange(0, NG)
    k = tl.arange(0, NW)
    tok3 = blk * BM + gi[:, None] * GS + tl.arange(0, GS)[None, :]          # (NG, GS)
    if PAGED:
        # paged cache: block = NG logical pages blk·NG + gi of sequence seq (page size = quantization
        # group = GS); the sketch store is (pages, Hkv, S, W) bytes and (pages, Hkv, D) metadata; T is
        # the longest row, each row's own length comes from the cache. Pages past the row's end are
        # neither looked up nor read (their table entries may not be reserved).
        seq = tl.load(seq_ptr + row_kv // Hkv)
        n = tl.load(len_ptr + seq)
        tmask3 = tok3 < n
        lp = blk * NG + gi                         # (NG,) logical pages
        gmask = lp * GS < n
        gidx = lp
        phys = tl.load(table_ptr + seq.to(tl.int64) * table_stride + lp, mask=gmask, other=0).to(tl.int64)
        slot = phys * Hkv + row_kv % Hkv
        meta = slot * D                            # (NG,)
        w3 = tl.load(words_ptr + (slot * GS * NW)[:, None, None] + ((tok3 - lp[:, None] * GS) * NW)[:, :, None]
                     + k[None, None, :], mask=tmask3[:, :, None], other=0)
    else:
        tmask3 = tok3 < T
        g = (blk * BM + gi * GS) // group          # (NG,) the block's quantization groups
        gmask = g < Gr
        gidx = g
        meta = (row_kv.to(tl.int64) * Gr + g) * D
        # int64 row offset on the scalar pointer, int32 offsets inside the row: keeps the tile's
        # contiguity visible to the compiler (16-byte vector loads, a few tokens' words per thread)
        wrow = words_ptr + row_kv.to(tl.int64) * T * NW
        w3 = tl.load(wrow + (tl.multiple_of(tok3 * NW, [4, 4])[:, :, None] + k[None, None, :]),
                     mask=tmask3[:, :, None], other=0)
    dc = tl.arange(0, D)                           # all channels, distributed: the groups' scalars
    o2 = tl.load(off_ptr + meta[:, None] + dc[None, :], mask=gmask[:, None], other=0.0).to(tl.float32)   # (NG, D)
    st2 = tl.load(step_ptr + meta[:, None] + dc[None, :], mask=gmask[:, None], other=0.0).to(tl.float32)
    R2 = tl.maximum(tl.abs(o2), tl.abs(o2 + LEV * st2))
    tmask = tl.reshape(tmask3, (BM,))
    toks = blk * BM + tl.arange(0, BM)
    for i in tl.static_range(G):
        r = row_kv * G + i                         # = b·Hq + h since h = kvh·G + i
        q1 = tl.load(q_ptr + r * D + dc)[None, :]
        v2 = q1 * st2
        qo = tl.sum(q1 * o2, axis=1)               # (NG,) per group
        aq = tl.sum((st2 * a_fac) * tl.abs(q1), axis=1)
        rnd = tl.sum(tl.abs(q1) * R2, axis=1)
        sv_abs = tl.sum(tl.abs(v2), axis=1)
        if INTDOT:
            # Σ_d v_d·c_d as sv·Σ_d ṽ_d·c_d in exact int32 (PTX dp2a), ṽ = round(v/sv) in int16, sv the
            # power of two with max|v|/sv ≤ 32767, per group; the residuals |v − sv·ṽ| enter e⁺ (times
            # L). One-sided: the savings Σ_d β_d·[c_d = t_d] as sβ/128·Σ_d β̃_d·(0x80 where c_d = t_d),
            # β̃ = ⌊β⁻/sβ⌋ ≤ β/sβ (rounded down: the savings may only shrink), the indicator bytes from
            # one XOR with the target codes and a zero-byte test. The setup is a (groups, words,
            # positions) tile spread over the warp (the token tile's (words,) vectors are replicated
            # across its token rows: computing there repeated the per-channel work 8 times); words
            # hold two int16 per dp2a as sums of disjoint bit fields (= their OR): int4 slot 0/1 =
            # even nibbles (0, 2) / (4, 6), slot 2/3 = odd nibbles (1, 3) / (5, 7); int8 slot 0/1 =
            # bytes (0, 1) / (2, 3). Several 16- or 32-token groups share one program (NG).
            sv = pow2_at_least(tl.max(tl.abs(v2), axis=1) * (1.0 / 32767.0))          # (NG,)
            pp = tl.arange(0, NPOS)[None, None, :]
            ch = k[None, :, None] * NPOS + pp                                            # (1, NW, NPOS)
            q3 = tl.load(q_ptr + r * D + ch)
            st3 = tl.load(step_ptr + meta[:, None, None] + ch, mask=gmask[:, None, None], other=0.0).to(tl.float32)
            v3 = q3 * st3                                                                # (NG, NW, NPOS)
            t3 = tl.fma(v3, (1.0 / sv)[:, None, None], 12582912.0)   # 1.5·2²³ + round(v/sv): low 16 bits = ṽ
            res = tl.sum(tl.sum(tl.abs(tl.fma(-sv[:, None, None], t3 - 12582912.0, v3)), axis=2), axis=1)
            if BITS == 4:
                half = 16 * ((pp // 2) % 2)
                slot = (pp % 2) * 2 + pp // 4
            else:
                half = 16 * (pp % 2)
                slot = pp // 2
            wv = (t3.to(tl.int32, bitcast=True) & 0xFFFF) << half
            p0, p1, p2, p3 = _slot_words(wv, slot)
            if BITS == 4:
                iacc = _slot_dot(p0, p1, p2, p3, w3 & 0x0F0F0F0F, (w3 >> 4) & 0x0F0F0F0F, BITS, ASM)
            else:
                iacc = _slot_dot(p0, p1, p2, p3, w3, w3, BITS, ASM)
            s3 = tl.sum(iacc, axis=2).to(tl.float32) * sv[:, None] + qo[:, None]         # (NG, GS)
            eg = (aq + rnd * rnd_fac + x_fac * sv_abs + res * ri_fac) * grow + 1e-30     # (NG,) two-sided e
            e3 = eg[:, None] + tl.zeros((NG, GS), tl.float32)
            if ONE_SIDED:
                sb = pow2_at_least(tl.max((st2 * a_fac) * tl.abs(q1), axis=1) * (1.0 / 32767.0))   # (NG,)
                cb = (a_fac * (1.0 - 8 * 5.960464477539063e-08)) * (1.0 / sb)   # β̃ = ⌊δ·cb·|q|⌋ ≤ a|q|/sβ
                bt = tl.floor((st3 * cb[:, None, None]) * tl.abs(q3))
                wb = ((bt + 12582912.0).to(tl.int32, bitcast=True) & 0xFFFF) << half
                b0, b1, b2, b3 = _slot_words(wb, slot)
                # target codes: L in the positions where q > 0 (an int32 whatever the top bit)
                tq = tl.sum(tl.where(q3 > 0.0, LEV << (BITS * pp), 0), axis=2).to(tl.int32)    # (1, NW)
                x = w3 ^ tq[:, None, :]                    # 0 where the code is its target
                if BITS == 4:
                    zev = (((x & 0x0F0F0F0F) + 0x7F7F7F7F) ^ -1) & -2139062144   # 0x80: that nibble is 0
                    zod = ((((x >> 4) & 0x0F0F0F0F) + 0x7F7F7F7F) ^ -1) & -2139062144
                    sacc = _slot_dot(b0, b1, b2, b3, zev, zod, BITS, ASM)
                else:
                    z = ((((x & 0x7F7F7F7F) + 0x7F7F7F7F) | x) ^ -1) & -2139062144   # 0x80: that byte is 0
                    sacc = _slot_dot(b0, b1, b2, b3, z, z, BITS, ASM)
                # exact integer savings; float32 conversion lowered by one unit, ×sβ/128 exact
                e3 = e3 - tl.sum(sacc, axis=2).to(tl.float32) * (1.0 - 2 * 5.960464477539063e-08) * (sb * 0.0078125)[:, None]
            s = tl.reshape(s3, (BM,))
            e = tl.reshape(e3, (BM,))
        else:                                      # float dots, one group per block (NG = 1)
            w = tl.reshape(w3, (BM, NW))
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
                dot = (dot - tl.sum(tl.sum(v2, axis=1))) * 16.0
            s = dot + tl.sum(qo)
            e0 = (tl.sum(aq) + tl.sum(rnd) * rnd_fac + x_fac * tl.sum(sv_abs)) * grow      # the two-sided e
            e = e0 + tl.zeros((BM,), tl.float32)
            eg = e0 + tl.zeros((NG,), tl.float32)
            if ONE_SIDED:
                # the savings' float32 sum (exact products of β by 0/1) is within γ_D of itself
                e = e - tl.sum(sacc, axis=1) * (2.0 - grow)
        e = outward_slack(e)
        ub = token_bound(s, e, scale)
        out = r.to(tl.int64) * T + toks
        if PAGED:      # −inf past the row's end, written here (no separate fills of the outputs)
            s = tl.where(tmask, s, float("-inf"))
            tl.store(s_ptr + out, s, mask=toks < T)
        else:
            tl.store(s_ptr + out, s, mask=tmask)
        if SLACK:      # the group's e, rounded as every token's e above
            tl.store(ub_ptr + r.to(tl.int64) * NGR + gidx, outward_slack(eg), mask=gmask)
        elif PAGED:
            tl.store(ub_ptr + out, tl.where(tmask, ub, float("-inf")), mask=toks < T)
        else:
            tl.store(ub_ptr + out, ub, mask=tmask)
        sm = tl.max(tl.reshape(tl.where(tmask, s, float("-inf")), (NSUB, 16)), axis=1)
        sub = blk * NSUB + tl.arange(0, NSUB)
        tl.store(smax_ptr + r.to(tl.int64) * NS + sub, sm, mask=sub < NS)


def scan_constants(bits: int, D: int, int_dot: bool = False) -> tuple[float, float, float, float, float]:
    """(a_fac, rnd_fac, grow, x_fac, ri_fac) of the scan's bound: the host-side rounding analysis."""
    levels = (1 << bits) - 1
    eta = 4.0 * (levels + 2) * 2.0 ** -53 + 4 * U32      # metadata rounding + float32 product a·w
    a_fac = (0.5 + eta) * (1 + 4 * U32)
    rnd_fac = 5 * gamma(D + 2, U32) * (1 + 4 * U32)    # 4γ_{D+2} covers Σq·o, v = q·δ and the adds; + one γ for rnd's own sum
    grow = 1 + 2 * gamma(D + 3, U32)
    # 4-bit: Σ v·c = 16·(Σ v·x − Σ v) with |v·x| ≤ 2|v|: the two sums and the difference are within
    # 3γ_{D+1}·Σ|v| before the (exact) ×16
    x_fac = 16 * 3 * gamma(D + 2, U32) * (1 + 4 * U32) if bits == 4 else 0.0
    ri_fac = 0.0
    if int_dot:
        # |Σ v·c − sv·Σ ṽ·c| ≤ L·Σ (|v − v32| + |v32 − sv·ṽ|): v32 = fl(q·δ) within u|v32|, the residual
        # |v32 − sv·ṽ| computed by one fma within u of itself; fl(I)·sv (power of two) within u·L·Σ|sv·ṽ|
        # ≤ u·L·Σ(|v32| + residual)
        x_fac = 3 * levels * U32 * (1 + 4 * U32)
        ri_fac = levels * (1 + 4 * U32)
    return a_fac, rnd_fac, grow, x_fac, ri_fac


def sketch_scan_bound(q, codes, offset, step, *, bits: int, group: int, scale: float,
                      block_tokens: int | None = None, one_sided: bool = True, num_warps: int | None = None,
                      int_dot: bool | None = None, bounds: str = "tokens"):
    """Launch the scan. ``q`` (B·Hq, D) float32; ``codes`` (B·Hkv, T, W) uint8 with W = D·bits/8 a
    multiple of 4 (read as 32-bit words); ``offset``/``step`` (B·Hkv, Gr, D) float16/float32. Returns
    (s float32 (B·Hq, T), ub float32 (B·Hq, T), smax float32 (B·Hq, ⌈T/16⌉)); with ``bounds="slack"``
    (two-sided only) the second output is each group's slack e float32 (B·Hq, Gr) instead, from which
    ``row_lse.row_lse_chunks`` derives the token bounds (module doc, "Slack").

    ``num_warps`` defaults to 1: a thread then holds 16 contiguous bytes of a few tokens, so the sums
    over channels are in-thread chains and the per-channel setup is shared by those tokens.
    ``int_dot`` (default :func:`use_int_dot`: whenever int32 cannot overflow) takes the sums as exact
    int32 dots (module docstring); ``False`` forces the float dots.

    >>> # see tests/test_gpu_sketch_fused.py: fused_sketch_step(q, K, V, codes, offset, step, vmax, ...)
    """
    R, D = q.shape
    RK, T, W = codes.shape
    int_dot = use_int_dot(bits, D, one_sided) if int_dot is None else bool(int_dot)
    # integer dots: several groups of 16 or 32 tokens per 64-token program (the per-program costs
    # shared); the float dots: one group, or a part of one, per program
    NG = 64 // group if int_dot and block_tokens is None and group < 64 and 64 % group == 0 else 1
    BM = block_tokens or (64 if NG > 1 else min(group, 64))
    assert D * bits == 8 * W and W % 4 == 0, "codes must be (rows, T, D·bits/8) with D·bits a multiple of 32"
    assert D & (D - 1) == 0 and (group % BM == 0 or NG * group == BM) and BM % SUB == 0 and R % RK == 0
    words = codes.view(torch.int32)
    NS = triton.cdiv(T, SUB)
    s = torch.empty((R, T), dtype=torch.float32, device=q.device)
    Gr = offset.shape[1]
    ub, slack = _bounds_out(bounds, one_sided, R, T, Gr, q.device)
    smax = torch.empty((R, NS), dtype=torch.float32, device=q.device)
    grid, blk_first = _grid(triton.cdiv(T, BM), RK)
    # one PTX lop3 / dp2a per instruction slot (NVIDIA devices, compiled only; the same integers otherwise)
    _sketch_scan_bound_kernel[grid](
        q, words, offset, step, s, ub, smax, T, NS, Gr, group,
        float(scale), *scan_constants(bits, D, int_dot), q, q, q, 0, 1, Gr, G=R // RK, BITS=bits, D=D, BM=BM,
        ONE_SIDED=one_sided, ASM=_use_asm(q), INTDOT=int_dot, BLK_FIRST=blk_first, NG=NG, SLACK=slack,
        num_warps=num_warps or 1)
    return s, ub, smax


def step_bounds(one_sided: bool) -> str:
    """The bounds a certified step asks the scan for: one-sided, the token bounds ub ("tokens": a
    one-sided bound is not a function of ŝ and its group); two-sided, each group's slack ("slack"), from
    which the certificate's log-sum-exp derives them (module doc, "Slack";
    ``row_lse.excluded_terms`` pairs the outputs with that log-sum-exp)."""
    return "tokens" if one_sided else "slack"


def _bounds_out(bounds: str, one_sided: bool, R: int, T: int, groups: int, device):
    """The scan's second output for ``bounds`` ("tokens": ub (R, T); "slack": e (R, groups), two-sided
    only: a one-sided token's bound is not a function of ŝ and its group) and the SLACK flag."""
    if bounds == "tokens":
        return torch.empty((R, T), dtype=torch.float32, device=device), False
    if bounds != "slack" or one_sided:
        raise ValueError(f"bounds={bounds!r} with one_sided={one_sided}: 'slack' needs two-sided bounds")
    return torch.empty((R, groups), dtype=torch.float32, device=device), True


def use_int_dot(bits: int, D: int, one_sided: bool) -> bool:
    """Whether the scan takes its sums as int32 dots: whenever they cannot overflow (|Σ ṽ·c| ≤
    D·32767·L, the one-sided savings ≤ D·32767·128): on an H200 the integer dots were faster than the
    float ones at every group size measured (64, 32, 16 tokens; benchmarks/sketch_scan_variants.py)."""
    return D * 32767 * max((1 << bits) - 1, 128 if one_sided else 0) < 2 ** 31


def _grid(blocks: int, rows: int):
    """Launch grid and order: block-major (consecutive programs on consecutive blocks of a row) unless
    the rows exceed the grid's second dimension (65,535)."""
    blk_first = rows <= 65535
    return ((blocks, rows) if blk_first else (rows, blocks)), blk_first


def _use_asm(q) -> bool:
    return q.is_cuda and torch.version.hip is None and os.environ.get("TRITON_INTERPRET", "0") != "1"


def paged_sketch_scan_bound(q, store, cache, seq_idx, T: int, *, scale: float, one_sided: bool = True,
                            num_warps: int | None = None, pages_per_program: int | None = None,
                            bounds: str = "tokens"):
    """The same scan over a paged cache's sketch store (``vashista_gpu.sketch.TorchPageSketchStore``,
    quantization group = page): ``q`` (B·Hq, D) float32, ``seq_idx`` (B,) int32 sequence ids, ``T`` ≥
    every sequence's length. Returns (s, ub, smax) as :func:`sketch_scan_bound` for rows of length T,
    −inf past each sequence's end (written by the kernel: one launch, no fills); ``bounds="slack"``:
    each page's slack (B·Hq, ⌈T/S⌉) instead of ub (pages past a row's end not written).

    ``pages_per_program`` (default: 64 tokens' worth, ``64 // S``, with the integer dots; 1 with the
    float dots) pages of one (row, KV head) per program. One 16-token page per program (the engine's
    page size) made 262,144 one-warp programs per layer at the 1B shape, 128k, batch 4: each waits on
    three dependent loads (length, page table, sketch) for 512 bytes of codes, and with at most 32
    resident programs per SM the scan ran at ~0.5 TB/s (0.64 ms per layer on an H100, more than the
    whole dense attention). Several pages per program share those waits and the per-program setup,
    as the contiguous scan's NG groups do; the arithmetic of every token is unchanged."""
    R, D = q.shape
    N, Hkv, S, W = store.codes.shape
    B = seq_idx.shape[0]
    bits = store.bits
    assert D * bits == 8 * W and W % 4 == 0 and D & (D - 1) == 0 and S % SUB == 0 and R % (B * Hkv) == 0
    int_dot = use_int_dot(bits, D, one_sided)
    NG = pages_per_program or (max(1, 64 // S) if int_dot else 1)
    assert NG & (NG - 1) == 0 and (NG == 1 or int_dot), "pages per program: a power of two (> 1: integer dots)"
    NS = triton.cdiv(T, SUB)
    s = torch.empty((R, T), dtype=torch.float32, device=q.device)
    NP = triton.cdiv(T, S)
    ub, slack = _bounds_out(bounds, one_sided, R, T, NP, q.device)
    smax = torch.empty((R, NS), dtype=torch.float32, device=q.device)
    grid, blk_first = _grid(triton.cdiv(T, S * NG), B * Hkv)
    table = cache.block_table
    _sketch_scan_bound_kernel[grid](
        q, store.codes.view(torch.int32), store.offset, store.step, s, ub, smax, T, NS, 1, S,
        float(scale), *scan_constants(bits, D, int_dot), seq_idx, cache.seq_lens, table, table.stride(0), Hkv, NP,
        G=R // (B * Hkv), BITS=bits, D=D, BM=S * NG, ONE_SIDED=one_sided, ASM=_use_asm(q), PAGED=True,
        INTDOT=int_dot, BLK_FIRST=blk_first, NG=NG, SLACK=slack, num_warps=num_warps or 1)
    return s, ub, smax


# ------------------------------------------------------------------ scores only (the torch path's scan)
@triton.jit
def _sketch_scores_kernel(q_ptr, codes_ptr, off_ptr, step_ptr, s_ptr, M, Gr, D, W, group,
                          G: tl.constexpr, BITS: tl.constexpr, BM: tl.constexpr, BD: tl.constexpr):
    """ŝ[h, j] = Σ_d q[h, d]·(offset + step·code)[kvh, j, d] in float32 for the G query heads of
    KV head kvh; one program per (KV head, BM tokens): the codes are loaded and unpacked once and
    serve all G heads, so every sketch byte is read once per step (GQA)."""
    kvh = tl.program_id(0)
    blk = tl.program_id(1)
    PER: tl.constexpr = 8 // BITS
    rows = blk * BM + tl.arange(0, BM)
    cols = tl.arange(0, BD)
    rmask = rows < M
    m2 = rmask[:, None] & (cols < D)[None, :]
    tok = (kvh * M + rows).to(tl.int64)
    byte = tl.load(codes_ptr + tok[:, None] * W + (cols // PER)[None, :], mask=m2, other=0)
    code = (byte.to(tl.int32) >> ((cols % PER) * BITS)[None, :]) & ((1 << BITS) - 1)
    meta = (kvh * Gr + rows // group).to(tl.int64)[:, None] * D + cols[None, :]
    o = tl.load(off_ptr + meta, mask=m2, other=0.0).to(tl.float32)
    st = tl.load(step_ptr + meta, mask=m2, other=0.0).to(tl.float32)
    k = o + st * code.to(tl.float32)
    for i in tl.static_range(G):
        h = kvh * G + i
        q = tl.load(q_ptr + h * D + cols, mask=cols < D, other=0.0)
        s = tl.sum(k * q[None, :], axis=1)
        tl.store(s_ptr + h * M + rows, s, mask=rmask)


def sketch_scores(q, codes, offset, step, *, bits: int, group: int, block_tokens: int = 64):
    """Sketch scores ŝ (Hq, M) float32 of queries ``q`` (Hq, D) against a key sketch — ``codes``
    (Hkv, M, ⌈D·bits/8⌉) uint8, ``offset``/``step`` (Hkv, ⌈M/group⌉, D) — by ``_sketch_scores_kernel``:
    the scores-only scan of the torch path (``sketch.certified_decode(backend="triton")``), which
    computes its own bounds around ŝ, so it needs no shape rule (any group, any D, bits 2/4/8); the
    certified step's scan with bounds is ``sketch_scan_bound`` above (group ≥ 16, D·bits a multiple of
    32). Elementwise float32 (never TF32): the torch path's compute_dtype=float32 quantity up to
    summation order. Grid (Hkv, ⌈M/block_tokens⌉).

    Bytes moved: every sketch byte once per KV head for all its G query heads (M·⌈D·bits/8⌉ per KV
    head) plus the group metadata (2·D·itemsize per group and KV head), 4·M written per query head.
    """
    Hkv, M, W = codes.shape
    Hq, D = q.shape
    q32 = q.to(torch.float32).contiguous()
    out = torch.empty(Hq, M, dtype=torch.float32, device=q.device)
    grid = (Hkv, triton.cdiv(M, block_tokens))
    _sketch_scores_kernel[grid](q32, codes.contiguous(), offset.contiguous(), step.contiguous(), out, M,
                                offset.shape[1], D, W, group, G=Hq // Hkv, BITS=bits, BM=block_tokens,
                                BD=triton.next_power_of_2(D))
    return out
