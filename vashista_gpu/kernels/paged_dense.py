"""Triton kernel: dense flash-decode straight from the paged KV pool (split-K over the sequence, a
mergeable partial state, then a combine), for the engine's dense and auto modes and for DenseFallback
inside a CUDA graph.

For batch row b (sequence ``seq_idx[b]``, length L_b = ``seq_lens[seq_idx[b]]`` read on the device)
and query head h (KV head h // G), exact attention over every token:

    o_bh = Σ_{j<L_b} a_j v_j,   a = softmax(scale·⟨q_bh, k_j⟩)

Split-K (flash-decoding). The token range [0, max_tokens) is cut into ``NSPLIT`` splits of
``split_len`` tokens (a multiple of the tile ``BN``); program (p, s) walks the tiles of split s that lie
below L_b (a loop with a device-side bound: splits past the end do no work) and leaves the split's
*mergeable partial state*, in the base-2 domain (x_j = scale·log2(e)·⟨q, k_j⟩):

    m_s = max_j x_j,   l_s = Σ_j 2^{x_j − m_s},   acc_s = Σ_j 2^{x_j − m_s} v_j   (unnormalised)

Two states merge exactly: m = max(m_1, m_2), l = Σ_i 2^{m_i − m}·l_i, acc = Σ_i 2^{m_i − m}·acc_i,
and o = acc / l (the same rule merges states across devices). The combine kernel merges
the NSPLIT states of one (row, head) and writes o in ``out``'s dtype; an empty row (L_b = 0, a free
serving slot) gets o = 0, never NaN.

GQA: a program owns one (row, KV head) and all G of its query heads (padded to GP ≥ 16 rows for the
tensor-core dot), so every K/V tile is loaded once for the G heads. Pages: token j lives in physical
page ``block_table[seq, j // S]`` at slot j mod S of the pool ``k_pages``/``v_pages`` (N, Hkv, S, D),
one table load per token of the tile (cached; a 64-token tile of 16-token pages reads 4 pages, each a
contiguous S×D block). Masked slots are loaded as 0 and scored −inf: the pool's unwritten slots are
NaN and never reach the result.

Pairs (DenseFallback). With ``pairs`` (CAP, 2) int32 = (row b, query head h), padded with −1, the
work items are (pair, split), one query head each; a persistent grid of at most 4 programs per SM
loops over the items of the listed pairs (their number ``pair_count`` read on the device, so idle
capacity adds no program to the fixed grid, and with nothing flagged every program exits at once),
and the combine writes only the listed (b, h) of ``out`` (the rest of
``out`` is untouched). A −1 pair does no work. The step's output buffer is thus
patched in place, inside the graph, with no host synchronisation.

Precision: scores and p·V on the tensor cores in the cache dtype with float32 accumulation (as SDPA's
flash kernel: p is rounded to bf16/fp16 before p·V); a float32 pool uses exact float32 dots. Under
TRITON_INTERPRET the dots run in float32 (the interpreter's bf16 dot is wrong) and every split walks
all its tiles masked (it cannot loop over device-valued bounds); the arithmetic is otherwise the same.

No host synchronisation anywhere: the grid is fixed by ``max_tokens`` and the batch (or CAP), lengths
and pages are read on the device, so the launch can be captured in a CUDA graph and replayed while
sequences grow (up to max_tokens) and pages are reassigned.

Bytes moved per call (e = cache element bytes):
  dense:  Σ_b L_b·Hkv·(D + Dv)·e  (K and V of every token once per KV head, shared by its G heads)
          + B·Hq·(D + Dv)·e (q, out) + 2·B·Hq·NSPLIT·(Dv + 2)·4 (partials written and read back)
          + Σ_b L_b·4 (page-table entries, cached per tile)
  pairs:  Σ_pairs L_b·(D + Dv)·e + 2·CAP·NSPLIT·(Dv + 2)·4   (no sharing between pairs of one KV head)
The floor is the first term; the partials are < 1 % of it once L_b·Hkv ≫ Hq·NSPLIT.

Example (CPU needs ``TRITON_INTERPRET=1``)::

    >>> # out = paged_dense_decode(q, cache.k_pages, cache.v_pages, cache.block_table, seq_idx,
    >>> #                          cache.seq_lens, max_tokens=4096)
"""
from __future__ import annotations

