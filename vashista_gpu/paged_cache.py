"""Paged KV cache on torch tensors, with per-page summaries kept current on append.

Same layout ideas and the same public methods as ``vashista_ref.paged_cache.PagedKVCache``:

* a pool of physical pages ``k_pages`` (num_pages, Hkv, S, D) and ``v_pages`` (num_pages, Hkv, S, Dv)
  in the cache dtype (bf16, fp16 or fp32) — head-major inside a page, so one (page, head) is one
  contiguous S×D tile for the kernels;
* per-sequence page tables ``block_table`` (max_seqs, max_pages_per_seq) int32 mapping logical page
  -> physical page, and lengths ``seq_lens`` (max_seqs,) int32, with host mirrors so that planning a
  decode step never synchronises with the device;
* per-page summaries: ``kmin``/``kmax`` (num_pages, Hkv, D) per-channel min and max key in the cache
  dtype — exact, since they are elements of the stored keys, so the page bound
  UB_p(q) = Σ_d max(q_d min_{p,d}, q_d max_{p,d}) is sound (SPEC 2); ``kmean`` (float32) for the
  notebook's mean-key router; ``vnorm`` (float32) the max value norm in the page (certificate);
* per-sequence running maxima ``kabs`` (max_seqs, Hkv, D) float32 = max over the sequence's pages of
  max(|kmin|, |kmax|) (with key summaries: the paged step's certificate reads it,
  ``decode._row_bounds``) and ``vabs`` (max_seqs, Hkv) = max of its pages' ``vnorm`` (with value
  norms: both certificates' max‖v‖ read it, ``decode._row_bounds`` and ``sketch_plan.row_vmax``, one
  gather instead of a walk over every live page per step — 22 µs per layer at 128k on an H100,
  latency-bound). Kept on every append
  from the touched pages' fresh summaries, reset when a slot is (re)added: a page's summaries only
  grow as it fills (a max/min over more of the same stored tokens), so the running max of them is
  bit for bit the max over the live pages, and a NaN propagates through torch.maximum as through amax
  (the device append also marks NaN tokens itself: the Triton summaries may drop a NaN);
* optional hierarchy (``fanout=F``, pages of pages): level l ≥ 1 node j of a sequence summarises its
  logical pages [j·F^l, (j+1)·F^l) with the same fields (box of boxes, count-weighted mean, max norm),
  ``levels[l-1]`` = dict of (max_seqs, n_l, Hkv, ·) tensors. A sequence of n pages uses the levels
  below the first one with a single node; routing (``decode.py``) descends them like the reference.

``append`` writes tokens into their slots and recomputes the summaries of the touched pages with a
Triton kernel (``kernels/page_summary.py``; on GPU, or on CPU under the interpreter when
``backend="triton"``) or the same function in torch, then the touched hierarchy nodes from their
children (``summaries.py``). Recomputing a touched page from its ≤ S tokens costs the same as an
incremental update and cannot drift.

Example::

    >>> import torch
    >>> from vashista_gpu.paged_cache import TorchPagedKVCache
    >>> cache = TorchPagedKVCache(4, 2, 8, num_pages=16, max_seqs=2, dtype=torch.float32, backend="torch")
    >>> s = cache.add_sequence()
    >>> cache.append(s, torch.randn(6, 2, 8), torch.randn(6, 2, 8))           # prefill 6 tokens
    >>> cache.append_step([s], torch.randn(1, 2, 8), torch.randn(1, 2, 8))    # one decode step
    >>> cache.length(s), cache.n_pages(s)
    (7, 2)
"""
from __future__ import annotations

import math
import os

import torch

from vashista_core.errors import VashistaInputError

from . import validate as V

__all__ = ["CACHE_DTYPES", "TorchPagedKVCache", "resolve_backend"]

