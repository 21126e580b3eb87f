"""Triton kernel: the certified step's top-Kc selection split over G programs per row — each row's
Kc best tokens under the tie rule, as logical indices in ascending order, always exact.

Why: the one-program-per-row radix select (``select_topk.py``) is bound by the latency of its
sequential steps (each chunk's loads, histogram and prefix sums): ~50 µs per layer at 128k on an
H100 whatever the number of rows, and ~115 µs at 32k with Kc = 2,048 — with 8..32 rows it keeps a
few SMs of 132 busy. Here every pass is one launch of G·R programs, each over 1/G of the row, and
the passes exchange only 2,048-bin histograms (atomics) and a per-row state of two integers.

Radix select on orderable(ŝ) (``keys.orderable``: the float32 bits as an int32 with the float
order; −0.0 = +0.0) in three digits of 11, 11 and 10 bits from the top. Pass p of a round adds the
histogram of digit p over the values whose higher digits equal the prefix found so far; the next
launch reads it and *picks* the bin holding the k-th largest (k = Kc, then Kc minus those above).
After three picks v is the exact value of the Kc-th largest and k_eq the number of ties at v the
top-Kc holds, and the top-Kc is

    {j : ŝ_j > v} ∪ {the k_eq lowest-indexed j with ŝ_j = v}     (the tie rule: lower index first).

A count pass stores per (row, slice) how many values are > v and = v; the write pass turns them into
each slice's output offset (a prefix over the G slices) and writes the slice's indices in token
order: ascending, no sort.

Threshold (``bmax``: maxima of consecutive blocks of ``block`` tokens, the scan's 16; used when the
row has ≥ 2·Kc of them): a first round of three passes over the maxima gives τ = the Kc-th largest
maximum (at least Kc tokens are ≥ τ, one in each of those blocks, so the top-Kc lies in {ŝ ≥ τ}).
The token round then reads a token only where its block's maximum is ≥ τ (a masked load: the other
blocks cost their maximum only) and keeps the tokens ≥ τ. No buffer holds them, so no row overflows:
however many tokens tie at τ (a flat row), the result is the exact top-Kc (``overflow`` is all False,
kept for the interface of ``select_candidates``). A row with τ = −∞ (fewer than Kc finite maxima: a
short row of a padded batch) is selected among its first ``short_window`` columns when that is > 0,
as ``select_candidates`` specifies.

Nothing depends on the values being finite (NaN is ordered by its bits, as the torch path's int64
keys order it) and every loop bound is fixed on the host. Should inconsistent inputs (NaN block
maxima) leave fewer than Kc tokens ≥ τ, the row is padded with its last selected index.

Launches (stream-ordered, no host synchronisation, CUDA-graph capturable): a zero-fill of the
histograms, stages 0-2 (maxima; threshold only), 3-5 (tokens), 6 (count), 7 (write); grid (G, R).
Stage i's program 0 stores the state after pick i − 1, which stage i + 1 continues from; every
program of stage i recomputes that one pick from the histogram (2,048 integers from L2).
Bytes per row and pass: the maxima (4·NB) in the first round; in the token round and the count and
write passes, the maxima (4·NB, threshold) plus 4 bytes per token of a listed block (4·T without a
threshold); 8·Kc written. Histograms: 6 · 8 KiB per row zeroed and read back by every program.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from .keys import orderable
from .libm import INTERPRET
from .sketch_scan import SUB

__all__ = ["select_split"]

NBIN = tl.constexpr(2048)
NEG_INF_ORDERABLE = tl.constexpr(-2139095041)    # orderable(−inf): the float bits 0xFF800000, magnitude flipped
INT32_MIN = tl.constexpr(-(2 ** 31))
PASSES = 6                                        # 3 digits × (maxima round, token round)


@triton.jit
def _digit(hi, P: tl.constexpr):
    """Digit P of the 32-bit orderable value: bits [21, 32) signed (shifted to ≥ 0), [10, 21), [0, 10)."""
    if P == 0:
        return (hi >> 21) + 1024
    elif P == 1:
        return (hi >> 10) & 2047
    else:
        return hi & 1023


@triton.jit
def _prefix_ok(hi, v, P: tl.constexpr):
    """Whether hi's digits above digit P equal v's (always, for the top digit)."""
    if P == 0:
        return hi == hi
    elif P == 1:
        return (hi >> 21) == (v >> 21)
    else:
        return (hi >> 10) == (v >> 10)


@triton.jit
def _pick(hist, v, k, P: tl.constexpr):
    """After digit P's histogram: v with the digit of the k-th largest value, k its rank among the
    values with v's prefix (after the top digit, k is first clamped to the count)."""
    bins = tl.arange(0, NBIN)
    n_in = tl.sum(hist, axis=0)
    if P == 0:
        k = tl.minimum(k, n_in)
    c_ge = n_in - tl.cumsum(hist, axis=0) + hist          # values in bins ≥ b (non-increasing)
    t = tl.maximum(tl.sum((c_ge >= k).to(tl.int32), axis=0) - 1, 0)
    k -= tl.sum(tl.where(bins == t, c_ge - hist, 0), axis=0)    # minus those above bin t
    if P == 0:
        v = (t - 1024) << 21
    elif P == 1:
        v = v | (t << 10)
    else:
        v = v | t
    return v, k