import math
import os

import triton
import triton.language as tl

__all__ = ['cache_dense_decode', 'default_splits', 'paged_dense_decode']

LOG2E = 1.4426950408889634


@triton.jit
def _split_state(q_ptr, k_ptr, v_ptr, table_ptr, table_stride, seq_ptr, lens_ptr, m_ptr, l_ptr, acc_ptr,
                 b, h0, kvh, nh, live, prow, sp, Hq, Hkv, split_len, NSPLIT, scale_log2,
                 GP: tl.constexpr, D: tl.constexpr, DV: tl.constexpr, S: tl.constexpr, BN: tl.constexpr,
                 IEEE: tl.constexpr, INTERP: tl.constexpr, TILES: tl.constexpr):
    """The mergeable partial state of split ``sp`` for query heads h0 .. h0 + nh − 1 of row b (KV
    head kvh), stored at partial rows ``prow``; ``live`` False: no tokens (an empty state, or nothing
    stored when nh = 0)."""
    g = tl.arange(0, GP)
    d = tl.arange(0, D)
    dv = tl.arange(0, DV)
    seq = tl.load(seq_ptr + b).to(tl.int64)
    L = tl.where(live, tl.load(lens_ptr + seq), 0)
    lo = sp * split_len
    hi = tl.minimum(lo + split_len, L)
    ok_g = g < nh
    q = tl.load(q_ptr + ((b * Hq + h0 + g).to(tl.int64) * D)[:, None] + d[None, :], mask=ok_g[:, None], other=0.0)
    q = q.to(tl.float32 if IEEE else k_ptr.dtype.element_ty)
    m_i = tl.full((GP,), float("-inf"), tl.float32)
    l_i = tl.zeros((GP,), tl.float32)
    acc = tl.zeros((GP, DV), tl.float32)
    kv64 = kvh.to(tl.int64)
    # compiled: only the tiles below the row's length; interpreted (it cannot loop over
    # device-valued bounds): the whole split, masked
    for i in range(0, TILES if INTERP else tl.cdiv(hi - lo, BN)):
        t = lo + i * BN + tl.arange(0, BN)
        ok = t < hi
        page = tl.load(table_ptr + seq * table_stride + t // S, mask=ok, other=0).to(tl.int64)
        row = (page * Hkv + kv64) * S + t % S
        k = tl.load(k_ptr + (row * D)[:, None] + d[None, :], mask=ok[:, None], other=0.0)
        if IEEE:
            s = tl.dot(q, tl.trans(k.to(tl.float32)), input_precision="ieee")
        else:
            s = tl.dot(q, tl.trans(k))
        s = tl.where(ok[None, :], s * scale_log2, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, axis=1))
        m_ref = tl.where(m_new == float("-inf"), 0.0, m_new)   # a fully masked tile adds nothing
        alpha = tl.exp2(m_i - m_ref)
        p = tl.exp2(s - m_ref[:, None])
        l_i = l_i * alpha + tl.sum(p, axis=1)
        v = tl.load(v_ptr + (row * DV)[:, None] + dv[None, :], mask=ok[:, None], other=0.0)
        if IEEE:
            pv = tl.dot(p, v.to(tl.float32), input_precision="ieee")
        else:
            pv = tl.dot(p.to(v.dtype), v)
        acc = acc * alpha[:, None] + pv
        m_i = m_new
    slot = prow.to(tl.int64) * NSPLIT + sp
    tl.store(m_ptr + slot, m_i, mask=ok_g)
    tl.store(l_ptr + slot, l_i, mask=ok_g)
    tl.store(acc_ptr + (slot * DV)[:, None] + dv[None, :], acc, mask=ok_g[:, None])


