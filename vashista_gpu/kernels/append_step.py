"""Triton kernels: the whole decode-step append of one layer in two launches (the append, then the lengths).

For every batch row b (sequence ``seq[b]``, length n read on the device) it does what
``TorchPagedKVCache.append_step_device`` did in ~90 small torch ops (≈ 0.25 ms per layer on an H100,
launch-bound):

1. writes the new key and value (cast to the cache dtype) into slot n % S of the sequence's page
   ``block_table[seq, n // S]`` for every KV head (the second launch then advances ``seq_lens[seq]``
   to n + 1);
2. recomputes that page's summaries over its n % S + 1 valid slots, with the same float32 code as
   ``kernels/page_summary.py`` (value norm max‖v‖₂ when the cache keeps value norms — a dense-only
   cache keeps none and this step is skipped — and raises the sequence's running maximum ``vabs``
   by it; and kmin/kmax/kmean when it keeps key summaries);
3. requantizes that page's sketch (one quantization group per page and KV head; codes, offset, step)
   with exactly the float64 arithmetic of ``sketch._quantize_groups``, so codes and metadata are
   bit-identical to the torch requantization:
   offset = kmin rounded toward −∞ to the metadata dtype; s = kmax − offset and e, its rounding error
   (two-sum); step = s/L rounded toward +∞, then raised by the first of 0..8 metadata ulps for which
   L·step − s ≥ e (a float64 product of an ≤ 24-bit and an 8-bit integer significand is exact, so a
   fused multiply-add gives the same test); code = round-half-even((k − offset)/step) clamped to
   [0, L] (0 on empty slots), packed low bits first. Directed rounding is "round to nearest, then
   one ulp back if it went the wrong way", which is what ``sketch._to_meta`` computes; the ulp steps
   are bit-pattern increments (non-negative floats of one dtype are ordered like their bits).
   Round-half-even of t ∈ [0, 2⁵²) is (t + 2⁵²) − 2⁵² in float64 (no fast-math reassociation).
   float64 '/' is IEEE division in Triton (PTX div.rn.f64; only float32 '/' is approximate).

One program per (batch row, KV head): the heads' pages are independent, so they run side by side
(one program looping over the 8 KV heads of the 1B shape took 64 µs per layer on an H100, ~1 ms of a
5.4 ms certified token at batch 1). The row's length, which every head's program reads, is advanced
afterwards by a second, tiny launch (advancing it inside the grid would race with the heads still
reading it). The new token's row is merged into the page tile in registers (never re-read after the
store), so no barrier is needed.

Bytes moved per row and KV head (S page size, D head dim, e the cache element size, b bits):
reads the page's ≤ S keys (up to 8/b times for the b-bit channel sets, from cache after the first)
and values, S·D·e each, plus the new key and value; writes 2·D·e (new token), S·D·b/8 (codes),
2·D·m (offset, step; m the metadata size) and 4 (value norm), and reads and writes 4 (the running
maximum) [+ 2·D·e + 4·D with key summaries]. A dense-only cache (no summaries, no sketch) moves the new
token's 2·D·e only.

Example (CPU: ``TRITON_INTERPRET=1``)::

    cache = TorchPagedKVCache(16, 2, 64, dtype=torch.bfloat16, backend="triton"); attach_sketch(cache, 4)
    s = cache.add_sequence(); cache.reserve(s, 40)
    cache.append_step_device(torch.tensor([s], dtype=torch.int32), k, v)     # two launches per layer
"""
from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

__all__ = ["append_step", "fusable"]

_META_TYPES = {torch.float16: (tl.float16, tl.int16, -32767), torch.float32: (tl.float32, tl.int32, -2147483647)}