CACHE_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def resolve_backend(backend: str, device: torch.device) -> str:
    """'auto' -> 'triton' on CUDA, 'torch' elsewhere."""
    if backend not in ("auto", "triton", "torch"):
        raise VashistaInputError("backend", f"must be 'auto', 'triton' or 'torch', got {backend!r}")
    if backend == "auto":
        return "triton" if device.type == "cuda" else "torch"
    if backend == "triton" and device.type != "cuda" and os.environ.get("TRITON_INTERPRET", "0") != "1":
        # a compiled Triton kernel cannot read host memory: refuse here, not inside the launcher
        raise VashistaInputError("backend", f"'triton' needs a CUDA device (or TRITON_INTERPRET=1), the cache is on {device}")
    return backend


class TorchPagedKVCache:
    """Physical page pool + page tables + summaries (see module docstring).

    Parameters as ``vashista_ref.paged_cache.PagedKVCache`` (page_size S, n_kv_heads Hkv, head_dim D,
    value_dim Dv, fanout F) plus the preallocated capacities ``num_pages``, ``max_seqs``,
    ``max_pages_per_seq``, the storage ``dtype``/``device`` and the summary-update ``backend``;
    ``key_summaries=False`` keeps only the value norms (no kmin/kmax/kmean: no page routing);
    ``value_norms=False`` (with ``key_summaries=False``) keeps no summaries at all: appends then
    refresh nothing (dense decoding reads none of them).
    """

    def __init__(self, page_size: int, n_kv_heads: int, head_dim: int, value_dim: int | None = None,
                 *, fanout: int | None = None, num_pages: int = 1024, max_seqs: int = 16,
                 max_pages_per_seq: int | None = None, dtype: torch.dtype = torch.bfloat16, device="cpu",
                 backend: str = "auto", key_summaries: bool = True, value_norms: bool = True):
        self.page_size = V.positive_int("page_size", page_size)
        self.n_kv_heads = V.positive_int("n_kv_heads", n_kv_heads)
        self.head_dim = V.positive_int("head_dim", head_dim)
        self.value_dim = V.positive_int("value_dim", value_dim if value_dim is not None else head_dim)
        if fanout is not None and V.positive_int("fanout", fanout) < 2:
            raise VashistaInputError("fanout", f"must be >= 2 (or None for no hierarchy), got {fanout}")
        self.fanout = None if fanout is None else int(fanout)
        self.num_pages = V.positive_int("num_pages", num_pages)
        self.max_seqs = V.positive_int("max_seqs", max_seqs)
        self.max_pages_per_seq = V.positive_int(
            "max_pages_per_seq", max_pages_per_seq if max_pages_per_seq is not None else num_pages)
        if dtype not in CACHE_DTYPES:
            raise VashistaInputError("dtype", f"must be float32, float16 or bfloat16, got {dtype}")
        self.dtype = dtype
        self.device = torch.device(device)
        self.backend = resolve_backend(backend, self.device)
        H, S, D, Dv, N = self.n_kv_heads, self.page_size, self.head_dim, self.value_dim, self.num_pages
        dev = self.device
        # Pool contents start as NaN: a read of a slot nobody wrote poisons the result instead of
        # passing silently as zeros.
        self.k_pages = torch.full((N, H, S, D), float("nan"), dtype=dtype, device=dev)
        self.v_pages = torch.full((N, H, S, Dv), float("nan"), dtype=dtype, device=dev)
        # key summaries (kmin/kmax/kmean) feed the page routers only: a cache that never routes
        # (dense and certified decode read vnorm alone) can skip them, 2·D·dtype + 4·D bytes per page and head
        if not isinstance(key_summaries, bool):
            raise VashistaInputError("key_summaries", f"expected a bool, got {key_summaries!r}")
        if not key_summaries and self.fanout is not None:
            raise VashistaInputError("key_summaries", "the hierarchy (fanout) is built from the key summaries")
        self.kmin = torch.zeros((N, H, D), dtype=dtype, device=dev) if key_summaries else None
        self.kmax = torch.zeros((N, H, D), dtype=dtype, device=dev) if key_summaries else None
        self.kmean = torch.zeros((N, H, D), dtype=torch.float32, device=dev) if key_summaries else None
        # value norms feed the certificates (certified and paged decode); dense decoding reads no
        # summary, so a dense-only cache skips them and its appends refresh nothing
        if not isinstance(value_norms, bool):
            raise VashistaInputError("value_norms", f"expected a bool, got {value_norms!r}")
        if not value_norms and key_summaries:
            raise VashistaInputError("value_norms", "the key summaries' routers certify with the value norms: "
                                                    "value_norms=False needs key_summaries=False")
        self.vnorm = torch.zeros((N, H), dtype=torch.float32, device=dev) if value_norms else None
        # the paged step's row bounds (module doc), kept as running maxima so that a decode step reads
        # (max_seqs, H, D) instead of scanning every live page's summaries (NP·H·D per layer and step)
        self.kabs = torch.zeros((self.max_seqs, H, D), dtype=torch.float32, device=dev) if key_summaries else None
        self.vabs = torch.zeros((self.max_seqs, H), dtype=torch.float32, device=dev) if value_norms else None
        self.block_table = torch.zeros((self.max_seqs, self.max_pages_per_seq), dtype=torch.int32, device=dev)
        self.seq_lens = torch.zeros((self.max_seqs,), dtype=torch.int32, device=dev)
        # bits -> sketch.TorchPageSketchStore (certified mode), kept current in _write; empty unless
        # vashista_gpu.sketch.attach_sketch(cache, bits) was called
        self.sketches: dict = {}
        # appends so far: a page sketch store records the count it has seen (``sketch_plan`` refuses a
        # store that missed an append: stale)
        self.version = 0
        self.levels: list[dict[str, torch.Tensor]] = []
        if self.fanout is not None:
            n = self.max_pages_per_seq
            while n > 1:
                n = math.ceil(n / self.fanout)
                self.levels.append(dict(
                    kmin=torch.zeros((self.max_seqs, n, H, D), dtype=dtype, device=dev),
                    kmax=torch.zeros((self.max_seqs, n, H, D), dtype=dtype, device=dev),
                    kmean=torch.zeros((self.max_seqs, n, H, D), dtype=torch.float32, device=dev),
                    vnorm=torch.zeros((self.max_seqs, n, H), dtype=torch.float32, device=dev)))
        # host mirrors (planning must not synchronise)
        self._lens = [0] * self.max_seqs
        self._pages: list[list[int]] = [[] for _ in range(self.max_seqs)]
        self._live = [False] * self.max_seqs
        self._free = list(range(N - 1, -1, -1))      # sorted descending: pop() hands out the lowest

    # ------------------------------------------------------------------ sequences
    def add_sequence(self, seq_id: int | None = None) -> int:
        """Reserve a sequence slot (the lowest free one, or ``seq_id``); returns its id."""
        if seq_id is None:
            free = [i for i, live in enumerate(self._live) if not live]
            if not free:
                raise VashistaInputError("max_seqs", f"all {self.max_seqs} sequence slots are in use")
            seq_id = free[0]
        if isinstance(seq_id, bool) or not isinstance(seq_id, int) or not 0 <= seq_id < self.max_seqs:
            raise VashistaInputError("seq_id", f"must be an integer in [0, {self.max_seqs}), got {seq_id!r}")
        if self._live[seq_id]:
            raise VashistaInputError("seq_id", f"sequence {seq_id} already exists")
        self._live[seq_id] = True
        self._lens[seq_id] = 0
        self._pages[seq_id] = []
        self.seq_lens[seq_id] = 0
        for m in (self.kabs, self.vabs):   # a reused slot must not keep its previous sequence's maxima
            if m is not None:
                m[seq_id] = 0.0
        return seq_id

    @property
    def seq_ids(self) -> list[int]:
        return [i for i, live in enumerate(self._live) if live]

    def is_live(self, seq_id: int) -> bool:
        """Whether ``seq_id`` names a sequence in the cache now (host mirror: no synchronisation)."""
        return isinstance(seq_id, int) and not isinstance(seq_id, bool) and 0 <= seq_id < self.max_seqs \
            and self._live[seq_id]

    def free_sequence(self, seq_id: int) -> None:
        """Drop a sequence and return its pages to the pool."""
        self._check_seq(seq_id)
        self._free.extend(self._pages[seq_id])
        self._free.sort(reverse=True)
        self._pages[seq_id] = []
        self._lens[seq_id] = 0
        self._live[seq_id] = False
        self.seq_lens[seq_id] = 0

    def length(self, seq_id: int) -> int:
        self._check_seq(seq_id)
        return self._lens[seq_id]

    def n_pages(self, seq_id: int) -> int:
        self._check_seq(seq_id)
        return len(self._pages[seq_id])

    def page_table(self, seq_id: int) -> list[int]:
        """Physical page of each logical page of the sequence (host copy)."""
        self._check_seq(seq_id)
        return list(self._pages[seq_id])

    def _check_seq(self, seq_id) -> None:
        if isinstance(seq_id, bool) or not isinstance(seq_id, int) or not 0 <= seq_id < self.max_seqs \
                or not self._live[seq_id]:
            raise VashistaInputError("seq_id", f"unknown sequence {seq_id!r}")

    # ------------------------------------------------------------------ append
    def append(self, seq_id: int, keys: torch.Tensor, values: torch.Tensor, *,
               physical_pages: list[int] | None = None) -> None:
        """Append T >= 1 tokens to one sequence: ``keys`` (T, Hkv, D), ``values`` (T, Hkv, Dv).

        ``physical_pages`` optionally names, in order, the physical pages for the pages this call opens
        (shuffled layouts in tests); otherwise the lowest free pages are taken.
        """
        self._check_seq(seq_id)
        keys, values = self._check_kv(keys, values)
        T = keys.shape[0]
        start = self._lens[seq_id]
        pos = torch.arange(start, start + T, device=self.device)
        self._write(torch.full_like(pos, seq_id), pos, keys, values,
                    {seq_id: list(physical_pages)} if physical_pages else {})

    def append_step(self, seq_ids, keys: torch.Tensor, values: torch.Tensor) -> None:
        """One decode step: one token for each of B distinct sequences; keys (B, Hkv, D), values (B, Hkv, Dv)."""
        ids = [int(s) for s in V.index_tensor("seq_ids", seq_ids).tolist()]
        for s in ids:
            self._check_seq(s)
        if len(set(ids)) != len(ids):
            raise VashistaInputError("seq_ids", "must be distinct (one token per sequence per step)")
        keys, values = self._check_kv(keys, values)
        if keys.shape[0] != len(ids):
            raise VashistaInputError("keys", f"expected one token per sequence ({len(ids)}), got {keys.shape[0]}")
        self._write(torch.tensor(ids, device=self.device), torch.tensor([self._lens[s] for s in ids], device=self.device),
                    keys, values, {})

    def _check_kv(self, k, v):
        k = V.tensor("keys", k, ndim=3)
        v = V.tensor("values", v, ndim=3)
        H, D, Dv = self.n_kv_heads, self.head_dim, self.value_dim
        if tuple(k.shape[1:]) != (H, D):
            raise VashistaInputError("keys", f"expected shape (T, {H}, {D}), got {tuple(k.shape)}")
        if tuple(v.shape) != (k.shape[0], H, Dv):
            raise VashistaInputError("values", f"expected shape ({k.shape[0]}, {H}, {Dv}), got {tuple(v.shape)}")
        # a value beyond the cache dtype's range would be stored as ±inf (keys of 1e5 in float16):
        # refused here, where the inputs are already checked on the host, rather than decoded
        big = torch.finfo(self.dtype).max
        for name, x in (("keys", k), ("values", v)):
            if x.dtype != self.dtype:
                m = float(x.abs().amax())
                if m > big:
                    raise VashistaInputError(name, f"holds {m:.3g}, beyond the range of the cache dtype {self.dtype} "
                                                   f"(max {big:.3g}); use a wider cache dtype")
        return k, v

    def _allocate(self, seqs: list[int], last_pos: dict, wanted: dict) -> None:
        """Host-side page allocation for the pages that positions up to ``last_pos[s]`` need; all or
        nothing, so a full pool fails before anything is written."""
        S = self.page_size
        need = {}
        for s, p in last_pos.items():
            lp = p // S
            if lp >= self.max_pages_per_seq:
                raise VashistaInputError("keys", f"sequence {s} would exceed max_pages_per_seq={self.max_pages_per_seq}")
            if lp >= len(self._pages[s]):
                need[s] = lp + 1 - len(self._pages[s])
        if sum(need.values()) > len(self._free):
            raise VashistaInputError("keys", f"page pool exhausted: need {sum(need.values())} pages, "
                                             f"{len(self._free)} free")
        rows, cols, vals = [], [], []
        for s, n in need.items():
            want = list(wanted.get(s, []))
            for _ in range(n):
                w = want.pop(0) if want else None
                if w is not None:
                    if w not in self._free:
                        raise VashistaInputError("physical_pages", f"page {w} is not free")
                    self._free.remove(w)
                    phys = w
                else:
                    phys = self._free.pop()            # _free is kept sorted descending: lowest page
                rows.append(s)
                cols.append(len(self._pages[s]))
                vals.append(phys)
                self._pages[s].append(phys)
        if rows:
            self.block_table[torch.tensor(rows, device=self.device), torch.tensor(cols, device=self.device)] = \
                torch.tensor(vals, dtype=torch.int32, device=self.device)

    def _write(self, seqs, pos, k, v, wanted: dict) -> None:
        """Write tokens at (seq, logical position) pairs, then refresh the touched summaries.
        ``seqs``/``pos``: int64 tensors (on the cache device) of equal length."""
        S = self.page_size
        host_s, host_p = seqs.tolist(), pos.tolist()
        last = {}
        for s_, p_ in zip(host_s, host_p):
            last[s_] = max(last.get(s_, -1), p_)
        self._allocate(list(last), last, wanted)
        lp = pos // S
        phys = self.block_table[seqs, lp].long()
        slot = pos % S
        self.k_pages[phys, :, slot, :] = k.to(device=self.device, dtype=self.dtype)
        self.v_pages[phys, :, slot, :] = v.to(device=self.device, dtype=self.dtype)
        for s_, p_ in last.items():
            self._lens[s_] = max(self._lens[s_], p_ + 1)
            self.seq_lens[s_] = self._lens[s_]
        # touched (seq, logical page) pairs, their physical pages and valid-slot counts
        key = torch.unique(seqs * self.max_pages_per_seq + lp)
        t_seq, t_lp = key // self.max_pages_per_seq, key % self.max_pages_per_seq
        counts = (self.seq_lens[t_seq].long() - t_lp * S).clamp(max=S)
        from .summaries import update_levels, update_page_summaries
        t_phys = self.block_table[t_seq, t_lp]
        update_page_summaries(self, t_phys.to(torch.int32), counts.to(torch.int32))
        self._raise_row_maxima(t_seq, t_phys.long(), one_page_each=len(last) == key.numel())
        if self.levels:
            update_levels(self, t_seq, t_lp)
        self.version += 1
        for store in self.sketches.values():
            store.update_pages(self, t_phys.long(), counts)

    def _raise_row_maxima(self, seqs: torch.Tensor, phys: torch.Tensor, *, one_page_each: bool,
                          keys: torch.Tensor | None = None, values: torch.Tensor | None = None,
                          values_done: bool = False) -> None:
        """Raise ``kabs``/``vabs`` of sequences ``seqs`` by the fresh summaries of their touched physical
        pages ``phys`` (module doc). ``one_page_each``: the seqs are distinct (a decode step) — one
        indexed update, no host synchronisation; otherwise one update per sequence (a prefill).
        ``keys``/``values`` (B, H, ·): the device append's tokens, which nothing refused — a NaN among
        them is marked here, since the Triton summaries' min/max may drop NaN (they do under the
        interpreter); max(x, 0) is x for the other maxima (≥ 0), so they stay bit for bit the scan's.
        ``values_done``: ``vabs`` was already raised (the fused append kernel does it)."""
        pairs = []                                     # (running maximum, this append's maxima)
        if self.kabs is not None:
            r = torch.maximum(self.kmin[phys].abs(), self.kmax[phys].abs()).float()   # (n, H, D)
            if keys is not None:
                r = torch.maximum(r, torch.where(keys.isnan(), math.nan, 0.0))
            pairs.append((self.kabs, r))
        if self.vabs is not None and not values_done:
            vn = self.vnorm[phys]                                                      # (n, H)
            if values is not None:
                vn = torch.maximum(vn, torch.where(values.isnan().any(-1), math.nan, 0.0))
            pairs.append((self.vabs, vn))
        for run, new in pairs:
            if one_page_each:
                run[seqs] = torch.maximum(run[seqs], new)
                continue
            for s in torch.unique(seqs).tolist():
                run[s] = torch.maximum(run[s], new[seqs == s].amax(0))

    # ------------------------------------------------------------------ engine (CUDA-graph) decode
    def reserve(self, seq_id: int, tokens: int) -> None:
        """Allocate now the pages that ``tokens`` tokens of the sequence need, so that appends up to
        that length never change the page table (a captured decode step reads it on the device)."""
        self._check_seq(seq_id)
        tokens = V.positive_int("tokens", tokens)
        self._allocate([seq_id], {seq_id: tokens - 1}, {})

    def append_step_device(self, seq_idx: torch.Tensor, keys: torch.Tensor, values: torch.Tensor) -> None:
        """One decode step with no host synchronisation (capturable in a CUDA graph): one token for each
        of the distinct sequences ``seq_idx`` (B,) (a device tensor), written at the lengths read on the
        device, which are then advanced there. The pages must have been reserved (:meth:`reserve`); the
        host mirrors of the lengths lag until :meth:`sync_lengths`. keys (B, Hkv, D), values (B, Hkv, Dv)."""
        from .summaries import update_page_summaries

        if self.levels:
            raise VashistaInputError("fanout", "the device append does not maintain the hierarchy levels")
        if self.backend == "triton":
            from .kernels.append_step import append_step, fusable
            if fusable(self):          # two launches instead of ~90 small ops (launch-bound under a graph)
                append_step(self, seq_idx, keys, values)       # raises vabs itself
                if self.kabs is not None:              # paged mode's key maxima, from the kernel's summaries
                    seq = seq_idx.long()
                    pos = self.seq_lens[seq].long() - 1            # the kernel advanced the lengths
                    self._raise_row_maxima(seq, self.block_table[seq, pos // self.page_size].long(),
                                           one_page_each=True, keys=keys, values_done=True)
                return
        seq = seq_idx.long()
        pos = self.seq_lens[seq].long()
        phys = self.block_table[seq, pos // self.page_size].long()
        slot = pos % self.page_size
        self.k_pages[phys, :, slot, :] = keys.to(self.dtype)
        self.v_pages[phys, :, slot, :] = values.to(self.dtype)
        self.seq_lens[seq] = (pos + 1).to(torch.int32)
        counts = (slot + 1).to(torch.int32)
        update_page_summaries(self, phys.to(torch.int32), counts)
        self._raise_row_maxima(seq, phys, one_page_each=True, keys=keys, values=values)
        for store in self.sketches.values():
            store.update_pages(self, phys, counts, check=False)

    def sync_lengths(self) -> None:
        """Bring the host mirrors of the lengths up to the device's after device appends (one
        synchronisation); refuses lengths that outgrew the reserved pages."""
        lens = self.seq_lens.tolist()
        for s, live in enumerate(self._live):
            if live and lens[s] != self._lens[s]:
                if -(-lens[s] // self.page_size) > len(self._pages[s]):
                    raise VashistaInputError("seq_lens", f"sequence {s} grew to {lens[s]} tokens past its reserved pages")
                self._lens[s] = lens[s]

    # ------------------------------------------------------------------ reading back
    def gather(self, seq_id: int, head: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Keys and values of the whole sequence in logical order: (T, Hkv, D), (T, Hkv, Dv), or
        (T, D), (T, Dv) for one KV ``head`` (as the reference)."""
        T = self.length(seq_id)
        pages = torch.tensor(self._pages[seq_id], dtype=torch.long, device=self.device)
        k = self.k_pages[pages].permute(0, 2, 1, 3).reshape(-1, self.n_kv_heads, self.head_dim)[:T]
        v = self.v_pages[pages].permute(0, 2, 1, 3).reshape(-1, self.n_kv_heads, self.value_dim)[:T]
        if head is not None:
            return k[:, head], v[:, head]
        return k, v

    def n_levels_for(self, n_pages: int) -> int:
        """Summary levels a sequence of n_pages routes through (1 = pages only), as the reference."""
        if self.fanout is None:
            return 1
        L = 0
        while n_pages > self.fanout ** (L + 1):
            L += 1
        return 1 + L

    @classmethod
    def from_dense(cls, keys, values, page_size: int, *, fanout: int | None = None,
                   shuffle_seed: int | None = None, chunk: int | None = None, dtype=torch.float32,
                   device="cpu", backend: str = "auto", spare_pages: int = 0) -> tuple["TorchPagedKVCache", list[int]]:
        """Build a cache from per-sequence tensors (T_i, Hkv, D)/(T_i, Hkv, Dv) (one, or a list);
        ``shuffle_seed`` scatters logical pages over a random permutation of physical pages, ``chunk``
        appends that many tokens at a time (1 replays decode steps). Returns (cache, seq_ids)."""
        if isinstance(keys, torch.Tensor):
            keys, values = [keys], [values]
        keys, values = list(keys), list(values)
        if not keys or len(keys) != len(values):
            raise VashistaInputError("keys", "expected a non-empty list of sequences matching values")
        need = [math.ceil(k.shape[0] / page_size) for k in keys]
        total = sum(need) + spare_pages
        k0, v0 = V.tensor("keys", keys[0], ndim=3), V.tensor("values", values[0], ndim=3)
        cache = cls(page_size, k0.shape[1], k0.shape[2], v0.shape[2], fanout=fanout, num_pages=max(1, total),
                    max_seqs=len(keys), max_pages_per_seq=max(need) + spare_pages, dtype=dtype,
                    device=device, backend=backend)
        order = list(range(sum(need)))
        if shuffle_seed is not None:
            g = torch.Generator().manual_seed(shuffle_seed)
            order = torch.randperm(sum(need), generator=g).tolist()
        ids, start = [], 0
        for k, v, n in zip(keys, values, need):
            sid = cache.add_sequence()
            phys, start = order[start:start + n], start + n
            T = k.shape[0]
            step = T if chunk is None else V.positive_int("chunk", chunk)
            for t in range(0, T, step):
                n_open = math.ceil(min(t + step, T) / page_size) - math.ceil(t / page_size)
                use, phys = phys[:n_open], phys[n_open:]
                cache.append(sid, k[t:t + step], v[t:t + step], physical_pages=use)
            ids.append(sid)
        return cache, ids