@triton.jit
def _state(H_row, ST_row, KC, g, STAGE: tl.constexpr, THRESHOLD: tl.constexpr):
    """(v, k) after pick STAGE − 1 — one pick on top of the stored state of the pick before, stored
    by program 0 for the next stage — and τ (orderable; INT32_MIN without a threshold)."""
    v = tl.full([], 0, tl.int32)
    k = tl.zeros([], tl.int32) + KC                       # a tensor even where Triton made KC = 1 a constant
    J: tl.constexpr = STAGE - 1                           # the pick to apply (−1: none)
    if J >= 0 and J < 6 and (THRESHOLD or J >= 3):
        if J % 3 != 0:                                    # within a round: continue from pick J − 1
            v = tl.load(ST_row + 2 * (J - 1))
            k = tl.load(ST_row + 2 * (J - 1) + 1)
        v, k = _pick(tl.load(H_row + J * NBIN + tl.arange(0, NBIN)), v, k, J % 3)
        if g == 0:
            tl.store(ST_row + 2 * J, v)
            tl.store(ST_row + 2 * J + 1, k)
    if STAGE == 7:                                        # the write pass: the final state, stored by stage 6
        v = tl.load(ST_row + 10)
        k = tl.load(ST_row + 11)
    tau = tl.full([], INT32_MIN, tl.int32)
    if THRESHOLD and STAGE == 3:                          # pick 2 just gave τ
        tau = v
    elif THRESHOLD and STAGE > 3:
        tau = tl.load(ST_row + 4)
    return v, k, tau


