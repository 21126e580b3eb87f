"""Triton kernel: the certified step's whole top-Kc selection in one launch — each row's Kc best
tokens under the tie rule, as logical indices in ascending order.

Why: ``selection.select_candidates`` ran ``torch.topk`` over every token's int64 tie-rule key, then
``torch.sort`` of the indices (~70 µs per layer on an H100 at 8k, 32 rows: ``gatherTopK`` 45 µs +
``radixSortKVInPlace`` 26 µs, more than the scan and the rescoring together), and at long contexts
~10 ops (topk of the block maxima, compaction, topk, sort). Here one program per row does it all.

Radix select. Order tokens by the key (orderable(ŝ), −index) (``keys.orderable``: the float32 bits
as an int32 with the float order; −0.0 = +0.0). ⌈32/BITS⌉ passes, one per BITS-bit digit of
orderable(ŝ) from the top (``tl.histogram`` of the digit over the tokens whose higher digits match
the prefix found so far), find the exact value v of the Kc-th largest score and how many tokens
equal to v the top-Kc holds, k_eq (Kc minus the number above v). The top-Kc is then

    {j : ŝ_j > v} ∪ {the k_eq lowest-indexed j with ŝ_j = v}     (the tie rule: lower index first),

and one more pass writes it in token order with a running prefix sum: ascending, no sort.

Threshold mode (``bmax``: the maxima of consecutive blocks of BS tokens, the scan's 16). τ = the
Kc-th largest block maximum (at least Kc tokens are ≥ τ, one in each of those blocks, so the top-Kc
lies in {ŝ ≥ τ}), by the same select: two digits over all NB maxima, then the blocks whose maximum
has at least that prefix are listed in order (a per-row list) and the remaining digits read only
their maxima (``GATHER``). One pass over the listed blocks' tokens keeps the tokens ≥ τ in token
order as (orderable, index) pairs in ``cap`` slots per row and counts them; the radix select and the
writing pass then read only the pairs (~Kc of them where the threshold is selective), and the
indices come out ascending. A row with more than ``cap`` tokens ≥ τ (many ties, a flat row):
``FLAG`` — the top-Kc of its first ``cap`` such tokens, flagged in ``overflow`` (as the torch
path's buffer flags it, a certified set that need not be the tie rule's top-Kc); else its exact
top-Kc from the listed blocks' tokens (a longer selection, not flagged). A row with τ = −∞ (fewer
than Kc finite maxima: a short row of a padded batch) is selected exactly among its first
``short_window`` columns when that is > 0, as ``select_candidates`` specifies, never flagged.

Nothing depends on the values being finite: NaN scores are ordered by their bits as the torch path's
int64 keys order them, and every loop has a bound fixed before it starts. Should inconsistent inputs
(NaN block maxima) leave fewer than Kc tokens ≥ τ, the row is padded with its last selected index.

Grid (R,); loops over chunks of ``CHUNK`` slots (``CS`` for the pairs and listed maxima; the
interpreter cannot loop to a device-valued bound: there the loops run to static maxima, masked).
Bytes moved per row (the passes after the first hit L2): full mode reads 4·T once per digit and once
to write; threshold mode reads 4·NB three times (two digits, the listing), the nb listed blocks'
maxima (4·nb) per remaining digit and their tokens (4·BS·nb) once, writes and rereads the list
(4·nb) and the ≤ cap pairs (8 bytes each, once per digit and to write); both write 8·Kc (indices)
+ 1 (flag). On an H100 (benchmarks/select_gpu.py, CUDA graphs, L2 flushed) the launch is ~35 µs at
(32 rows, 8k, Kc 256), ~45 µs at (32..128, 128k, 256), ~160 µs at (512, 128k, 256), ~115 µs at
(14..32, 32k, 2048): 1.2-4x less than the torch path, in one launch instead of 6-10 — it is bound
by the latency of its sequential steps (each chunk's loads, histogram and prefix sums), not bytes.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from .keys import orderable
from .libm import INTERPRET
from .sketch_scan import SUB

__all__ = ["select_topk"]

INT32_MIN = tl.constexpr(-(2 ** 31))
NEG_INF_ORDERABLE = tl.constexpr(-2139095041)    # orderable(−inf): the float bits 0xFF800000, magnitude flipped


@triton.jit
def _load(x_ptr, y_ptr, ids_ptr, i, n, lim, MODE: tl.constexpr, BS: tl.constexpr, BSP: tl.constexpr,
          C: tl.constexpr):
    """The i-th chunk (C slots) of one source: (orderable value, column index, valid).
    MODE 0: a row, columns < n. MODE 1: the tokens (< lim) of the listed blocks ids[0..n), C/BSP
    blocks per chunk. MODE 2: the maxima x[ids[slot]] of the listed blocks. MODE 3: compacted
    (orderable x, index y) pairs, slot < n. Lists and pairs were written by other threads of this
    program: read at L2 (``.cg``)."""
    e = tl.arange(0, C)
    if MODE == 0:
        j = i * C + e
        ok = j < n
        hi = orderable(tl.load(x_ptr + j, mask=ok, other=0.0))
    elif MODE == 1:
        slot = i * (C // BSP) + e // BSP
        live = slot < n
        blk = tl.load(ids_ptr + slot, mask=live, other=0, cache_modifier=".cg")
        j = blk * BS + e % BSP
        ok = live & (e % BSP < BS) & (j < lim)
        hi = orderable(tl.load(x_ptr + j, mask=ok, other=0.0))
    elif MODE == 2:
        j = i * C + e
        ok = j < n
        blk = tl.load(ids_ptr + j, mask=ok, other=0, cache_modifier=".cg")
        hi = orderable(tl.load(x_ptr + blk, mask=ok, other=0.0))
    else:
        j = i * C + e
        ok = j < n
        hi = tl.load(x_ptr + j, mask=ok, other=0, cache_modifier=".cg")
        j = tl.load(y_ptr + j, mask=ok, other=0, cache_modifier=".cg")
    return hi, j, ok


@triton.jit
def _hist(x_ptr, y_ptr, ids_ptr, n, lim, floor, v, n_iter, p: tl.constexpr, MODE: tl.constexpr,
          BS: tl.constexpr, BSP: tl.constexpr, C: tl.constexpr, BITS: tl.constexpr, IT: tl.constexpr,
          INTERP: tl.constexpr):
    """Radix pass p over one source: the histogram of digit p of the values ≥ ``floor`` whose
    higher digits are v's (digit p = bits [SH, KNOWN) of the int32 value, the top one signed)."""
    KNOWN = 32 - BITS * p
    SH = KNOWN - BITS if KNOWN > BITS else 0
    hist = tl.zeros([1 << BITS], dtype=tl.int32)
    for i in range(0, IT if INTERP else n_iter):
        hi, j, ok = _load(x_ptr, y_ptr, ids_ptr, i, n, lim, MODE, BS, BSP, C)
        m = ok & (hi >= floor)
        if p == 0:
            d = (hi >> SH) + (1 << (BITS - 1))                 # the signed top digit, shifted to ≥ 0
        else:
            d = (hi >> SH) & ((1 << (KNOWN - SH)) - 1)
            m = m & ((hi >> KNOWN) == (v >> KNOWN))
        hist += tl.histogram(d, 1 << BITS, mask=m)
    return hist