@triton.jit
def _nudge(y, UP: tl.constexpr, IDT: tl.constexpr, NEG_MIN: tl.constexpr):
    """The next metadata float above (UP) or below y, by its bit pattern (finite or infinite y;
    ±0 steps to ±the smallest subnormal, as torch.nextafter)."""
    bits = y.to(IDT, bitcast=True).to(tl.int32)
    if UP:
        nb = tl.where(y > 0, bits + 1, tl.where(y < 0, bits - 1, 1))
    else:
        nb = tl.where(y > 0, bits - 1, tl.where(y < 0, bits + 1, NEG_MIN))
    return nb.to(IDT).to(y.dtype, bitcast=True)


@triton.jit
def _directed(x, UP: tl.constexpr, MDT: tl.constexpr, IDT: tl.constexpr, NEG_MIN: tl.constexpr):
    """float64 x rounded toward +∞ (UP) or −∞ to the metadata dtype (``sketch._to_meta``). The first
    rounding may go through float32 (no reliance on a float64 → float16 conversion): x lies between
    two neighbouring metadata floats a ≤ x ≤ b, both float32, so any monotone rounding lands on a or
    b and the one-ulp correction then picks the directed one — the same result as torch's."""
    y = x.to(tl.float32).to(MDT)
    if UP:
        wrong = y.to(tl.float64) < x
    else:
        wrong = y.to(tl.float64) > x
    return tl.where(wrong, _nudge(y, UP, IDT, NEG_MIN), y)