@triton.jit
def _listed(b_row, j, end, tau, BS: tl.constexpr, GATHER: tl.constexpr):
    """Tokens j that may be in the source: j < end and, with GATHER, their block's maximum ≥ τ."""
    ok = j < end
    if GATHER:
        ok = ok & (orderable(tl.load(b_row + j // BS, mask=ok, other=0.0)) >= tau)
    return ok


@triton.jit
def _tokens(s_row, j, ok, tau):
    """(orderable ŝ, in the source) of the listed tokens j: ŝ ≥ τ."""
    hi = orderable(tl.load(s_row + j, mask=ok, other=0.0))
    return hi, ok & (hi >= tau)


@triton.jit
def _select_split_kernel(s_ptr, s_stride, b_ptr, b_stride, H_ptr, ST_ptr, cnt_ptr, out_ptr,
                         T, NB, KC, short_w, SL, SLB, G, n_it, n_itb, n_itk,
                         BS: tl.constexpr, C: tl.constexpr, GP: tl.constexpr, STAGE: tl.constexpr,
                         THRESHOLD: tl.constexpr, GATHER: tl.constexpr, INTERP: tl.constexpr, IT: tl.constexpr,
                         IT_B: tl.constexpr, IT_K: tl.constexpr):
    # IT*: the interpreter's trip counts (it cannot loop to a bound passed as an argument); compiled,
    # the bounds are arguments (n_it*), so every shape shares one compilation
    g = tl.program_id(0)
    r = tl.program_id(1).to(tl.int64)
    s_row = s_ptr + r * s_stride
    b_row = b_ptr + r * b_stride
    H_row = H_ptr + r * (6 * NBIN)
    ST_row = ST_ptr + r * 12
    cnt_row = cnt_ptr + r * (3 * G)
    e = tl.arange(0, C)
    v, k, tau = _state(H_row, ST_row, KC, g, STAGE, THRESHOLD)
    if STAGE < 3:                                         # the maxima round
        hist = tl.zeros([NBIN], dtype=tl.int32)
        end = tl.minimum(NB, (g + 1) * SLB)
        for i in range(0, IT_B if INTERP else n_itb):
            b = g * SLB + i * C + e
            ok = b < end
            hb = orderable(tl.load(b_row + b, mask=ok, other=0.0))
            m = ok & _prefix_ok(hb, v, STAGE)
            hist += tl.histogram(tl.where(m, _digit(hb, STAGE), 0), NBIN, mask=m)
        bins = tl.arange(0, NBIN)
        tl.atomic_add(H_row + STAGE * NBIN + bins, hist, mask=hist != 0)
    else:
        short = (tau == NEG_INF_ORDERABLE) & (short_w > 0)
        end = tl.minimum(tl.where(short, short_w, T), (g + 1) * SL)
        if STAGE < 6:                                     # the token round
            P: tl.constexpr = STAGE - 3
            hist = tl.zeros([NBIN], dtype=tl.int32)
            for i in range(0, IT if INTERP else n_it):
                j = g * SL + i * C + e
                ok = _listed(b_row, j, end, tau, BS, GATHER)
                if tl.max(ok.to(tl.int32), axis=0) > 0:       # a chunk of unlisted blocks costs its maxima only
                    hi, m = _tokens(s_row, j, ok, tau)
                    m = m & _prefix_ok(hi, v, P)
                    hist += tl.histogram(tl.where(m, _digit(hi, P), 0), NBIN, mask=m)
            bins = tl.arange(0, NBIN)
            tl.atomic_add(H_row + STAGE * NBIN + bins, hist, mask=hist != 0)
        elif STAGE == 6:                                  # count: > v, = v, the largest index ≥ v
            n_gt = tl.full([], 0, tl.int32)
            n_eq = tl.full([], 0, tl.int32)
            last = tl.full([], 0, tl.int32)
            for i in range(0, IT if INTERP else n_it):
                j = g * SL + i * C + e
                ok = _listed(b_row, j, end, tau, BS, GATHER)
                if tl.max(ok.to(tl.int32), axis=0) > 0:
                    hi, m = _tokens(s_row, j, ok, tau)
                    n_gt += tl.sum((m & (hi > v)).to(tl.int32), axis=0)
                    n_eq += tl.sum((m & (hi == v)).to(tl.int32), axis=0)
                    last = tl.maximum(last, tl.max(tl.where(m & (hi >= v), j, 0), axis=0))
            tl.store(cnt_row + g, n_gt)
            tl.store(cnt_row + G + g, n_eq)
            tl.store(cnt_row + 2 * G + g, last)
        else:                                             # write, in token order, from this slice's offset
            gs = tl.arange(0, GP)
            before = gs < g
            live = gs < G
            gt_all = tl.load(cnt_row + gs, mask=live, other=0)
            eq_all = tl.load(cnt_row + G + gs, mask=live, other=0)
            seen = tl.sum(tl.where(before, eq_all, 0), axis=0)
            taken = tl.sum(tl.where(before, gt_all, 0), axis=0) + tl.minimum(seen, k)
            out_row = out_ptr + r * KC
            for i in range(0, IT if INTERP else n_it):
                j = g * SL + i * C + e
                ok = _listed(b_row, j, end, tau, BS, GATHER)
                if tl.max(ok.to(tl.int32), axis=0) > 0:
                    hi, m = _tokens(s_row, j, ok, tau)
                    eq = (m & (hi == v)).to(tl.int32)
                    take = m & ((hi > v) | ((eq > 0) & (seen + tl.cumsum(eq, axis=0) <= k)))
                    ti = take.to(tl.int32)
                    pos = taken + tl.cumsum(ti, axis=0) - 1
                    tl.store(out_row + pos, j.to(tl.int64), mask=take & (pos < KC))
                    taken += tl.sum(ti, axis=0)
                    seen += tl.sum(eq, axis=0)
            if g == G - 1:        # slots left unfilled (only by inconsistent inputs) get the last index
                total = tl.sum(gt_all, axis=0) + tl.minimum(tl.sum(eq_all, axis=0), k)
                last = tl.max(tl.load(cnt_row + 2 * G + gs, mask=live, other=0), axis=0)
                for i in range(0, IT_K if INTERP else n_itk):
                    pos = i * C + e
                    tl.store(out_row + pos, tl.zeros([C], tl.int64) + last, mask=(pos >= total) & (pos < KC))


def select_split(s: torch.Tensor, Kc: int, *, bmax: torch.Tensor | None = None, block: int = SUB,
                 short_window: int = 0, chunk: int = 1024, num_warps: int = 8, programs: int | None = None):
    """(cand (R, Kc) int64, overflow (R,) bool all False) for ``s`` (R, T) float32 (unit column
    stride): each row's exact top-Kc under the tie rule, ascending (module doc), no host
    synchronisation. ``bmax`` (R, NB) float32 (unit column stride): maxima of any partition into NB ≥
    Kc parts, used as a threshold; where they are those of consecutive blocks of ``block`` tokens
    (NB = ⌈T/block⌉), only the blocks whose maximum reaches it are read. ``short_window``: rows with
    τ = −∞ are selected among their first ``short_window`` columns. ``programs`` per row (default:
    about four per SM over all rows, at most one per ``chunk`` tokens). 8 warps: the histogram
    passes hold 2,048 bins and a chunk in 128 registers a thread (with 4 warps: 255 and a stack, sm_90
    ptxas). The caller checks 1 ≤ Kc ≤ T."""
    R, T = s.shape
    dev = s.device
    assert chunk & (chunk - 1) == 0 and chunk >= 32 * num_warps and 1 <= Kc <= T
    if programs is None:
        sms = torch.cuda.get_device_properties(dev).multi_processor_count if s.is_cuda else 4
        programs = triton.cdiv(4 * sms, R)
    G = max(1, min(int(programs), triton.cdiv(T, chunk)))
    SL = triton.cdiv(triton.cdiv(T, G), chunk) * chunk          # tokens per program, whole chunks
    G = triton.cdiv(T, SL)
    threshold = bmax is not None
    if threshold:
        NB = bmax.shape[1]
        assert NB >= Kc
        gather = triton.cdiv(T, block) == NB
    else:
        NB, gather, bmax = 1, False, s
    SLB = triton.cdiv(NB, G)
    out = torch.empty((R, Kc), dtype=torch.int64, device=dev)
    hist = torch.zeros((R, PASSES, 2048), dtype=torch.int32, device=dev)
    state = torch.empty((R, 12), dtype=torch.int32, device=dev)
    cnt = torch.empty((R, 3, G), dtype=torch.int32, device=dev)
    trips = (SL // chunk, triton.cdiv(SLB, chunk), triton.cdiv(Kc, chunk))
    args = (s, s.stride(0), bmax, bmax.stride(0), hist, state, cnt, out, T, NB, Kc, min(int(short_window), T),
            SL, SLB, G, *trips)
    for stage in range(0 if threshold else 3, 8):
        _select_split_kernel[(G, R)](*args, BS=int(block), C=chunk, GP=max(2, triton.next_power_of_2(G)), STAGE=stage,
                                     THRESHOLD=threshold, GATHER=gather, INTERP=INTERPRET,
                                     **dict(zip(("IT", "IT_B", "IT_K"), trips if INTERPRET else (0, 0, 0))),
                                     num_warps=num_warps)
    return out, torch.zeros(R, dtype=torch.bool, device=dev)