@triton.jit
def _split_kernel(q_ptr, k_ptr, v_ptr, table_ptr, table_stride, seq_ptr, lens_ptr,
                  m_ptr, l_ptr, acc_ptr, Hq, Hkv, split_len, NSPLIT, scale_log2,
                  G: tl.constexpr, GP: tl.constexpr, D: tl.constexpr, DV: tl.constexpr, S: tl.constexpr,
                  BN: tl.constexpr, IEEE: tl.constexpr, INTERP: tl.constexpr, TILES: tl.constexpr):
    """Dense mode: program (b·Hkv + kvh, split) for the G query heads of KV head kvh of row b."""
    pid = tl.program_id(0)
    sp = tl.program_id(1)
    b = pid // Hkv
    kvh = pid % Hkv
    h0 = kvh * G
    _split_state(q_ptr, k_ptr, v_ptr, table_ptr, table_stride, seq_ptr, lens_ptr, m_ptr, l_ptr, acc_ptr,
                 b, h0, kvh, G, pid >= 0, b * Hq + h0 + tl.arange(0, GP), sp, Hq, Hkv, split_len, NSPLIT,
                 scale_log2, GP, D, DV, S, BN, IEEE, INTERP, TILES)


@triton.jit
def _pair_item(q_ptr, k_ptr, v_ptr, table_ptr, table_stride, seq_ptr, lens_ptr, pairs_ptr, m_ptr, l_ptr, acc_ptr,
               it, n, Hq, Hkv, split_len, NSPLIT, scale_log2, G: tl.constexpr, GP: tl.constexpr,
               D: tl.constexpr, DV: tl.constexpr, S: tl.constexpr, BN: tl.constexpr, IEEE: tl.constexpr,
               INTERP: tl.constexpr, TILES: tl.constexpr):
    """Work item ``it`` = (listed pair it // NSPLIT, split it % NSPLIT); dead past n pairs or on a −1."""
    slot = it // NSPLIT
    sp = it % NSPLIT
    inside = slot < n
    b = tl.load(pairs_ptr + slot * 2, mask=inside, other=-1)
    h = tl.load(pairs_ptr + slot * 2 + 1, mask=inside, other=-1)
    live = b >= 0
    b = tl.where(live, b, 0)
    h0 = tl.where(live, h, 0)
    _split_state(q_ptr, k_ptr, v_ptr, table_ptr, table_stride, seq_ptr, lens_ptr, m_ptr, l_ptr, acc_ptr,
                 b, h0, h0 // G, tl.where(live, 1, 0), live, slot + tl.arange(0, GP) * 0, sp, Hq, Hkv,
                 split_len, NSPLIT, scale_log2, GP, D, DV, S, BN, IEEE, INTERP, TILES)