@triton.jit
def _append_step_kernel(seq_ptr, k_ptr, v_ptr, skb, skh, skd, svb, svh, svd,
                        kp_ptr, vp_ptr, bt_ptr, bt_stride, lens_ptr,
                        vnorm_ptr, vabs_ptr, kmin_ptr, kmax_ptr, kmean_ptr, codes_ptr, off_ptr, step_ptr,
                        S, D, DV, W, H: tl.constexpr,
                        BS: tl.constexpr, BD: tl.constexpr, BDV: tl.constexpr, BW: tl.constexpr,
                        VNORM: tl.constexpr, KEYS: tl.constexpr, SKETCH: tl.constexpr, BITS: tl.constexpr,
                        PER: tl.constexpr, L: tl.constexpr, MDT: tl.constexpr, IDT: tl.constexpr, NEG_MIN: tl.constexpr):
    b = tl.program_id(0)
    h = tl.program_id(1)
    seq = tl.load(seq_ptr + b).to(tl.int64)
    pos = tl.load(lens_ptr + seq)
    slot = pos % S
    page = tl.load(bt_ptr + seq * bt_stride + pos // S).to(tl.int64)
    rows = tl.arange(0, BS)
    rmask = rows <= slot                       # valid slots after this append
    old = rows < slot                          # slots already stored (read from the page)
    new = rows == slot
    cols = tl.arange(0, BD)
    vcols = tl.arange(0, BDV)
    kdt = kp_ptr.dtype.element_ty
    base = (page * H + h) * S
    # 1. the new token, cast to the cache dtype
    kn = tl.load(k_ptr + b * skb + h * skh + cols * skd, mask=cols < D, other=0.0).to(kdt)
    vn = tl.load(v_ptr + b * svb + h * svh + vcols * svd, mask=vcols < DV, other=0.0).to(vp_ptr.dtype.element_ty)
    tl.store(kp_ptr + (base + slot) * D + cols, kn, mask=cols < D)
    tl.store(vp_ptr + (base + slot) * DV + vcols, vn, mask=vcols < DV)
    # 2. summaries (kernels/page_summary.py's arithmetic on the same tile); a dense-only cache
    #    keeps none (VNORM off): its page's values are not even read back
    if VNORM:
        vmask = old[:, None] & (vcols[None, :] < DV)
        v = tl.load(vp_ptr + (base + rows[:, None]) * DV + vcols[None, :], mask=vmask, other=0.0)
        v = tl.where(new[:, None], vn[None, :], v).to(tl.float32)
        norms = tl.sqrt_rn(tl.sum(v * v, axis=1))
        pmax = tl.max(tl.where(rmask, norms, 0.0), axis=0)
        tl.store(vnorm_ptr + page * H + h, pmax)
        # the sequence's running maximum (paged_cache module doc), which this program alone owns:
        # torch.maximum's NaN propagation, with a NaN among the new values marked here (the max
        # above may drop a NaN)
        va = tl.load(vabs_ptr + seq * H + h)
        bad = (va != va) | (tl.sum((vn != vn).to(tl.int32), axis=0) > 0) | (pmax != pmax)
        tl.store(vabs_ptr + seq * H + h, tl.where(bad, float("nan"), tl.maximum(va, pmax)))
    if KEYS:
        kmask = rmask[:, None] & (cols[None, :] < D)
        k = tl.load(kp_ptr + (base + rows[:, None]) * D + cols[None, :], mask=old[:, None] & (cols[None, :] < D),
                    other=0.0)
        k = tl.where(new[:, None], kn[None, :], k).to(tl.float32)
        kmin = tl.min(tl.where(kmask, k, float("inf")), axis=0)
        kmax = tl.max(tl.where(kmask, k, float("-inf")), axis=0)
        kmean = tl.div_rn(tl.sum(tl.where(kmask, k, 0.0), axis=0), (slot + 1).to(tl.float32))
        cm = cols < D
        tl.store(kmin_ptr + (page * H + h) * D + cols, kmin.to(kmin_ptr.dtype.element_ty), mask=cm)
        tl.store(kmax_ptr + (page * H + h) * D + cols, kmax.to(kmax_ptr.dtype.element_ty), mask=cm)
        tl.store(kmean_ptr + (page * H + h) * D + cols, kmean, mask=cm)
    # 3. the page's sketch: byte w holds channels w·PER + i, i < PER, low bits first
    if SKETCH:                             # PER = 8 // BITS channels per byte, L = 2^BITS − 1
        w = tl.arange(0, BW)
        packed = tl.zeros((BS, BW), dtype=tl.int32)
        for i in tl.static_range(PER):
            ch = w * PER + i
            cm = ch < D
            x = tl.load(kp_ptr + (base + rows[:, None]) * D + ch[None, :], mask=old[:, None] & cm[None, :],
                        other=0.0)
            xn = tl.load(k_ptr + b * skb + h * skh + ch * skd, mask=cm, other=0.0).to(kdt)
            x = tl.where(new[:, None], xn[None, :], x).to(tl.float64)
            m = rmask[:, None] & cm[None, :]
            lo = tl.where(cm, tl.min(tl.where(m, x, float("inf")), axis=0), 0.0)   # 0 past D: unstored
            hi = tl.where(cm, tl.max(tl.where(m, x, float("-inf")), axis=0), 0.0)
            offset = _directed(lo, False, MDT, IDT, NEG_MIN)
            o64 = offset.to(tl.float64)
            s = hi - o64
            bp = s - hi
            e = (hi - (s - bp)) + (-o64 - bp)
            step = _directed(tl.where(s > 0, s / L, 0.0), True,
                             MDT, IDT, NEG_MIN)
            sb = step.to(IDT, bitcast=True).to(tl.int32)
            k_up = tl.full(sb.shape, 8, tl.int32)
            for j in tl.static_range(8):           # the first of 8 ulps up that covers kmax
                cj = (sb + j).to(IDT).to(MDT, bitcast=True).to(tl.float64)
                ok = L * cj - s >= e
                k_up = tl.where(ok & (k_up == 8), j, k_up)
            step = (sb + k_up).to(IDT).to(MDT, bitcast=True)
            st = step.to(tl.float64)[None, :]
            t = tl.where(st > 0, (x - o64[None, :]) / tl.where(st > 0, st, 1.0), 0.0)
            t = tl.where(m, t, 0.0)
            t = (t + 4503599627370496.0) - 4503599627370496.0     # round half to even (t ≥ 0)
            code = tl.minimum(tl.maximum(t, 0.0), L).to(tl.int32)
            packed = packed | (code << (i * BITS))
            meta = (page * H + h) * D + ch
            tl.store(off_ptr + meta, offset, mask=cm)
            tl.store(step_ptr + meta, step, mask=cm)
        tl.store(codes_ptr + (base + rows[:, None]) * W + w[None, :], packed.to(tl.uint8),
                 mask=(rows[:, None] < S) & (w[None, :] < W))


@triton.jit
def _advance_kernel(seq_ptr, lens_ptr, B, BB: tl.constexpr):
    """seq_lens[seq[b]] += 1 for the B distinct sequences (after the append grid has read them)."""
    b = tl.arange(0, BB)
    ok = b < B
    seq = tl.load(seq_ptr + b, mask=ok, other=0).to(tl.int64)
    tl.store(lens_ptr + seq, tl.load(lens_ptr + seq, mask=ok) + 1, mask=ok)


def fusable(cache) -> bool:
    """Whether :func:`append_step` covers this cache's append: no hierarchy levels, at most one sketch,
    with float16 or float32 metadata. ``VASHISTA_FUSED_APPEND=0`` in the environment turns it off (the
    torch append runs instead): a switch for a device where the kernel misbehaves, since it has been
    checked under the interpreter only so far."""
    if os.environ.get("VASHISTA_FUSED_APPEND", "1") == "0":
        return False
    if cache.levels or len(cache.sketches) > 1:
        return False
    return all(st.dt in _META_TYPES for st in cache.sketches.values())


def append_step(cache, seq_idx: torch.Tensor, keys: torch.Tensor, values: torch.Tensor) -> None:
    """One decode step's append in two launches (module doc): ``seq_idx`` (B,) int32 distinct sequences
    on the cache device, ``keys`` (B, Hkv, D), ``values`` (B, Hkv, Dv) (any strides, any float dtype).
    The pages must be reserved (``TorchPagedKVCache.reserve``); no host synchronisation."""
    B = seq_idx.numel()
    if B == 0:
        return
    H, S, D, Dv = cache.n_kv_heads, cache.page_size, cache.head_dim, cache.value_dim
    keys_on = cache.kmin is not None
    vnorm_on = cache.vnorm is not None
    unread = cache.seq_lens                    # stands in for the outputs this cache does not keep
    vnorm = cache.vnorm if vnorm_on else unread
    vabs = cache.vabs if vnorm_on else unread
    kmin, kmax, kmean = (cache.kmin, cache.kmax, cache.kmean) if keys_on else (unread,) * 3
    store = next(iter(cache.sketches.values()), None)
    if store is not None:
        bits = store.bits
        codes, off, stp = store.codes, store.offset, store.step
        mdt, idt, neg_min = _META_TYPES[store.dt]
        W = codes.shape[-1]
    else:
        bits, W = 8, 1
        codes, off, stp = unread, unread, unread
        mdt, idt, neg_min = _META_TYPES[torch.float32]
    _append_step_kernel[(B, H)](
        seq_idx, keys, values, keys.stride(0), keys.stride(1), keys.stride(2),
        values.stride(0), values.stride(1), values.stride(2),
        cache.k_pages, cache.v_pages, cache.block_table, cache.block_table.stride(0), cache.seq_lens,
        vnorm, vabs, kmin, kmax, kmean, codes, off, stp,
        S, D, Dv, W, H,
        BS=triton.next_power_of_2(S), BD=triton.next_power_of_2(D), BDV=triton.next_power_of_2(Dv),
        BW=triton.next_power_of_2(W), VNORM=vnorm_on, KEYS=keys_on, SKETCH=store is not None, BITS=bits, PER=8 // bits,
        L=(1 << bits) - 1, MDT=mdt, IDT=idt, NEG_MIN=neg_min)
    _advance_kernel[(1,)](seq_idx, cache.seq_lens, B, BB=max(16, triton.next_power_of_2(B)))
