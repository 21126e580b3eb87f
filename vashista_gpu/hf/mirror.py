"""Mirror of one attention layer's Hugging Face KV cache in a ``TorchPagedKVCache``.

transformers hands every attention call the layer's *whole* key/value tensors (B, Hkv, T, D) — past
tokens plus the new ones — and a mask. Vashista decode needs the same tokens in pages with summaries.
:class:`LayerMirror` keeps a paged copy in step with HF's cache by appending only what is new, one
paged sequence per batch row, and stores only the tokens the mask lets the query attend to (padding is
never paged: a padded slot would otherwise enter the routing bounds and the candidates).

Which positions a row attends to is read from the mask row of the query being decoded, not assumed;
the stored set must stay a prefix-consistent copy of it. Anything else — a new generation (no past),
a cropped or reordered HF cache, a batch-size change, a mask row that drops a stored token — rebuilds
the mirror from the full tensors HF passed in, so a stale page can never be attended. Capacity grows by
rebuilding with a doubled page pool (amortised O(1) per token).

Example::

    >>> import torch
    >>> m = LayerMirror(page_size=4, n_kv_heads=1, head_dim=8, dtype=torch.float32)
    >>> k, v = torch.randn(2, 1, 6, 8), torch.randn(2, 1, 6, 8)
    >>> valid = torch.tensor([[True] * 6, [False, False] + [True] * 4])   # row 1 is left-padded
    >>> m.sync(k, v, valid)
    >>> m.lengths()
    [6, 4]
"""
from __future__ import annotations

import math

import torch

from vashista_core.errors import VashistaInputError

from ..paged_cache import TorchPagedKVCache

__all__ = ["LayerMirror", "valid_from_mask"]


def valid_from_mask(mask: torch.Tensor | None, q_index: int, batch: int, kv_len: int) -> torch.Tensor:
    """(B, kv_len) bool: the keys query ``q_index`` may attend to, from HF's 4-D mask (or None = all).

    HF's sdpa mask is boolean (True = attend); additive float masks use large negative values for
    blocked positions. ``None`` means plain causal, where a query sees every key up to itself.
    """
    if mask is None:
        return torch.ones((batch, kv_len), dtype=torch.bool)
    if mask.ndim != 4:
        raise VashistaInputError("attention_mask", f"expected a 4-D mask, got shape {tuple(mask.shape)}")
    row = mask[:, 0, q_index, :kv_len]
    if row.dtype != torch.bool:
        row = row > torch.finfo(row.dtype).min / 2
    return row.expand(batch, kv_len).cpu()


class LayerMirror:
    """Paged copy of one layer's KV cache; one paged sequence per batch row (see module docstring)."""

    def __init__(self, page_size: int, n_kv_heads: int, head_dim: int, value_dim: int | None = None, *,
                 dtype=torch.float32, device="cpu", backend: str = "auto", fanout: int | None = None):
        self.page_size = page_size
        self.n_kv_heads = n_kv_heads
        self.head_dim = head_dim
        self.value_dim = value_dim or head_dim
        self.dtype = dtype
        self.device = torch.device(device)
        self.backend = backend
        self.fanout = fanout
        self.cache: TorchPagedKVCache | None = None
        self.valid: torch.Tensor | None = None      # (B, seen) bool on the host: stored HF positions
        self.positions: list[torch.Tensor] = []     # per row: HF position of each stored (logical) token
        self.rebuilds = 0

    # -------------------------------------------------------------------------------- bookkeeping
    @property
    def seen(self) -> int:
        return 0 if self.valid is None else self.valid.shape[1]

    def lengths(self) -> list[int]:
        return [int(p.numel()) for p in self.positions]

    def seq_ids(self) -> list[int]:
        return list(range(len(self.positions)))

    def _pages_needed(self, lens: list[int]) -> int:
        return sum(math.ceil(n / self.page_size) for n in lens)

    def _reset(self, batch: int, capacity_tokens: int) -> None:
        S = self.page_size
        per_seq = max(1, math.ceil(capacity_tokens / S))
        # allocate for twice the current need so appends do not rebuild every few steps
        num_pages = batch * 2 * per_seq
        self.cache = TorchPagedKVCache(S, self.n_kv_heads, self.head_dim, self.value_dim, fanout=self.fanout,
                                       num_pages=num_pages, max_seqs=batch, max_pages_per_seq=2 * per_seq,
                                       dtype=self.dtype, device=self.device, backend=self.backend)
        for b in range(batch):
            self.cache.add_sequence(b)
        self.valid = torch.zeros((batch, 0), dtype=torch.bool)
        self.positions = [torch.zeros(0, dtype=torch.long) for _ in range(batch)]

    # -------------------------------------------------------------------------------- sync
    def sync(self, key: torch.Tensor, value: torch.Tensor, valid: torch.Tensor) -> None:
        """Make the mirror hold exactly the positions ``valid`` (B, T) marks, of HF's key/value (B, Hkv, T', D).

        Only positions ``[seen, T)`` are appended when the stored ones agree with ``valid[:, :seen]``;
        otherwise the mirror is rebuilt from position 0.
        """
        B, T = valid.shape
        if key.shape[0] != B or key.shape[2] < T:
            raise VashistaInputError("key", f"shape {tuple(key.shape)} does not cover the mask's {B} x {T} positions")
        if key.shape[1] != self.n_kv_heads or key.shape[3] != self.head_dim:
            raise VashistaInputError("key", f"expected {self.n_kv_heads} KV heads of dim {self.head_dim}, "
                                            f"got shape {tuple(key.shape)}")
        stale = (self.cache is None or self.valid.shape[0] != B or self.seen > T
                 or not torch.equal(self.valid, valid[:, :self.seen]))
        new_lens = [int(valid[b, (0 if stale else self.seen):].sum()) for b in range(B)]
        old_lens = [0] * B if stale else self.lengths()
        total = [o + n for o, n in zip(old_lens, new_lens)]
        if not stale and (self._pages_needed(total) > self.cache.num_pages
                          or max(math.ceil(t / self.page_size) for t in total) > self.cache.max_pages_per_seq):
            stale = True
        if stale:
            self.rebuilds += 1
            self._reset(B, max(T, 1))
            start = 0
        else:
            start = self.seen
        self._append(key, value, valid, start, T)
        self.valid = valid[:, :T].clone()

    def _append(self, key, value, valid, start: int, end: int) -> None:
        new = valid[:, start:end]
        if end - start == 1 and bool(new.all()):
            # the decode step: one token for every row
            rows = list(range(key.shape[0]))
            self.cache.append_step(rows, key[:, :, start].to(self.dtype), value[:, :, start].to(self.dtype))
            for b in rows:
                self.positions[b] = torch.cat([self.positions[b], torch.tensor([start])])
            return
        for b in range(key.shape[0]):
            pos = torch.nonzero(new[b]).flatten() + start
            if pos.numel() == 0:
                continue
            pd = pos.to(key.device)
            k = key[b, :, pd].transpose(0, 1).to(self.dtype)      # (n, Hkv, D)
            v = value[b, :, pd].transpose(0, 1).to(self.dtype)
            self.cache.append(b, k, v)
            self.positions[b] = torch.cat([self.positions[b], pos])
