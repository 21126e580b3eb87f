"""A paged KV cache with per-page summaries (SPEC section 2), the reference for the GPU tier.

Layout (as in paged-KV serving stacks): one pool of physical pages, each holding up to ``S`` tokens for
every KV head,

    keys   (num_physical_pages, S, Hkv, D)      values (num_physical_pages, S, Hkv, Dv),

and, per sequence, a page table mapping logical page ``i`` (tokens ``i*S .. i*S+S-1``) to a physical
page. Sequences of different lengths share the pool; each sequence's last page may be partial.

Every physical page keeps a *summary* per KV head, updated incrementally whenever tokens are appended
(a prefill appends many tokens, a decode step one per sequence):

    count n_p, key sum (mean = sum / n_p), per-channel key min and max, max value norm.

The min/max box gives the sound score bound UB_p(q) = Σ_d max(q_d min_{p,d}, q_d max_{p,d}) ≥ ⟨q, k⟩
for every key k of the page. Key sums are accumulated strictly left to right in token order (a
cumulative sum seeded with the old sum), so appending token by token, in chunks, or all at once gives
bit-identical summaries; min/max/norm/count are order independent anyway.

Optional hierarchy (``fanout=F``): per sequence, level ``l >= 1`` node ``j`` summarises logical pages
``[j F^l, (j+1) F^l)`` with the same fields (box of boxes, summed counts and sums, max of norms).
Levels are added as the sequence grows so that the top level never has more than ``F`` nodes; routing
that descends it (``routing.py``) scores O(P·F·log_F(M/S)) summaries instead of M/S.

Example:
    >>> import numpy as np
    >>> from vashista_ref.paged_cache import PagedKVCache
    >>> rng = np.random.default_rng(0)
    >>> cache = PagedKVCache(page_size=4, n_kv_heads=2, head_dim=8)
    >>> seq = cache.add_sequence()
    >>> cache.append(seq, rng.normal(size=(10, 2, 8)), rng.normal(size=(10, 2, 8)))  # prefill
    >>> cache.append(seq, rng.normal(size=(1, 2, 8)), rng.normal(size=(1, 2, 8)))    # one decode step
    >>> cache.length(seq), cache.n_pages(seq), cache.summaries(seq, head=0).count.tolist()
    (11, 3, [4, 4, 3])
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from vashista_core.errors import VashistaInputError

from .validate import as_real_array, positive_int


@dataclass(frozen=True)
class Summaries:
    """Summaries of consecutive blocks (pages, or hierarchy nodes) of one sequence and one KV head.

    Arrays are indexed by the block's logical index: ``count`` (n,), ``mean``/``kmin``/``kmax`` (n, D),
    ``vmax`` (n,) the largest value norm in the block.
    """
    count: np.ndarray
    mean: np.ndarray
    kmin: np.ndarray
    kmax: np.ndarray
    vmax: np.ndarray

    def upper_bound(self, q: np.ndarray) -> np.ndarray:
        """UB(q) = Σ_d max(q_d min_d, q_d max_d): an upper bound on ⟨q, k⟩ for every key of each block."""
        with np.errstate(over="ignore", invalid="ignore"):     # an overflowing bound is +inf: still an upper bound
            return np.maximum(self.kmin * q, self.kmax * q).sum(axis=-1)


class _Level:
    """Growable summary arrays for one hierarchy level of one sequence (all KV heads)."""

    def __init__(self, n_heads: int, dim: int):
        self.n = 0
        self.count = np.zeros(0, dtype=np.int64)
        self.ksum = np.zeros((0, n_heads, dim))
        self.kmin = np.zeros((0, n_heads, dim))
        self.kmax = np.zeros((0, n_heads, dim))
        self.vmax = np.zeros((0, n_heads))

    def add_node(self) -> None:
        if self.n == self.count.shape[0]:
            cap = max(4, 2 * self.n)
            self.count = _grow(self.count, cap, 0)
            self.ksum = _grow(self.ksum, cap, 0.0)
            self.kmin = _grow(self.kmin, cap, np.inf)
            self.kmax = _grow(self.kmax, cap, -np.inf)
            self.vmax = _grow(self.vmax, cap, 0.0)
        self.n += 1


def _grow(arr: np.ndarray, cap: int, fill) -> np.ndarray:
    out = np.full((cap,) + arr.shape[1:], fill, dtype=arr.dtype)
    out[: arr.shape[0]] = arr
    return out


def _sequential_sum(start: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """start + rows[0] + rows[1] + ... evaluated strictly left to right (so chunking never matters)."""
    return np.cumsum(np.concatenate([start[None], rows], axis=0), axis=0)[-1]


class PagedKVCache:
    """Pool of physical pages of ``page_size`` tokens with per-sequence page tables and summaries.

    Parameters: ``page_size`` S >= 1, ``n_kv_heads`` Hkv >= 1, ``head_dim`` D >= 1, ``value_dim`` Dv
    (defaults to D), ``fanout`` F >= 2 to maintain the hierarchy of page groups (None: pages only).
    """

    def __init__(self, page_size: int, n_kv_heads: int, head_dim: int, value_dim: int | None = None,
                 *, fanout: int | None = None, initial_pages: int = 0):
        self.page_size = positive_int("page_size", page_size)
        self.n_kv_heads = positive_int("n_kv_heads", n_kv_heads)
        self.head_dim = positive_int("head_dim", head_dim)
        self.value_dim = positive_int("value_dim", head_dim if value_dim is None else value_dim)
        if fanout is not None and positive_int("fanout", fanout) < 2:
            raise VashistaInputError("fanout", f"must be >= 2 (or None for no hierarchy), got {fanout}")
        self.fanout = None if fanout is None else int(fanout)
        S, H, D, Dv = self.page_size, self.n_kv_heads, self.head_dim, self.value_dim
        n0 = int(initial_pages)
        self.keys = np.zeros((n0, S, H, D))
        self.values = np.zeros((n0, S, H, Dv))
        self.count = np.zeros(n0, dtype=np.int64)          # tokens stored in each physical page
        self.ksum = np.zeros((n0, H, D))
        self.kmin = np.full((n0, H, D), np.inf)
        self.kmax = np.full((n0, H, D), -np.inf)
        self.vmax = np.zeros((n0, H))
        self._free: list[int] = list(range(n0))
        self._tables: dict[int, list[int]] = {}
        self._lengths: dict[int, int] = {}
        self._levels: dict[int, list[_Level]] = {}         # hierarchy levels 1.. per sequence
        self._next_seq = 0
        # bits -> sketch.PageSketchStore: quantized pages for certified mode (router="sketch"), kept
        # current below on every append; empty unless sketch.attach_sketch(cache, bits) was called
        self.sketches: dict = {}

    # ------------------------------------------------------------------ sequences and pages
    def add_sequence(self, seq_id: int | None = None) -> int:
        """Register an empty sequence and return its id."""
        if seq_id is None:
            seq_id = self._next_seq
        if isinstance(seq_id, (bool, np.bool_)) or not isinstance(seq_id, (int, np.integer)):
            raise VashistaInputError("seq_id", f"expected an integer, got {type(seq_id).__name__}")
        seq_id = int(seq_id)
        if seq_id < 0:
            raise VashistaInputError("seq_id", f"must be >= 0, got {seq_id}")
        if seq_id in self._tables:
            raise VashistaInputError("seq_id", f"sequence {seq_id} already exists")
        self._tables[seq_id] = []
        self._lengths[seq_id] = 0
        self._levels[seq_id] = []
        self._next_seq = max(self._next_seq, seq_id + 1)
        return seq_id

    @property
    def seq_ids(self) -> list[int]:
        return list(self._tables)

    def _check_seq(self, seq_id) -> int:
        if isinstance(seq_id, (bool, np.bool_)) or not isinstance(seq_id, (int, np.integer)) \
                or int(seq_id) not in self._tables:
            raise VashistaInputError("seq_id", f"unknown sequence {seq_id!r}")
        return int(seq_id)

    def length(self, seq_id: int) -> int:
        return self._lengths[self._check_seq(seq_id)]

    def n_pages(self, seq_id: int) -> int:
        return len(self._tables[self._check_seq(seq_id)])

    def page_table(self, seq_id: int) -> np.ndarray:
        """Physical page of each logical page of the sequence."""
        return np.asarray(self._tables[self._check_seq(seq_id)], dtype=np.int64)

    @property
    def num_physical_pages(self) -> int:
        return self.keys.shape[0]

    def _grow_pool(self, cap: int) -> None:
        old = self.keys.shape[0]
        if cap > old:
            self.keys = _grow(self.keys, cap, 0.0)
            self.values = _grow(self.values, cap, 0.0)
            self.count = _grow(self.count, cap, 0)
            self.ksum = _grow(self.ksum, cap, 0.0)
            self.kmin = _grow(self.kmin, cap, np.inf)
            self.kmax = _grow(self.kmax, cap, -np.inf)
            self.vmax = _grow(self.vmax, cap, 0.0)
            self._free.extend(range(old, cap))

    def _allocate(self, preferred: int | None = None) -> int:
        if not self._free:
            self._grow_pool(max(4, 2 * self.keys.shape[0]))
        if preferred is not None and preferred in self._free:
            self._free.remove(preferred)
            return preferred
        lowest = min(self._free)
        self._free.remove(lowest)
        return lowest

    def reserve(self, n_pages: int) -> None:
        """Make sure at least ``n_pages`` physical pages exist (used to lay out shuffled pools)."""
        self._grow_pool(int(n_pages))

    def free_sequence(self, seq_id: int) -> None:
        """Drop a sequence and return its pages to the pool."""
        seq_id = self._check_seq(seq_id)
        for p in self._tables.pop(seq_id):
            self.count[p] = 0
            self.ksum[p] = 0.0
            self.kmin[p] = np.inf
            self.kmax[p] = -np.inf
            self.vmax[p] = 0.0
            self._free.append(p)
        del self._lengths[seq_id]
        del self._levels[seq_id]

    # ------------------------------------------------------------------ appending
    def append(self, seq_id: int, keys, values, *, physical_pages: list[int] | None = None) -> None:
        """Append ``T >= 1`` tokens to a sequence: ``keys`` (T, Hkv, D), ``values`` (T, Hkv, Dv).

        ``physical_pages`` optionally names, in order, the physical pages to use for the pages this call
        opens (to build deliberately shuffled layouts); otherwise the lowest free pages are taken.
        """
        seq_id = self._check_seq(seq_id)
        K = as_real_array("keys", keys, ndim=3)
        V = as_real_array("values", values, ndim=3)
        H, D, Dv = self.n_kv_heads, self.head_dim, self.value_dim
        if K.shape[1:] != (H, D):
            raise VashistaInputError("keys", f"expected shape (T, {H}, {D}), got {K.shape}")
        if V.shape != (K.shape[0], H, Dv):
            raise VashistaInputError("values", f"expected shape ({K.shape[0]}, {H}, {Dv}), got {V.shape}")
        wanted = list(physical_pages or [])
        table, S = self._tables[seq_id], self.page_size
        t = 0
        while t < K.shape[0]:
            pos = self._lengths[seq_id]
            if pos % S == 0:                                   # open a new page
                page = self._allocate(wanted.pop(0) if wanted else None)
                table.append(page)
                self._open_hierarchy_page(seq_id, len(table) - 1)
            page, slot = table[-1], pos % S
            n = min(S - slot, K.shape[0] - t)
            k, v = K[t:t + n], V[t:t + n]
            self.keys[page, slot:slot + n] = k
            self.values[page, slot:slot + n] = v
            self._update_summary(self.count, self.ksum, self.kmin, self.kmax, self.vmax, page, k, v)
            for store in self.sketches.values():
                store.update_page(self, page)
            for lvl, level in enumerate(self._levels[seq_id], start=1):
                node = (len(table) - 1) // self.fanout ** lvl
                self._update_summary(level.count, level.ksum, level.kmin, level.kmax, level.vmax, node, k, v)
            self._lengths[seq_id] = pos + n
            t += n

    def append_step(self, seq_ids, keys, values) -> None:
        """One decode step: append one token to each sequence; ``keys`` (B, Hkv, D), ``values`` (B, Hkv, Dv)."""
        seq_ids = [self._check_seq(s) for s in seq_ids]
        if len(set(seq_ids)) != len(seq_ids):
            # two tokens for one sequence in one step would be appended in an order the caller did not state
            raise VashistaInputError("seq_ids", f"lists a sequence more than once: {seq_ids}")
        K = as_real_array("keys", keys, ndim=3)
        V = as_real_array("values", values, ndim=3)
        if K.shape[0] != len(seq_ids) or V.shape[0] != len(seq_ids):
            raise VashistaInputError("keys", f"expected one token per sequence ({len(seq_ids)}), got {K.shape[0]}")
        for i, sid in enumerate(seq_ids):
            self.append(sid, K[i:i + 1], V[i:i + 1])

    @staticmethod
    def _update_summary(count, ksum, kmin, kmax, vmax, i, k, v) -> None:
        """Fold tokens k (n, H, D), v (n, H, Dv) into summary slot i."""
        count[i] += k.shape[0]
        ksum[i] = _sequential_sum(ksum[i], k)
        np.minimum(kmin[i], k.min(axis=0), out=kmin[i])
        np.maximum(kmax[i], k.max(axis=0), out=kmax[i])
        np.maximum(vmax[i], np.linalg.norm(v, axis=-1).max(axis=0), out=vmax[i])

    def _open_hierarchy_page(self, seq_id: int, logical_page: int) -> None:
        """Create hierarchy nodes (and levels) for a newly opened, still empty page."""
        if self.fanout is None:
            return
        F, levels = self.fanout, self._levels[seq_id]
        n_pages = logical_page + 1
        # a new top level is needed when the current top would exceed F nodes; it starts with one node
        # summarising everything so far (built from the old top's nodes, at a point in the token stream
        # that does not depend on how appends were chunked)
        while n_pages > F ** (len(levels) + 1):
            below = levels[-1] if levels else None
            new = _Level(self.n_kv_heads, self.head_dim)
            new.add_node()
            if below is None:
                idx = self._tables[seq_id][:logical_page]
                cnt, ks, kn, kx, vm = self.count, self.ksum, self.kmin, self.kmax, self.vmax
            else:
                idx = list(range(below.n))
                cnt, ks, kn, kx, vm = below.count, below.ksum, below.kmin, below.kmax, below.vmax
            new.count[0] = cnt[idx].sum()
            new.ksum[0] = _sequential_sum(np.zeros_like(ks[0]), ks[idx])
            new.kmin[0] = kn[idx].min(axis=0)
            new.kmax[0] = kx[idx].max(axis=0)
            new.vmax[0] = vm[idx].max(axis=0)
            levels.append(new)
        for lvl, level in enumerate(levels, start=1):
            node = logical_page // F ** lvl
            while level.n <= node:
                level.add_node()

    # ------------------------------------------------------------------ reading
    def summaries(self, seq_id: int, head: int, level: int = 0) -> Summaries:
        """Summaries of the sequence's logical pages (level 0) or hierarchy nodes (level >= 1) for a KV head."""
        seq_id = self._check_seq(seq_id)
        head = self._check_head(head)
        if level == 0:
            idx = self.page_table(seq_id)
            cnt, ks, kn, kx, vm = self.count[idx], self.ksum[idx, head], self.kmin[idx, head], \
                self.kmax[idx, head], self.vmax[idx, head]
        else:
            if not (1 <= level <= len(self._levels[seq_id])):
                raise VashistaInputError("level", f"sequence {seq_id} has levels 0..{self.n_levels(seq_id) - 1}, "
                                                  f"got {level}")
            L = self._levels[seq_id][level - 1]
            cnt, ks, kn, kx, vm = L.count[:L.n], L.ksum[:L.n, head], L.kmin[:L.n, head], \
                L.kmax[:L.n, head], L.vmax[:L.n, head]
        with np.errstate(invalid="ignore", divide="ignore"):
            mean = ks / np.maximum(cnt, 1)[:, None]
        return Summaries(count=cnt.copy(), mean=mean, kmin=kn.copy(), kmax=kx.copy(), vmax=vm.copy())

    def n_levels(self, seq_id: int) -> int:
        """Number of summary levels: 1 (pages only) plus the hierarchy levels."""
        return 1 + len(self._levels[self._check_seq(seq_id)])

    def _check_head(self, head) -> int:
        if isinstance(head, (bool, np.bool_)) or not isinstance(head, (int, np.integer)) \
                or not 0 <= int(head) < self.n_kv_heads:
            raise VashistaInputError("head", f"must be an integer in [0, {self.n_kv_heads}), got {head!r}")
        return int(head)

    def page_tokens(self, seq_id: int, logical_page: int, head: int) -> tuple[np.ndarray, np.ndarray]:
        """Keys (n, D) and values (n, Dv) of one logical page for one KV head (views into the pool)."""
        seq_id, head = self._check_seq(seq_id), self._check_head(head)
        n_pages = len(self._tables[seq_id])
        # no Python negative indexing: page -1 is a caller's bug, not "the last page"
        if isinstance(logical_page, (bool, np.bool_)) or not isinstance(logical_page, (int, np.integer)) \
                or not 0 <= int(logical_page) < n_pages:
            raise VashistaInputError("logical_page", f"must be an integer in [0, {n_pages}), got {logical_page!r}")
        p = self._tables[seq_id][int(logical_page)]
        n = self.count[p]
        return self.keys[p, :n, head], self.values[p, :n, head]

    def gather(self, seq_id: int, head: int) -> tuple[np.ndarray, np.ndarray]:
        """The whole sequence for one KV head in logical order: keys (T, D), values (T, Dv) (copies)."""
        seq_id, head = self._check_seq(seq_id), self._check_head(head)
        idx = self.page_table(seq_id)
        T = self._lengths[seq_id]
        K = self.keys[idx, :, head].reshape(-1, self.head_dim)[:T]
        V = self.values[idx, :, head].reshape(-1, self.value_dim)[:T]
        return K.copy(), V.copy()

    # ------------------------------------------------------------------ construction helpers
    @classmethod
    def from_dense(cls, keys, values, page_size: int, *, fanout: int | None = None,
                   shuffle_seed: int | None = None, chunk: int | None = None) -> tuple["PagedKVCache", list[int]]:
        """Build a cache from dense per-sequence arrays; returns ``(cache, seq_ids)``.

        ``keys``/``values``: one array (T, Hkv, D) / (T, Hkv, Dv), or a list of them (one per sequence,
        lengths may differ). ``shuffle_seed`` scatters logical pages over physical pages in a random
        order (the page table then does real work); ``chunk`` appends ``chunk`` tokens at a time instead
        of one prefill (``chunk=1`` replays decode steps).
        """
        if isinstance(keys, np.ndarray):
            keys, values = [keys], [values]
        keys, values = list(keys), list(values)
        if len(keys) == 0 or len(keys) != len(values):
            raise VashistaInputError("keys", "expected a non-empty list of sequences matching values")
        K0 = as_real_array("keys", keys[0], ndim=3)
        V0 = as_real_array("values", values[0], ndim=3)
        cache = cls(page_size, K0.shape[1], K0.shape[2], V0.shape[2], fanout=fanout)
        S = cache.page_size
        pages_needed = [-(-np.asarray(k).shape[0] // S) for k in keys]
        order = np.arange(sum(pages_needed))
        if shuffle_seed is not None:
            order = np.random.default_rng(shuffle_seed).permutation(order)
            cache.reserve(len(order))
        seq_ids, start = [], 0
        for k, v, npg in zip(keys, values, pages_needed):
            sid = cache.add_sequence()
            phys = [int(p) for p in order[start:start + npg]] if shuffle_seed is not None else None
            start += npg
            step = np.asarray(k).shape[0] if chunk is None else positive_int("chunk", chunk)
            T = np.asarray(k).shape[0]
            for t in range(0, T, step):
                n_open = -(-(min(t + step, T)) // S) - (-(-t // S))
                use = None
                if phys is not None:
                    use, phys = phys[:n_open], phys[n_open:]
                cache.append(sid, np.asarray(k)[t:t + step], np.asarray(v)[t:t + step], physical_pages=use)
            seq_ids.append(sid)
        return cache, seq_ids
