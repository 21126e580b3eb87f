"""Triton kernel: the certified step's whole top-Kc selection in one launch — each row's Kc best
tokens under the tie rule, as logical indices in ascending order.

Why: ``selection.select_candidates`` ran ``torch.topk`` over every token's int64 tie-rule key, then
``torch.sort`` of the indices (~70 µs per layer on an H100 at 8k, 32 rows: ``gatherTopK`` 45 µs +
``radixSortKVInPlace`` 26 µs, more than the scan and the rescoring together), and at long contexts
~10 ops (topk of the block maxima, compaction, topk, sort). Here one program per row does it all.

Radix select. Order tokens by the key (orderable(ŝ), −index) (``keys.orderable``: the float32 bits
as an int32 with the float order; −0.0 = +0.0). Four passes over the row, one per byte of
orderable(ŝ) from the top (``tl.histogram``, 256 bins, of the tokens whose higher bytes match the
prefix found so far), find the exact value v of the Kc-th largest score and how many tokens equal
to v the top-Kc holds, k_eq (Kc minus the number above v). The top-Kc is then

    {j : ŝ_j > v} ∪ {the k_eq lowest-indexed j with ŝ_j = v}     (the tie rule: lower index first),

and one more pass writes it in token order with a running prefix sum: ascending, no sort.

Threshold mode (``bmax`` given: the maxima of consecutive blocks of BS tokens, the scan's 16). τ = the
Kc-th largest block maximum, by the same radix select over the NB maxima (at least Kc tokens are ≥ τ,
one in each of those blocks, so the top-Kc lies in {ŝ ≥ τ}). The blocks whose maximum is ≥ τ are
listed in order (a per-row scratch list), and the radix select and the writing pass read only their
tokens (``GATHER``), with ŝ ≥ τ as a floor: ~Kc..4·Kc blocks of 16 instead of the whole row. A row
with τ = −∞ (fewer than Kc finite maxima: a short row of a padded batch) is selected among its first
``short_window`` columns when that is > 0, as ``select_candidates`` specifies. ``overflow[r]`` =
more than ``cap`` tokens ≥ τ (and not such a short row) — the old buffer's flag, kept as a statistic:
the candidates here are the tie rule's top-Kc whatever the count (there is no buffer to overflow).

Nothing depends on the values being finite: NaN scores are ordered by their bits as the torch path's
int64 keys order them, and every loop has a bound fixed before it starts. Should inconsistent inputs
(NaN block maxima) leave fewer than Kc tokens ≥ τ, the row is padded with its last selected index.

Grid (R,); loops over chunks of ``CHUNK`` elements (the interpreter cannot loop to a device-valued
bound: there the loops run to static maxima, masked). Bytes moved per row: full mode reads 4·T five
times (the passes after the first hit L2 for rows up to a few MB); threshold mode reads 4·NB five
times (four radix passes and the listing), writes and reads the 4·nb-byte block list, and reads the
listed blocks' 4·BS·nb bytes five times (nb ≈ Kc..4·Kc); both write 8·Kc (indices) + 1 (flag).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from .keys import orderable
from .libm import INTERPRET

__all__ = ["select_topk"]

INT32_MIN = tl.constexpr(-(2 ** 31))
NEG_INF_ORDERABLE = tl.constexpr(-2139095041)    # orderable(−inf): the float bits 0xFF800000, magnitude flipped


@triton.jit
def _chunk(x_ptr, ids_ptr, i, n, lim, BS: tl.constexpr, BSP: tl.constexpr, CHUNK: tl.constexpr,
           GATHER: tl.constexpr):
    """Orderable values, column indices and validity of the i-th chunk of a row: columns
    i·CHUNK … (contiguous), or with GATHER the BS tokens of each listed block ids[i·CHUNK/BSP …]
    of the n listed (ids read at L2: the list was written by other threads of this program)."""
    e = tl.arange(0, CHUNK)
    if GATHER:
        slot = i * (CHUNK // BSP) + e // BSP
        live = slot < n
        blk = tl.load(ids_ptr + slot, mask=live, other=0, cache_modifier=".cg")
        j = blk * BS + e % BSP
        ok = live & (e % BSP < BS) & (j < lim)
    else:
        j = i * CHUNK + e
        ok = j < lim
    x = tl.load(x_ptr + j, mask=ok, other=0.0)
    return orderable(x), j, ok


@triton.jit
def _kth_largest(x_ptr, ids_ptr, n, lim, floor, k, n_iter, BS: tl.constexpr, BSP: tl.constexpr,
                 CHUNK: tl.constexpr, GATHER: tl.constexpr, IT: tl.constexpr, INTERP: tl.constexpr):
    """Radix select over the chunks' values ≥ ``floor``: (v, k_eq, count) with v the k-th largest
    value (k clamped to the count), k_eq how many of the top-k equal v, count the values ≥ floor."""
    bins = tl.arange(0, 256)
    v = tl.full([], 0, tl.int32)
    count = tl.full([], 0, tl.int32)
    for p in tl.static_range(4):
        SH = 24 - 8 * p                              # constexpr: the byte of this pass
        hist = tl.zeros([256], dtype=tl.int32)
        for i in range(0, IT if INTERP else n_iter):
            hi, j, ok = _chunk(x_ptr, ids_ptr, i, n, lim, BS, BSP, CHUNK, GATHER)
            m = ok & (hi >= floor)
            if SH == 24:
                d = (hi >> 24) + 128                 # the signed top byte, shifted to 0..255
            else:
                d = (hi >> SH) & 255
                m = m & ((hi >> (SH + 8)) == (v >> (SH + 8)))
            hist += tl.histogram(d, 256, mask=m)
        n_in = tl.sum(hist, axis=0)
        if SH == 24:
            count = n_in
            k = tl.minimum(k, n_in)
        c_ge = n_in - tl.cumsum(hist, axis=0) + hist          # values in bins ≥ b (non-increasing)
        t = tl.maximum(tl.sum((c_ge >= k).to(tl.int32), axis=0) - 1, 0)
        k -= tl.sum(tl.where(bins == t, c_ge - hist, 0), axis=0)    # minus those above bin t
        if SH == 24:
            v = (t - 128) << 24
        else:
            v = v | (t << SH)
    return v, k, count


@triton.jit
def _write_top(x_ptr, ids_ptr, n, lim, floor, v, k_eq, out_ptr, KC, n_iter, BS: tl.constexpr, BSP: tl.constexpr,
               CHUNK: tl.constexpr, GATHER: tl.constexpr, IT: tl.constexpr, IT_K: tl.constexpr,
               INTERP: tl.constexpr):
    """Store, in token order, the indices of the values > v and of the first k_eq values = v (among
    those ≥ floor); pad what is left of the KC slots with the last index stored."""
    taken = tl.full([], 0, tl.int32)
    seen = tl.full([], 0, tl.int32)
    last = tl.full([], 0, tl.int32)
    for i in range(0, IT if INTERP else n_iter):
        hi, j, ok = _chunk(x_ptr, ids_ptr, i, n, lim, BS, BSP, CHUNK, GATHER)
        ok = ok & (hi >= floor)
        eq = (ok & (hi == v)).to(tl.int32)
        take = ok & ((hi > v) | ((eq > 0) & (seen + tl.cumsum(eq, axis=0) <= k_eq)))
        ti = take.to(tl.int32)
        pos = taken + tl.cumsum(ti, axis=0) - 1
        tl.store(out_ptr + pos, j.to(tl.int64), mask=take & (pos < KC))
        taken += tl.sum(ti, axis=0)
        seen += tl.sum(eq, axis=0)
        last = tl.maximum(last, tl.max(tl.where(take, j, 0), axis=0))
    # only inconsistent inputs (module doc) leave slots unfilled
    for i in range(0, IT_K if INTERP else tl.cdiv(KC, CHUNK)):
        pos = i * CHUNK + tl.arange(0, CHUNK)
        tl.store(out_ptr + pos, tl.zeros([CHUNK], tl.int64) + last, mask=(pos >= taken) & (pos < KC))


@triton.jit
def _select_topk_kernel(s_ptr, s_stride, bmax_ptr, bmax_stride, ids_ptr, out_ptr, ovf_ptr, T, NB, KC, cap,
                        short_w, BS: tl.constexpr, BSP: tl.constexpr, CHUNK: tl.constexpr,
                        THRESHOLD: tl.constexpr, GATHER: tl.constexpr, INTERP: tl.constexpr,
                        IT_T: tl.constexpr, IT_B: tl.constexpr, IT_G: tl.constexpr, IT_K: tl.constexpr):
    # IT_*: the interpreter's static trip counts (T, NB, listed blocks at most, KC); compiled, the
    # loops stop at the device-valued counts instead
    r = tl.program_id(0).to(tl.int64)
    s_row = s_ptr + r * s_stride
    out_row = out_ptr + r * KC
    if THRESHOLD:
        b_row = bmax_ptr + r * bmax_stride
        ids_row = ids_ptr + r * NB
        tau, _, _ = _kth_largest(b_row, b_row, NB, NB, INT32_MIN, KC, tl.cdiv(NB, CHUNK), 1, 1, CHUNK, False,
                                 IT_B, INTERP)
        short = (tau == NEG_INF_ORDERABLE) & (short_w > 0)
        lim = tl.where(short, short_w, T)
        if GATHER:                 # list the blocks that can hold a token ≥ τ, in order
            nb = tl.full([], 0, tl.int32)
            for i in range(0, IT_B if INTERP else tl.cdiv(NB, CHUNK)):
                b = i * CHUNK + tl.arange(0, CHUNK)
                hb = orderable(tl.load(b_row + b, mask=b < NB, other=0.0))
                keep = (b < NB) & (hb >= tau) & (b * BS < lim)
                ki = keep.to(tl.int32)
                tl.store(ids_row + nb + tl.cumsum(ki, axis=0) - 1, b, mask=keep)
                nb += tl.sum(ki, axis=0)
            tl.debug_barrier()     # the list is read back by the other threads of this program
            v, k_eq, count = _kth_largest(s_row, ids_row, nb, lim, tau, KC, tl.cdiv(nb, CHUNK // BSP), BS, BSP,
                                          CHUNK, True, IT_G, INTERP)
            _write_top(s_row, ids_row, nb, lim, tau, v, k_eq, out_row, KC, tl.cdiv(nb, CHUNK // BSP), BS, BSP,
                       CHUNK, True, IT_G, IT_K, INTERP)
        else:                      # blocks too large to list (or not the scan's layout): the whole row
            v, k_eq, count = _kth_largest(s_row, s_row, T, lim, tau, KC, tl.cdiv(T, CHUNK), 1, 1, CHUNK, False,
                                          IT_T, INTERP)
            _write_top(s_row, s_row, T, lim, tau, v, k_eq, out_row, KC, tl.cdiv(T, CHUNK), 1, 1, CHUNK, False,
                       IT_T, IT_K, INTERP)
        tl.store(ovf_ptr + r, (count > cap) & ~short)
    else:
        v, k_eq, _ = _kth_largest(s_row, s_row, T, T, INT32_MIN, KC, tl.cdiv(T, CHUNK), 1, 1, CHUNK, False,
                                  IT_T, INTERP)
        _write_top(s_row, s_row, T, T, INT32_MIN, v, k_eq, out_row, KC, tl.cdiv(T, CHUNK), 1, 1, CHUNK, False,
                   IT_T, IT_K, INTERP)
        tl.store(ovf_ptr + r, tl.full([], 0, tl.int1))


def select_topk(s: torch.Tensor, Kc: int, *, bmax: torch.Tensor | None = None, cap: int | None = None,
                short_window: int = 0, chunk: int = 4096, num_warps: int = 8):
    """(cand (R, Kc) int64, overflow (R,) bool) for ``s`` (R, T) float32 (unit column stride): each
    row's top-Kc under the tie rule, ascending (module doc), in one launch, no host synchronisation.

    ``bmax`` (R, NB) float32: threshold mode, NB ≥ Kc maxima of consecutive blocks of ⌈T/NB⌉
    tokens; ``overflow`` = more than ``cap`` tokens ≥ τ (``cap`` None: never) on rows that are not
    short (τ = −∞ with ``short_window`` > 0: selected among the first ``short_window`` columns).
    Without ``bmax``: the whole row, ``overflow`` all False. The caller checks shapes and Kc ≤ T."""
    R, T = s.shape
    dev = s.device
    out = torch.empty((R, Kc), dtype=torch.int64, device=dev)
    ovf = torch.empty(R, dtype=torch.bool, device=dev)
    assert chunk & (chunk - 1) == 0 and chunk >= 32 * num_warps     # tl.histogram: no replicated lanes
    it = dict(IT_T=triton.cdiv(T, chunk), IT_K=triton.cdiv(Kc, chunk)) if INTERPRET else dict(IT_T=0, IT_K=0)
    if bmax is None:
        _select_topk_kernel[(R,)](s, s.stride(0), s, 0, out, out, ovf, T, 1, Kc, 0, 0, BS=1, BSP=1, CHUNK=chunk,
                                  THRESHOLD=False, GATHER=False, INTERP=INTERPRET, IT_B=0, IT_G=0, **it,
                                  num_warps=num_warps)
        return out, ovf
    NB = bmax.shape[1]
    bs = triton.cdiv(T, NB)
    bsp = triton.next_power_of_2(bs)
    # list blocks only when the maxima are the scan's layout and a chunk holds ≥ 16 blocks
    gather = triton.cdiv(T, bs) == NB and 16 * bsp <= chunk
    ids = torch.empty((R, NB), dtype=torch.int32, device=dev) if gather else out
    if INTERPRET:
        it.update(IT_B=triton.cdiv(NB, chunk), IT_G=triton.cdiv(NB, chunk // bsp))
    else:
        it.update(IT_B=0, IT_G=0)
    _select_topk_kernel[(R,)](s, s.stride(0), bmax, bmax.stride(0), ids, out, ovf, T, NB, Kc,
                              2 ** 31 - 1 if cap is None else min(int(cap), 2 ** 31 - 1),
                              min(int(short_window), T), BS=bs, BSP=bsp, CHUNK=chunk, THRESHOLD=True, GATHER=gather,
                              INTERP=INTERPRET, **it, num_warps=num_warps)
    return out, ovf