@triton.jit
def _pairs_split_kernel(q_ptr, k_ptr, v_ptr, table_ptr, table_stride, seq_ptr, lens_ptr, pairs_ptr, count_ptr,
                        m_ptr, l_ptr, acc_ptr, Hq, Hkv, split_len, NSPLIT, CAP, NPROG,
                        scale_log2, G: tl.constexpr, GP: tl.constexpr, D: tl.constexpr, DV: tl.constexpr,
                        S: tl.constexpr, BN: tl.constexpr, IEEE: tl.constexpr, INTERP: tl.constexpr,
                        TILES: tl.constexpr, ROUNDS: tl.constexpr, COUNTED: tl.constexpr):
    """Pairs mode, persistent: NPROG programs share the work items (listed pair, split) of the
    ``count_ptr[0]`` listed pairs (read on the device; without COUNTED all CAP slots, −1 slots doing
    no work); program p takes items p, p + NPROG, ..."""
    pid = tl.program_id(0)
    if COUNTED:
        n = tl.minimum(tl.load(count_ptr).to(tl.int32), CAP)
    else:
        n = CAP
    if INTERP:      # no device-valued loop bounds: ROUNDS items per program, those past n dead
        for j in range(0, ROUNDS):
            _pair_item(q_ptr, k_ptr, v_ptr, table_ptr, table_stride, seq_ptr, lens_ptr, pairs_ptr, m_ptr, l_ptr,
                       acc_ptr, pid + j * NPROG, n, Hq, Hkv, split_len, NSPLIT, scale_log2, G, GP, D, DV, S, BN,
                       IEEE, INTERP, TILES)
    else:           # only the listed pairs' items
        for it in range(pid, n * NSPLIT, NPROG):
            _pair_item(q_ptr, k_ptr, v_ptr, table_ptr, table_stride, seq_ptr, lens_ptr, pairs_ptr, m_ptr, l_ptr,
                       acc_ptr, it, n, Hq, Hkv, split_len, NSPLIT, scale_log2, G, GP, D, DV, S, BN,
                       IEEE, INTERP, TILES)


@triton.jit
def _combine_kernel(m_ptr, l_ptr, acc_ptr, out_ptr, out_sb, out_sh, pairs_ptr, Hq, NSPLIT,
                    NSP: tl.constexpr, DV: tl.constexpr, PAIRS: tl.constexpr):
    r = tl.program_id(0)
    if PAIRS:
        b = tl.load(pairs_ptr + r * 2)
        h = tl.load(pairs_ptr + r * 2 + 1)
        live = b >= 0
    else:
        b = r // Hq
        h = r % Hq
        live = r >= 0
    sp = tl.arange(0, NSP)
    dv = tl.arange(0, DV)
    okp = (sp < NSPLIT) & live                     # an unlisted pair slot reads nothing
    base = r.to(tl.int64) * NSPLIT
    m = tl.load(m_ptr + base + sp, mask=okp, other=float("-inf"))
    l = tl.load(l_ptr + base + sp, mask=okp, other=0.0)
    M = tl.max(m, axis=0)
    w = tl.exp2(m - tl.where(M == float("-inf"), 0.0, M))          # empty splits: 2^(−inf) = 0
    acc = tl.load(acc_ptr + ((base + sp) * DV)[:, None] + dv[None, :], mask=okp[:, None], other=0.0)
    num = tl.sum(acc * w[:, None], axis=0)
    den = tl.sum(l * w, axis=0)
    o = tl.where(den > 0, num / tl.where(den > 0, den, 1.0), 0.0)   # empty row: 0, not NaN
    b64 = tl.where(live, b, 0).to(tl.int64)
    h64 = tl.where(live, h, 0).to(tl.int64)
    tl.store(out_ptr + b64 * out_sb + h64 * out_sh + dv, o.to(out_ptr.dtype.element_ty), mask=(dv < DV) & live)


def _card_programs(device) -> int:
    """Programs that fill the card four times (132 SMs on an H100/H200; 4 SMs stand in on a CPU)."""
    import torch

    return 4 * (torch.cuda.get_device_properties(device).multi_processor_count if device.type == "cuda" else 4)


