"""The KV cache that a Hugging Face model owns when Vashista decodes: one paged pool per layer.

``VashistaCache`` is a ``transformers`` ``Cache``: the model's attention layers call
``update(key_states, value_states, layer_idx, ...)`` and the keys and values go straight into that
layer's ``TorchPagedKVCache`` (pages + the per-page summaries its mode reads and, in certified mode, the
int4/int8 page sketch, all kept current on append on the device; dense mode keeps neither). There is one copy of K/V: no HF tensors, no host
mirror. The attention function of ``engine/step.py`` then reads the pools, never the tensors
``update`` returns.

Batch rows and sequences. A sequence lives in the same slot of every layer's pool. The driver
(``engine/generate.py``) tells the cache which sequence each row of the next forward is
(:meth:`VashistaCache.begin`): during a prefill chunk it also passes which query positions are real
tokens (from the attention mask: left padding is never paged), so every row appends only its own
tokens; a decode step appends one token per row. Sequences are admitted (:meth:`add_sequence`, with
pages reserved ahead for the tokens still to come, so a captured decode step never changes the page
table) and released (:meth:`free_sequence`, its pages go back to the pool and are reused).

Memory (:meth:`nbytes`): ``kv`` the page pools, ``sketch`` the page sketches (codes + per-page
offset/step), ``metadata`` the page summaries (min/max/mean key, max value norm), page tables and
lengths. :meth:`dense_kv_bytes` is what a dense cache of the same tokens holds.

Example::

    >>> import torch
    >>> from transformers import LlamaConfig
    >>> cfg = LlamaConfig(num_hidden_layers=2, hidden_size=64, num_attention_heads=4, num_key_value_heads=2)
    >>> cache = VashistaCache(cfg, max_seqs=2, max_tokens=64, dtype=torch.float32)
    >>> s = cache.add_sequence(reserve_tokens=40)
    >>> cache.begin([s], valid=torch.ones(1, 5, dtype=torch.bool))
    >>> k = torch.randn(1, 2, 5, 16)
    >>> _ = cache.update(k, k, 0); _ = cache.update(k, k, 1)
    >>> cache.length(s), cache.nbytes()["kv"] == 2 * 2 * cache.pools[0].k_pages.numel() * 4
    (5, True)
"""
from __future__ import annotations

import math
import weakref

import torch
from transformers.cache_utils import Cache, CacheLayerMixin

from vashista_core.errors import VashistaInputError

from ..paged_cache import TorchPagedKVCache
from ..validate import positive_int

__all__ = ['PagedLayer', 'VashistaCache', 'model_shape']


def model_shape(config) -> tuple[int, int, int, int]:
    """(layers, query heads, KV heads, head dim) of a decoder config (Llama family names)."""
    L = config.num_hidden_layers
    Hq = config.num_attention_heads
    Hkv = getattr(config, "num_key_value_heads", None) or Hq
    D = getattr(config, "head_dim", None) or config.hidden_size // Hq
    return L, Hq, Hkv, D


class PagedLayer(CacheLayerMixin):
    """One layer of :class:`VashistaCache` as transformers sees it; its storage is ``cache.pools[i]``."""

    is_sliding = False
    is_compileable = False

    def __init__(self, owner: "VashistaCache", layer_idx: int):
        super().__init__()
        # a weak reference: the cache holds its layers, and a strong one back would be a cycle that only
        # Python's cyclic collector frees (it runs on Python allocations, not device memory), so a
        # dropped cache's pools stayed allocated on the GPU until it ran
        self._owner, self.layer_idx = weakref.ref(owner), layer_idx
        self.is_initialized = True

    @property
    def owner(self) -> "VashistaCache":
        owner = self._owner()
        if owner is None:
            raise VashistaInputError("cache", "this layer's VashistaCache no longer exists; keep the cache, "
                                              "not its layers")
        return owner

    def lazy_initialization(self, key_states, value_states) -> None:  # storage is preallocated
        return None

    def update(self, key_states, value_states, *args, **kwargs):
        return self.owner.update(key_states, value_states, self.layer_idx)

    def get_seq_length(self) -> int:
        return self.owner.get_seq_length()

    def get_mask_sizes(self, query_length, *args) -> tuple[int, int]:
        return self.owner.get_mask_sizes(query_length, self.layer_idx)

    def get_max_length(self) -> int:
        return self.owner.max_tokens

    def _unsupported(self, *args, **kwargs):
        raise VashistaInputError("cache", "VashistaCache does not support beam search, cropping or reordering")

    reset = reorder_cache = crop = batch_repeat_interleave = batch_select_indices = _unsupported