@triton.jit
def _pick(hist, v, k, p: tl.constexpr, BITS: tl.constexpr):
    """After pass p: v with the digit of the k-th largest value, k its rank among those with v's
    prefix (after pass 0, k is first clamped to the count)."""
    KNOWN = 32 - BITS * p
    SH = KNOWN - BITS if KNOWN > BITS else 0
    bins = tl.arange(0, 1 << BITS)
    n_in = tl.sum(hist, axis=0)
    if p == 0:
        k = tl.minimum(k, n_in)
    c_ge = n_in - tl.cumsum(hist, axis=0) + hist          # values in bins ≥ b (non-increasing)
    t = tl.maximum(tl.sum((c_ge >= k).to(tl.int32), axis=0) - 1, 0)
    k -= tl.sum(tl.where(bins == t, c_ge - hist, 0), axis=0)    # minus those above bin t
    if p == 0:
        v = (t - (1 << (BITS - 1))) << SH
    else:
        v = v | (t << SH)
    return v, k


@triton.jit
def _write(x_ptr, y_ptr, ids_ptr, n, lim, floor, v, k_eq, out_ptr, KC, taken, seen, last, n_iter,
           MODE: tl.constexpr, BS: tl.constexpr, BSP: tl.constexpr, C: tl.constexpr, IT: tl.constexpr,
           INTERP: tl.constexpr):
    """Store, in the source's (token) order, the indices of its values > v and of the first values
    = v while fewer than k_eq were seen (among those ≥ floor); returns the running counters."""
    for i in range(0, IT if INTERP else n_iter):
        hi, j, ok = _load(x_ptr, y_ptr, ids_ptr, i, n, lim, MODE, BS, BSP, C)
        ok = ok & (hi >= floor)
        eq = (ok & (hi == v)).to(tl.int32)
        take = ok & ((hi > v) | ((eq > 0) & (seen + tl.cumsum(eq, axis=0) <= k_eq)))
        ti = take.to(tl.int32)
        pos = taken + tl.cumsum(ti, axis=0) - 1
        tl.store(out_ptr + pos, j.to(tl.int64), mask=take & (pos < KC))
        taken += tl.sum(ti, axis=0)
        seen += tl.sum(eq, axis=0)
        last = tl.maximum(last, tl.max(tl.where(take, j, 0), axis=0))
    return taken, seen, last