def default_splits(programs: int, max_tokens: int, block_n: int, device) -> int:
    """Splits per (row, KV head): enough programs to fill the card four times (132 SMs on an
    H100/H200), but no split shorter than 4 tiles (each split costs a partial state and a combine
    term). Why four: on an H100 (benchmarks/results/e2e_h100/profile/tune_dense.json, 1B shape at
    128k, batch 1 and 4, 3 pipeline stages) twice the SMs left the kernel at 0.84-0.92x of SDPA
    flash's time-equivalent speed and four times reached 1.00-1.08x; head dim 128 and 8k at batch 16
    gain 1-4 %."""
    want = max(1, -(-_card_programs(device) // max(1, programs)))
    return max(1, min(want, -(-max_tokens // (4 * block_n))))


def paged_dense_decode(q, k_pages, v_pages, block_table, seq_idx, seq_lens, *, max_tokens: int,
                       scale: float | None = None, out=None, pairs=None, pair_count=None,
                       num_splits: int | None = None, block_n: int = 64, num_warps: int = 4, num_stages: int = 3):
    """Exact decode attention of ``q`` (B, Hq, D) over the paged pool (see module doc); returns ``out``
    (B, Hq, Dv), allocated in q's dtype unless given.

    ``k_pages``/``v_pages`` (N, Hkv, S, D / Dv) contiguous, ``block_table`` (max_seqs, max_pages)
    int32, ``seq_idx`` (B,) int32 sequence id of each batch row, ``seq_lens`` (max_seqs,) int32 —
    lengths are read on the device and must stay ≤ ``max_tokens`` (the static grid's reach: tokens past
    it are not attended). ``pairs`` (CAP, 2) int32 (row, query head), −1-padded: only those heads are
    computed and written into ``out`` (which must then be given); ``pair_count`` (a one-element integer
    device tensor, optional) how many leading slots of ``pairs`` are listed (the rest must be −1):
    the persistent pairs grid then works on those only. No host synchronisation.
    """
    import torch

    from vashista_core.errors import VashistaInputError

    from .. import validate as V

    q = V.tensor("q", q, ndim=3, check_finite=False)        # (a finiteness check would synchronise)
    B, Hq, D = q.shape
    if k_pages.ndim != 4 or v_pages.ndim != 4 or k_pages.shape[:3] != v_pages.shape[:3]:
        raise VashistaInputError("k_pages", f"expected k/v pools (N, Hkv, S, D) of one page layout, got "
                                            f"{tuple(k_pages.shape)} and {tuple(v_pages.shape)}")
    N, Hkv, S, Dk = k_pages.shape
    Dv = v_pages.shape[3]
    if Dk != D:
        raise VashistaInputError("q", f"has head dimension {D} but the pool stores keys of dimension {Dk}")
    if Hq % Hkv:
        raise VashistaInputError("q", f"has {Hq} query heads, not a multiple of the pool's {Hkv} KV heads")
    for name, x in (("q", q), ("block_table", block_table), ("seq_idx", seq_idx), ("seq_lens", seq_lens)):
        V.same_device(name, x, k_pages.device)
    if not k_pages.is_contiguous() or not v_pages.is_contiguous():
        raise VashistaInputError("k_pages", "the page pools must be contiguous")
    for name, n in (("D", D), ("Dv", Dv)):
        if n & (n - 1) or n < 16:
            raise VashistaInputError("q" if name == "D" else "v_pages",
                                     f"head dimension {name} = {n}: the kernel needs a power of two >= 16")
    for name, x in (("block_table", block_table), ("seq_idx", seq_idx), ("seq_lens", seq_lens)):
        if x.dtype != torch.int32:
            raise VashistaInputError(name, f"must be int32 (the kernel reads 32-bit entries), got {x.dtype}")
    if tuple(seq_idx.shape) != (B,):
        raise VashistaInputError("seq_idx", f"expected shape ({B},) (one sequence per batch row), got {tuple(seq_idx.shape)}")
    max_tokens = V.positive_int("max_tokens", max_tokens, upper=block_table.shape[1] * S,
                                upper_name="block_table columns · page size")
    sc = 1.0 / math.sqrt(D) if scale is None else float(V.positive_scalar("scale", scale))
    if out is None:
        if pairs is not None:
            raise VashistaInputError("out", "pairs mode patches an existing output: pass out")
        out = torch.empty((B, Hq, Dv), dtype=q.dtype, device=q.device)
    if tuple(out.shape) != (B, Hq, Dv) or out.stride(2) != 1:
        raise VashistaInputError("out", f"expected shape {(B, Hq, Dv)} with contiguous last dim, got {tuple(out.shape)}")
    G = Hq // Hkv
    if pairs is not None:
        if pairs.ndim != 2 or pairs.shape[1] != 2 or pairs.dtype != torch.int32 or not pairs.is_contiguous():
            raise VashistaInputError("pairs", f"expected a contiguous (CAP, 2) int32 tensor, got "
                                              f"{tuple(pairs.shape)} {pairs.dtype}")
        V.same_device("pairs", pairs, k_pages.device)
        programs, rows, GP = pairs.shape[0], pairs.shape[0], 16
        if programs == 0:
            return out
        if pair_count is not None:
            if not isinstance(pair_count, torch.Tensor) or pair_count.numel() != 1 or pair_count.is_floating_point() \
                    or pair_count.dtype == torch.bool:
                raise VashistaInputError("pair_count", "expected a one-element integer tensor (listed pairs)")
            V.same_device("pair_count", pair_count, k_pages.device)
    elif pair_count is not None:
        raise VashistaInputError("pair_count", "counts the listed pairs: pass pairs too")
    else:
        programs, rows, GP = B * Hkv, B * Hq, max(16, triton.next_power_of_2(G))
    ns = default_splits(programs, max_tokens, block_n, q.device) if num_splits is None else \
        V.positive_int("num_splits", num_splits)
    split_len = -(-(-(-max_tokens // ns)) // block_n) * block_n
    ns = -(-max_tokens // split_len)
    m = torch.empty((rows, ns), dtype=torch.float32, device=q.device)
    l = torch.empty((rows, ns), dtype=torch.float32, device=q.device)
    acc = torch.empty((rows, ns, Dv), dtype=torch.float32, device=q.device)
    qc = q.contiguous()
    pp = pairs if pairs is not None else seq_idx
    interp = os.environ.get("TRITON_INTERPRET", "0") == "1"
    common = dict(D=D, DV=Dv, S=S, BN=block_n, IEEE=k_pages.dtype == torch.float32 or interp, INTERP=interp,
                  TILES=split_len // block_n if interp else 0, num_warps=num_warps, num_stages=num_stages)
    if pairs is None:
        _split_kernel[(programs, ns)](qc, k_pages, v_pages, block_table, block_table.stride(0), seq_idx, seq_lens,
                                      m, l, acc, Hq, Hkv, split_len, ns, sc * LOG2E, G=G, GP=GP, **common)
    else:
        # persistent: a fixed grid (capturable) of at most the programs that fill the card
        # (default_splits' target), looping over the listed pairs' (pair, split) items: a grid of
        # CAP·splits programs left all but the flagged pairs' to exit at once (~55-85 µs per layer
        # of DenseFallback with nothing flagged, 1B/8B models on an H100)
        nprog = min(programs * ns, _card_programs(q.device))
        _pairs_split_kernel[(nprog,)](qc, k_pages, v_pages, block_table, block_table.stride(0), seq_idx, seq_lens,
                                      pairs, pairs if pair_count is None else pair_count, m, l, acc, Hq, Hkv,
                                      split_len, ns, programs, nprog, sc * LOG2E, G=G, GP=GP,
                                      ROUNDS=-(-programs * ns // nprog) if interp else 0,
                                      COUNTED=pair_count is not None, **common)
    _combine_kernel[(rows,)](m, l, acc, out, out.stride(0), out.stride(1), pp, Hq, ns,
                             NSP=triton.next_power_of_2(ns), DV=Dv, PAIRS=pairs is not None, num_warps=4)
    return out


def cache_dense_decode(q, cache, seq_idx, *, max_tokens: int, scale: float | None = None, out=None,
                       pairs=None, **launch):
    """:func:`paged_dense_decode` over a ``TorchPagedKVCache`` (its pools, page table and lengths)."""
    return paged_dense_decode(q, cache.k_pages, cache.v_pages, cache.block_table, seq_idx, cache.seq_lens,
                              max_tokens=max_tokens, scale=scale, out=out, pairs=pairs, **launch)