class VashistaCache(Cache):
    """Paged KV cache for a decoder model (see module docstring).

    ``config`` the model's config (Llama family); ``max_seqs`` sequence slots; ``max_tokens`` the most
    tokens one sequence may hold; ``num_pages`` the pool size per layer (default: every slot full);
    ``page_size`` tokens per page (a multiple of 16 for the fused certified kernels); ``bits`` 4 or 8
    attaches the certified-mode sketch to every pool (kept current on append); ``dtype``/``device``
    of the storage; ``backend`` of the page-summary update (``auto``: Triton on CUDA);
    ``key_summaries`` the per-page key boxes and means that paged mode routes with (dense and
    certified decode need only the value norms: without them the cache is 2·D·dtype + 4·D bytes per
    page and head smaller, e.g. int4 certified at D 64 in bf16: 1.19× the dense KV instead of 1.31×);
    ``value_norms`` the per-page max value norms that the certificates read (off: a dense-mode cache,
    whose appends then refresh no summary — ~0.43 ms per token over the 1B model's 16 layers on an
    H100 — and needs ``key_summaries=False``); ``dense_layers`` layers decoded densely in every mode,
    whose pools keep no sketch and no summaries.
    """

    def __init__(self, config, *, max_seqs: int, max_tokens: int, num_pages: int | None = None,
                 page_size: int = 16, bits: int | None = None, dtype=torch.bfloat16, device="cpu",
                 backend: str = "auto", key_summaries: bool = True, value_norms: bool = True,
                 dense_layers=()):
        self.n_layers, self.n_q_heads, self.n_kv_heads, self.head_dim = model_shape(config)
        self.max_seqs = positive_int("max_seqs", max_seqs)
        self.max_tokens = positive_int("max_tokens", max_tokens)
        self.page_size = positive_int("page_size", page_size)
        per_seq = math.ceil(self.max_tokens / self.page_size)
        self.num_pages = positive_int("num_pages", num_pages if num_pages is not None else per_seq * self.max_seqs)
        if bits is not None and (isinstance(bits, bool) or bits not in (4, 8)):
            raise VashistaInputError("bits", f"must be 4 or 8 (or None: no sketch), got {bits!r}")
        self.bits = bits
        dense = {int(i) for i in dense_layers}
        if any(not 0 <= i < self.n_layers for i in dense):
            raise VashistaInputError("dense_layers", f"expected indices in [0, {self.n_layers}), got {dense_layers!r}")
        # a layer decoded densely reads neither summaries nor sketch: its appends keep none current
        self.pools = [TorchPagedKVCache(self.page_size, self.n_kv_heads, self.head_dim, num_pages=self.num_pages,
                                        max_seqs=self.max_seqs, max_pages_per_seq=per_seq, dtype=dtype,
                                        device=device, backend=backend, key_summaries=key_summaries and i not in dense,
                                        value_norms=value_norms and i not in dense)
                      for i in range(self.n_layers)]
        if bits is not None:
            from ..sketch import attach_sketch
            for i, p in enumerate(self.pools):
                if i not in dense:
                    attach_sketch(p, bits)
        super().__init__(layers=[PagedLayer(self, i) for i in range(self.n_layers)])
        self.device = self.pools[0].device
        self.dtype = dtype
        self.rows: list[int] = []            # sequence of each batch row of the current forward
        self.row_idx = torch.zeros(0, dtype=torch.int32, device=self.device)
        self.valid: torch.Tensor | None = None   # (B, q_len) bool on the host: real tokens (prefill)
        self.device_append = False           # decode appends on the device only (CUDA-graph capture)
        self.position = 0                    # padded positions seen by the model (get_seq_length)

    # ------------------------------------------------------------------ sequences
    def add_sequence(self, reserve_tokens: int = 1) -> int:
        """Admit a sequence in every layer (the lowest free slot) with pages for ``reserve_tokens``."""
        sid = self.pools[0].add_sequence()
        for p in self.pools[1:]:
            p.add_sequence(sid)
        self.reserve(sid, reserve_tokens)
        return sid

    def reserve(self, seq_id: int, tokens: int) -> None:
        """Allocate the pages for ``tokens`` tokens of ``seq_id`` in every layer now (see module doc)."""
        tokens = positive_int("reserve_tokens", tokens)
        if tokens > self.max_tokens:
            raise VashistaInputError("max_tokens", f"a sequence of {tokens} tokens exceeds max_tokens={self.max_tokens}")
        for p in self.pools:
            p.reserve(seq_id, tokens)

    def free_sequence(self, seq_id: int) -> None:
        """Release a sequence: its pages return to every layer's pool."""
        for p in self.pools:
            p.free_sequence(seq_id)

    @property
    def seq_ids(self) -> list[int]:
        return self.pools[0].seq_ids

    def length(self, seq_id: int) -> int:
        return self.pools[0].length(seq_id)

    def free_pages(self) -> int:
        """Pages of each layer's pool that no sequence holds."""
        return self.num_pages - sum(self.pools[0].n_pages(s) for s in self.seq_ids)

    def sync_lengths(self) -> None:
        """Host mirrors of the lengths after device appends (one synchronisation per layer)."""
        for p in self.pools:
            p.sync_lengths()

    # ------------------------------------------------------------------ one forward
    def begin(self, rows, valid: torch.Tensor | None = None, *, position: int | None = None) -> None:
        """Declare the next forward: ``rows`` the sequence of each batch row; ``valid`` (B, q_len) bool,
        the real tokens of a prefill chunk (None: every position, as in a decode step)."""
        rows = [int(r) for r in rows]
        live = set(self.seq_ids)
        for r in rows:
            if r not in live:
                raise VashistaInputError("rows", f"sequence {r} is not in the cache")
        if len(set(rows)) != len(rows):
            raise VashistaInputError("rows", "a sequence may appear in one batch row only")
        if valid is not None:
            valid = valid.to(device="cpu", dtype=torch.bool)
            if valid.ndim != 2 or valid.shape[0] != len(rows):
                raise VashistaInputError("valid", f"expected ({len(rows)}, q_len) bool, got {tuple(valid.shape)}")
        if rows != self.rows:
            self.row_idx = torch.tensor(rows, dtype=torch.int32, device=self.device)
        self.rows, self.valid = rows, valid
        if position is not None:
            self.position = int(position)

    def update(self, key_states, value_states, layer_idx, *args, **kwargs):
        """Append the forward's new keys/values (B, Hkv, q_len, D) to layer ``layer_idx``'s pool; returns
        them unchanged (the engine's attention reads the pool, not these)."""
        pool = self.pools[layer_idx]
        B, H, T, D = key_states.shape
        if B != len(self.rows):
            raise VashistaInputError("rows", f"the forward has batch {B} but begin() declared {len(self.rows)} rows")
        if T == 1 and self.valid is None:
            k, v = key_states[:, :, 0], value_states[:, :, 0]
            if self.device_append:
                pool.append_step_device(self.row_idx, k, v)
            else:
                pool.append_step(self.rows, k, v)
        else:
            valid = self.valid if self.valid is not None else torch.ones((B, T), dtype=torch.bool)
            if valid.shape[1] != T:
                raise VashistaInputError("valid", f"covers {valid.shape[1]} positions, the forward has {T}")
            for b, sid in enumerate(self.rows):
                pos = torch.nonzero(valid[b]).flatten()
                if pos.numel() == 0:
                    continue
                if pos.numel() != T:
                    pos = pos.to(key_states.device)
                    k, v = key_states[b][:, pos], value_states[b][:, pos]
                else:
                    k, v = key_states[b], value_states[b]
                pool.append(sid, k.transpose(0, 1), v.transpose(0, 1))
        if layer_idx == self.n_layers - 1:
            self.position += T
        return key_states, value_states

    def get_seq_length(self, layer_idx: int = 0) -> int:
        """Padded positions the model has seen (what transformers would count in a dense cache)."""
        return self.position

    def get_mask_sizes(self, query_length, layer_idx: int = 0) -> tuple[int, int]:
        # transformers >= 5.2x passes the query length, earlier 5.x the cache_position tensor
        q = query_length.shape[0] if isinstance(query_length, torch.Tensor) else int(query_length)
        return self.position + q, 0

    def get_max_length(self, layer_idx=None) -> int:
        return self.max_tokens

    # ------------------------------------------------------------------ memory
    def nbytes(self) -> dict:
        """Bytes held on the device: ``kv`` (page pools), ``sketch`` (page sketches), ``metadata``
        (summaries, page tables, lengths) and their ``total``."""
        def size(*ts):
            return sum(t.numel() * t.element_size() for t in ts)
        kv = sk = meta = 0
        for p in self.pools:
            kv += size(p.k_pages, p.v_pages)
            meta += size(*(t for t in (p.kmin, p.kmax, p.kmean, p.vnorm, p.kabs, p.vabs) if t is not None),
                         p.block_table, p.seq_lens)
            for s in p.sketches.values():
                sk += size(s.codes, s.offset, s.step)
        return dict(kv=kv, sketch=sk, metadata=meta, total=kv + sk + meta)

    def dense_kv_bytes(self, tokens: int | None = None) -> int:
        """Bytes of a dense cache (all layers, K and V in the storage dtype) holding ``tokens`` tokens
        (default: the tokens now stored)."""
        if tokens is None:
            tokens = sum(self.length(s) for s in self.seq_ids)
        elt = torch.empty(0, dtype=self.dtype).element_size()
        return self.n_layers * tokens * self.n_kv_heads * 2 * self.head_dim * elt