@triton.jit
def _pad(out_ptr, KC, taken, last, C: tl.constexpr, IT_K: tl.constexpr, INTERP: tl.constexpr):
    """Slots left unfilled (only by inconsistent inputs, module doc) get the last index stored."""
    for i in range(0, IT_K if INTERP else tl.cdiv(KC, C)):
        pos = i * C + tl.arange(0, C)
        tl.store(out_ptr + pos, tl.zeros([C], tl.int64) + last, mask=(pos >= taken) & (pos < KC))


@triton.jit
def _select_topk_kernel(s_ptr, s_stride, bmax_ptr, bmax_stride, ids_ptr, hs_ptr, js_ptr, out_ptr, ovf_ptr,
                        T, NB, KC, cap, short_w, BS: tl.constexpr, BSP: tl.constexpr, CHUNK: tl.constexpr,
                        CS: tl.constexpr, BITS: tl.constexpr, THRESHOLD: tl.constexpr, GATHER: tl.constexpr,
                        FLAG: tl.constexpr, INTERP: tl.constexpr, IT_T: tl.constexpr, IT_B: tl.constexpr,
                        IT_G: tl.constexpr, IT_L: tl.constexpr, IT_S: tl.constexpr, IT_K: tl.constexpr):
    # IT_*: the interpreter's static trip counts (it cannot loop to a device-valued bound): chunks of
    # T, of NB, of the listed blocks' tokens and maxima (at most NB blocks), of the cap pairs, of KC
    NP: tl.constexpr = (32 + BITS - 1) // BITS
    STEP: tl.constexpr = CHUNK // BSP         # listed blocks per chunk of their tokens
    r = tl.program_id(0).to(tl.int64)
    s_row = s_ptr + r * s_stride
    out_row = out_ptr + r * KC
    v = tl.full([], 0, tl.int32)
    k = tl.zeros([], tl.int32) + KC           # a tensor even where Triton made KC = 1 a constant
    zero = tl.full([], 0, tl.int32)
    if THRESHOLD:
        b_row = bmax_ptr + r * bmax_stride
        ids_row = ids_ptr + r * NB
        hs_row = hs_ptr + r * cap
        js_row = js_ptr + r * cap
        # τ = the KC-th largest block maximum (by value)
        if GATHER:     # two digits over every maximum, the rest over the blocks listed by that prefix
            for p in tl.static_range(2):
                hist = _hist(b_row, b_row, b_row, NB, NB, INT32_MIN, v, tl.cdiv(NB, CHUNK), p, 0, 1, 1, CHUNK,
                             BITS, IT_B, INTERP)
                v, k = _pick(hist, v, k, p, BITS)
            KN = 32 - 2 * BITS                # ≤ 22: a prefix equal to −inf's holds nothing above −inf
            short = ((v >> KN) == (NEG_INF_ORDERABLE >> KN)) & (short_w > 0)
            lim = tl.where(short, short_w, T)
            nb = tl.full([], 0, tl.int32)
            for i in range(0, IT_B if INTERP else tl.cdiv(NB, CHUNK)):
                b = i * CHUNK + tl.arange(0, CHUNK)
                hb = orderable(tl.load(b_row + b, mask=b < NB, other=0.0))
                keep = (b < NB) & ((hb >> KN) >= (v >> KN)) & (b * BS < lim)
                ki = keep.to(tl.int32)
                tl.store(ids_row + nb + tl.cumsum(ki, axis=0) - 1, b, mask=keep)
                nb += tl.sum(ki, axis=0)
            tl.debug_barrier()                # the list is read back by the other threads of this program
            for p in tl.static_range(2, NP):
                hist = _hist(b_row, b_row, ids_row, nb, nb, INT32_MIN, v, tl.cdiv(nb, CS), p, 2, 1, 1, CS, BITS,
                             IT_L, INTERP)
                v, k = _pick(hist, v, k, p, BITS)
            tau = v
            n_src = nb                        # the candidates' source: the listed blocks' tokens
            it_src = tl.cdiv(nb, STEP)
        else:          # every digit over every maximum; the candidates' source: the whole row
            for p in tl.static_range(NP):
                hist = _hist(b_row, b_row, b_row, NB, NB, INT32_MIN, v, tl.cdiv(NB, CHUNK), p, 0, 1, 1, CHUNK,
                             BITS, IT_B, INTERP)
                v, k = _pick(hist, v, k, p, BITS)
            tau = v
            short = (tau == NEG_INF_ORDERABLE) & (short_w > 0)
            lim = tl.where(short, short_w, T)
            n_src = lim
            it_src = tl.cdiv(lim, CHUNK)
        # the tokens ≥ τ, in token order: the first ``cap`` as (orderable, index) pairs, and their count
        count = tl.full([], 0, tl.int32)
        for i in range(0, (IT_G if GATHER else IT_T) if INTERP else it_src):
            hi, j, ok = _load(s_row, s_row, ids_row, i, n_src, lim, 1 if GATHER else 0, BS, BSP, CHUNK)
            sel = ok & (hi >= tau)
            si = sel.to(tl.int32)
            pos = count + tl.cumsum(si, axis=0) - 1
            tl.store(hs_row + pos, hi, mask=sel & (pos < cap))
            tl.store(js_row + pos, j, mask=sel & (pos < cap))
            count += tl.sum(si, axis=0)
        tl.debug_barrier()                    # the pairs are read back by the other threads
        # the top-KC of the pairs; beyond ``cap``: FLAG, of the first cap (flagged), else (and on a
        # short row, selected exactly as the torch path's window topk) of the whole source
        use_pairs = (count <= cap) | (FLAG & ~short)
        n_p = tl.where(use_pairs, tl.minimum(count, cap), 0)
        n_s = tl.where(use_pairs, 0, n_src)
        it_s = tl.cdiv(n_s, STEP) if GATHER else tl.cdiv(n_s, CHUNK)
        v = tl.full([], 0, tl.int32)
        k = tl.zeros([], tl.int32) + KC
        for p in tl.static_range(NP):
            hist = _hist(hs_row, js_row, ids_row, n_p, n_p, tau, v, tl.cdiv(n_p, CS), p, 3, 1, 1, CS, BITS, IT_S,
                         INTERP)
            hist += _hist(s_row, s_row, ids_row, n_s, lim, tau, v, it_s, p, 1 if GATHER else 0, BS, BSP, CHUNK, BITS,
                          IT_G if GATHER else IT_T, INTERP)
            v, k = _pick(hist, v, k, p, BITS)
        taken, seen, last = _write(hs_row, js_row, ids_row, n_p, n_p, tau, v, k, out_row, KC, zero, zero, zero,
                                   tl.cdiv(n_p, CS), 3, 1, 1, CS, IT_S, INTERP)
        taken, seen, last = _write(s_row, s_row, ids_row, n_s, lim, tau, v, k, out_row, KC, taken, seen, last, it_s,
                                   1 if GATHER else 0, BS, BSP, CHUNK, IT_G if GATHER else IT_T, INTERP)
        _pad(out_row, KC, taken, last, CHUNK, IT_K, INTERP)
        tl.store(ovf_ptr + r, (count > cap) & ~short & FLAG)
    else:              # every digit over the whole row
        for p in tl.static_range(NP):
            hist = _hist(s_row, s_row, s_row, T, T, INT32_MIN, v, tl.cdiv(T, CHUNK), p, 0, 1, 1, CHUNK, BITS, IT_T,
                         INTERP)
            v, k = _pick(hist, v, k, p, BITS)
        taken, seen, last = _write(s_row, s_row, s_row, T, T, INT32_MIN, v, k, out_row, KC, zero, zero, zero,
                                   tl.cdiv(T, CHUNK), 0, 1, 1, CHUNK, IT_T, INTERP)
        _pad(out_row, KC, taken, last, CHUNK, IT_K, INTERP)
        tl.store(ovf_ptr + r, tl.full([], 0, tl.int1))


