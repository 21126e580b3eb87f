"""Paged KV cache on torch tensors, with per-page summaries kept current on append.

Layout (same ideas as ``vashista_ref.paged_cache.PagedKVCache``):

* a pool of physical pages ``k_pages`` (num_pages, Hkv, S, D) and ``v_pages`` (num_pages, Hkv, S, Dv)
  in the cache dtype (bf16, fp16 or fp32); one page holds S consecutive tokens of one sequence;
* per-sequence page tables ``page_table`` (max_seqs, max_pages_per_seq) int32 mapping logical page
  -> physical page, and lengths ``seq_lens`` (max_seqs,) int32 (with a host mirror, so that planning a
  decode step never synchronises with the device);
* per-page summaries: ``kmin``/``kmax`` (num_pages, Hkv, D) per-channel min and max key in the cache
  dtype — exact, since they are elements of the stored keys, so the page bound
  UB_p(q) = Σ_d max(q_d min_{p,d}, q_d max_{p,d}) is sound (SPEC 2); ``kmean`` (float32) for the
  notebook's mean-key router; ``vnorm`` (float32) the max value norm of the page (certificate);
* optional second level (pages of pages, ``pages_per_super`` logical pages per *superpage*), per
  sequence: ``super_kmin``/``super_kmax``/``super_kmean``/``super_vnorm`` (max_seqs, max_super, Hkv, ·).

``append`` writes tokens into their slots and then recomputes the summaries of the touched pages
(Triton kernel ``kernels/page_summary.py`` on GPU or under the interpreter; the same function in torch
otherwise) and of the touched superpages. Recomputing a touched page from its ≤ S tokens costs the
same as an incremental update and cannot drift.

Example::

    >>> import torch
    >>> from vashista_gpu.paged_cache import TorchPagedKVCache
    >>> cache = TorchPagedKVCache(num_kv_heads=2, head_dim=8, page_size=4, num_pages=16,
    ...                           max_seqs=2, dtype=torch.float32, backend="torch")
    >>> s = cache.add_sequence()
    >>> cache.append(s, torch.randn(6, 2, 8), torch.randn(6, 2, 8))   # prefill 6 tokens
    >>> cache.append_step([s], torch.randn(1, 2, 8), torch.randn(1, 2, 8))  # decode one token
    >>> cache.length(s), cache.num_pages_of(s)
    (7, 2)
"""
from __future__ import annotations

import math

import torch

from vashista_ref.errors import VashistaInputError

from . import validate as V

CACHE_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def _resolve_backend(backend: str, device: torch.device) -> str:
    if backend not in ("auto", "triton", "torch"):
        raise VashistaInputError("backend", f"must be 'auto', 'triton' or 'torch', got {backend!r}")
    if backend == "auto":
        return "triton" if device.type == "cuda" else "torch"
    return backend


class TorchPagedKVCache:
    """Physical page pool + page tables + summaries (see module docstring)."""

    def __init__(self, num_kv_heads: int, head_dim: int, value_dim: int | None = None, page_size: int = 16,
                 *, num_pages: int = 1024, max_seqs: int = 16, max_pages_per_seq: int | None = None,
                 pages_per_super: int = 32, dtype: torch.dtype = torch.bfloat16, device="cpu",
                 backend: str = "auto", generator: torch.Generator | None = None):
        self.num_kv_heads = V.positive_int("num_kv_heads", num_kv_heads)
        self.head_dim = V.positive_int("head_dim", head_dim)
        self.value_dim = V.positive_int("value_dim", value_dim if value_dim is not None else head_dim)
        self.page_size = V.positive_int("page_size", page_size)
        self.num_pages = V.positive_int("num_pages", num_pages)
        self.max_seqs = V.positive_int("max_seqs", max_seqs)
        self.max_pages_per_seq = V.positive_int(
            "max_pages_per_seq", max_pages_per_seq if max_pages_per_seq is not None else num_pages)
        self.pages_per_super = V.positive_int("pages_per_super", pages_per_super)
        if dtype not in CACHE_DTYPES:
            raise VashistaInputError("dtype", f"must be float32, float16 or bfloat16, got {dtype}")
        self.dtype = dtype
        self.device = torch.device(device)
        self.backend = _resolve_backend(backend, self.device)
        H, S, D, Dv, N = self.num_kv_heads, self.page_size, self.head_dim, self.value_dim, self.num_pages
        dev = self.device
        # Pool contents start as NaN: a read of a slot nobody wrote poisons the result instead of
        # passing silently as zeros.
        self.k_pages = torch.full((N, H, S, D), float("nan"), dtype=dtype, device=dev)
        self.v_pages = torch.full((N, H, S, Dv), float("nan"), dtype=dtype, device=dev)
        self.kmin = torch.zeros((N, H, D), dtype=dtype, device=dev)
        self.kmax = torch.zeros((N, H, D), dtype=dtype, device=dev)
        self.kmean = torch.zeros((N, H, D), dtype=torch.float32, device=dev)
        self.vnorm = torch.zeros((N, H), dtype=torch.float32, device=dev)
        self.page_table = torch.zeros((self.max_seqs, self.max_pages_per_seq), dtype=torch.int32, device=dev)
        self.seq_lens = torch.zeros((self.max_seqs,), dtype=torch.int32, device=dev)
        self.max_super = math.ceil(self.max_pages_per_seq / self.pages_per_super)
        shape2 = (self.max_seqs, self.max_super, H, D)
        self.super_kmin = torch.zeros(shape2, dtype=dtype, device=dev)
        self.super_kmax = torch.zeros(shape2, dtype=dtype, device=dev)
        self.super_kmean = torch.zeros(shape2, dtype=torch.float32, device=dev)
        self.super_vnorm = torch.zeros((self.max_seqs, self.max_super, H), dtype=torch.float32, device=dev)
        # host mirrors (planning must not synchronise)
        self._lens = [0] * self.max_seqs
        self._pages: list[list[int]] = [[] for _ in range(self.max_seqs)]
        self._live = [False] * self.max_seqs
        order = torch.randperm(N, generator=generator).tolist() if generator is not None else list(range(N))
        self._free = order[::-1]          # pop() hands out pages in `order`; a generator shuffles them

    # ------------------------------------------------------------------ sequences
    def add_sequence(self) -> int:
        """Reserve a sequence slot; returns its id."""
        for i, live in enumerate(self._live):
            if not live:
                self._live[i] = True
                self._lens[i] = 0
                self._pages[i] = []
                self.seq_lens[i] = 0
                return i
        raise VashistaInputError("max_seqs", f"all {self.max_seqs} sequence slots are in use")

    def free_sequence(self, seq_id: int) -> None:
        self._check_seq(seq_id)
        self._free.extend(reversed(self._pages[seq_id]))
        self._pages[seq_id] = []
        self._lens[seq_id] = 0
        self._live[seq_id] = False
        self.seq_lens[seq_id] = 0

    def length(self, seq_id: int) -> int:
        self._check_seq(seq_id)
        return self._lens[seq_id]

    def num_pages_of(self, seq_id: int) -> int:
        return math.ceil(self.length(seq_id) / self.page_size)

    def lengths(self, seq_ids) -> list[int]:
        return [self.length(int(s)) for s in seq_ids]

    def _check_seq(self, seq_id) -> None:
        if isinstance(seq_id, bool) or not isinstance(seq_id, int) or not 0 <= seq_id < self.max_seqs \
                or not self._live[seq_id]:
            raise VashistaInputError("seq_id", f"{seq_id!r} is not a live sequence of this cache")

    # ------------------------------------------------------------------ append
    def append(self, seq_id: int, k: torch.Tensor, v: torch.Tensor) -> None:
        """Append T tokens to one sequence (prefill): k (T, Hkv, D), v (T, Hkv, Dv)."""
        self._check_seq(seq_id)
        k, v = self._check_kv(k, v)
        T = k.shape[0]
        seqs = [seq_id] * T
        pos = list(range(self._lens[seq_id], self._lens[seq_id] + T))
        self._write(seqs, pos, k, v)

    def append_step(self, seq_ids, k: torch.Tensor, v: torch.Tensor) -> None:
        """Append one token to each of B distinct sequences (decode): k (B, Hkv, D), v (B, Hkv, Dv)."""
        ids = [int(s) for s in V.index_tensor("seq_ids", seq_ids).tolist()]
        for s in ids:
            self._check_seq(s)
        if len(set(ids)) != len(ids):
            raise VashistaInputError("seq_ids", "must be distinct (one token per sequence per step)")
        k, v = self._check_kv(k, v)
        if k.shape[0] != len(ids):
            raise VashistaInputError("k", f"has {k.shape[0]} rows but {len(ids)} sequence ids were given")
        self._write(ids, [self._lens[s] for s in ids], k, v)

    def _check_kv(self, k, v):
        k = V.tensor("k", k, ndim=3)
        v = V.tensor("v", v, ndim=3)
        H, D, Dv = self.num_kv_heads, self.head_dim, self.value_dim
        if tuple(k.shape[1:]) != (H, D):
            raise VashistaInputError("k", f"expected shape (T, {H}, {D}), got {tuple(k.shape)}")
        if tuple(v.shape[1:]) != (H, Dv):
            raise VashistaInputError("v", f"expected shape (T, {H}, {Dv}), got {tuple(v.shape)}")
        if v.shape[0] != k.shape[0]:
            raise VashistaInputError("v", f"has {v.shape[0]} tokens but k has {k.shape[0]}")
        return k, v

    def _write(self, seqs: list[int], pos: list[int], k: torch.Tensor, v: torch.Tensor) -> None:
        S = self.page_size
        # host-side allocation first, so a full pool fails before anything is written
        need = {}
        for s, p in zip(seqs, pos):
            lp = p // S
            if lp >= self.max_pages_per_seq:
                raise VashistaInputError("k", f"sequence {s} would exceed max_pages_per_seq={self.max_pages_per_seq}")
            if lp >= len(self._pages[s]):
                need[s] = max(need.get(s, 0), lp + 1 - len(self._pages[s]))
        if sum(need.values()) > len(self._free):
            raise VashistaInputError("k", f"page pool exhausted: need {sum(need.values())} pages, "
                                          f"{len(self._free)} free")
        for s, n in need.items():
            start = len(self._pages[s])
            for j in range(n):
                phys = self._free.pop()
                self._pages[s].append(phys)
                self.page_table[s, start + j] = phys
        phys = torch.tensor([self._pages[s][p // S] for s, p in zip(seqs, pos)], dtype=torch.long)
        slot = torch.tensor([p % S for p in pos], dtype=torch.long)
        phys_d, slot_d = phys.to(self.device), slot.to(self.device)
        self.k_pages[phys_d, :, slot_d, :] = k.to(device=self.device, dtype=self.dtype)
        self.v_pages[phys_d, :, slot_d, :] = v.to(device=self.device, dtype=self.dtype)
        touched_pages: dict[int, int] = {}
        touched_super: set[tuple[int, int]] = set()
        for s, p in zip(seqs, pos):
            self._lens[s] = max(self._lens[s], p + 1)
        for s, p in zip(seqs, pos):
            lp = p // S
            touched_pages[self._pages[s][lp]] = min(S, self._lens[s] - lp * S)
            touched_super.add((s, lp // self.pages_per_super))
        for s in set(seqs):
            self.seq_lens[s] = self._lens[s]
        pages = torch.tensor(list(touched_pages.keys()), dtype=torch.int32, device=self.device)
        counts = torch.tensor(list(touched_pages.values()), dtype=torch.int32, device=self.device)
        from .summaries import update_page_summaries, update_super_summaries
        update_page_summaries(self, pages, counts)
        update_super_summaries(self, sorted(touched_super))

    # ------------------------------------------------------------------ reading back
    def gather(self, seq_id: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The sequence's keys (T, Hkv, D) and values (T, Hkv, Dv) in logical order (tests, dense)."""
        T = self.length(seq_id)
        S = self.page_size
        pages = torch.tensor(self._pages[seq_id], dtype=torch.long, device=self.device)
        k = self.k_pages[pages].permute(0, 2, 1, 3).reshape(-1, self.num_kv_heads, self.head_dim)[:T]
        v = self.v_pages[pages].permute(0, 2, 1, 3).reshape(-1, self.num_kv_heads, self.value_dim)[:T]
        assert k.shape[0] == T and len(self._pages[seq_id]) == math.ceil(T / S)
        return k, v

    def physical_pages(self, seq_id: int) -> list[int]:
        return list(self._pages[seq_id])