def select_topk(s: torch.Tensor, Kc: int, *, bmax: torch.Tensor | None = None, cap: int | None = None,
                block: int = SUB, flag: bool = True, short_window: int = 0, chunk: int = 4096, num_warps: int = 16,
                radix_bits: int = 6):
    """(cand (R, Kc) int64, overflow (R,) bool) for ``s`` (R, T) float32 (unit column stride): each
    row's top-Kc under the tie rule, ascending (module doc), in one launch, no host synchronisation.

    ``bmax`` (R, NB) float32 (unit column stride): threshold mode, NB ≥ Kc block maxima, ``cap`` ≥ Kc
    pair slots per row. Blocks are listed (GATHER) when NB = ⌈T/block⌉: the maxima of consecutive
    blocks of ``block`` tokens (the scan's 16); other maxima (of any partition) are used as a
    threshold only, the whole row being the source. A row with more than ``cap`` tokens
    ≥ τ that is not short (τ = −∞ with ``short_window`` > 0: selected among its first
    ``short_window`` columns): ``flag`` — its top-Kc among the first cap such tokens, flagged in
    ``overflow``; else its exact top-Kc (a longer selection), not flagged. Without ``bmax``: the
    whole row, ``overflow`` all False. The caller checks 1 ≤ Kc ≤ T. ``chunk`` slots per loop step
    over a row (pairs and listed maxima: ≤ 1024), ``radix_bits`` per radix pass (5..8); the defaults
    were the fastest of ``benchmarks/select_gpu.py``'s variants on an H100."""
    R, T = s.shape
    dev = s.device
    # tl.histogram: ≥ 32 bins, and no lane holding a copy of another's element (chunks ≥ the threads)
    cs = max(min(chunk, 1024), 32 * num_warps)
    assert chunk & (chunk - 1) == 0 and chunk >= cs and 5 <= radix_bits <= 8
    out = torch.empty((R, Kc), dtype=torch.int64, device=dev)
    ovf = torch.empty(R, dtype=torch.bool, device=dev)
    threshold = bmax is not None
    if not threshold:
        NB, bs, bsp, gather, cap, ids, hs, js, bmax = 1, 1, 1, False, 1, out, out, out, s
    else:
        assert cap is not None and cap >= Kc
        NB = bmax.shape[1]
        bs = int(block)
        bsp = triton.next_power_of_2(bs)
        # list blocks only where the maxima have that layout and a chunk holds ≥ 16 blocks
        # (⌈T/NB⌉ is no substitute: 120 tokens make 8 blocks of 16, and ⌈120/8⌉ = 15)
        gather = triton.cdiv(T, bs) == NB and 16 * bsp <= chunk
        ids = torch.empty((R, NB), dtype=torch.int32, device=dev) if gather else out
        hs = torch.empty((R, cap), dtype=torch.int32, device=dev)
        js = torch.empty((R, cap), dtype=torch.int32, device=dev)
    trips = dict(IT_T=triton.cdiv(T, chunk), IT_B=triton.cdiv(NB, chunk), IT_G=triton.cdiv(NB, chunk // bsp),
                 IT_L=triton.cdiv(NB, cs), IT_S=triton.cdiv(cap, cs), IT_K=triton.cdiv(Kc, chunk))
    if not INTERPRET:            # compiled: device-valued bounds; constant keys keep one compilation
        trips = {key: 0 for key in trips}
    _select_topk_kernel[(R,)](s, s.stride(0), bmax, bmax.stride(0), ids, hs, js, out, ovf, T, NB, Kc, cap,
                              min(int(short_window), T), BS=bs, BSP=bsp, CHUNK=chunk, CS=cs, BITS=radix_bits,
                              THRESHOLD=threshold, GATHER=gather, FLAG=bool(flag),
                              INTERP=INTERPRET, **trips, num_warps=num_warps)
    return out, ovf
