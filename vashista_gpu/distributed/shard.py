"""How a sequence's paged cache and sketch are split across the ranks of a context-parallel group.

Layout (:class:`ShardLayout`): the logical token positions of a sequence are cut into *chunks* of
``chunk_pages`` whole pages; chunk c belongs to rank ``c mod world``. Each rank stores its tokens in
its own ``TorchPagedKVCache`` in increasing logical order, so

* the map local position → logical position is increasing on every rank (a top-k under the tie rule
  on a rank's local order is the tie rule on logical positions: ties still go to the lower logical
  index), and
* every local page holds exactly the tokens of one logical page, so the page sketch (quantization
  group = page, ``sketch.attach_sketch``) of a shard is bit-identical to the single-process sketch
  of the same pages: sketch scores and bounds do not depend on the sharding.

New tokens go to the owner of their position (:meth:`ShardedCache.append`, ``append_step``): every
rank calls them with the same tokens (in context parallelism every rank computes the new token's
k, v) and keeps the ones it owns. With ``chunk_pages = 1`` the pages go round-robin (decode growth is
spread over all ranks); a larger chunk gives each rank longer contiguous runs. Shards may have
unequal lengths and may be empty (a short sequence on many ranks).

Example::

    >>> layout = ShardLayout(world=2, page_size=4, chunk_pages=1)
    >>> [layout.owner(p) for p in (0, 3, 4, 8, 12)]
    [0, 0, 1, 0, 1]
    >>> layout.local_length(rank=1, total=10), layout.local_to_global(1, torch.arange(4)).tolist()
    (4, [4, 5, 6, 7])
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from vashista_core.errors import VashistaInputError
from vashista_core.validate import positive_int

from .. import validate as V

__all__ = ["ShardLayout", "ShardedCache"]


@dataclass(frozen=True)
class ShardLayout:
    """Chunk c of ``chunk_pages`` pages of ``page_size`` tokens belongs to rank c mod ``world``."""
    world: int
    page_size: int
    chunk_pages: int = 1

    def __post_init__(self):
        positive_int("world", self.world)
        positive_int("page_size", self.page_size)
        positive_int("chunk_pages", self.chunk_pages)

    @property
    def chunk(self) -> int:
        """Tokens per chunk."""
        return self.chunk_pages * self.page_size

    def owner(self, pos: int) -> int:
        """The rank that stores logical position ``pos``."""
        return (pos // self.chunk) % self.world

    def local_length(self, rank: int, total: int) -> int:
        """How many of the first ``total`` logical positions rank ``rank`` stores."""
        full, rem = divmod(total, self.chunk)
        n = (full // self.world) * self.chunk
        if rank < full % self.world:
            n += self.chunk
        elif rank == full % self.world:
            n += rem
        return n

    def local_to_global(self, rank: int, local: torch.Tensor) -> torch.Tensor:
        """Logical positions of a rank's local positions (increasing in ``local``)."""
        c, within = local // self.chunk, local % self.chunk
        return (c * self.world + rank) * self.chunk + within

    def owned(self, rank: int, start: int, count: int) -> torch.Tensor:
        """Offsets in [0, count) of the new tokens at logical positions start.. that ``rank`` owns."""
        pos = torch.arange(start, start + count)
        return torch.nonzero((pos // self.chunk) % self.world == rank).flatten()


class ShardedCache:
    """One rank's shard of every sequence: a ``TorchPagedKVCache`` (``local``) holding the tokens the
    layout gives this rank, and each sequence's logical (whole-sequence) length. Sequence ids are the
    same on every rank; all ranks must call :meth:`add_sequence`, :meth:`append` and
    :meth:`append_step` with the same arguments (no communication happens here)."""

    def __init__(self, local, layout: ShardLayout, rank: int):
        if local.page_size != layout.page_size:
            raise VashistaInputError("layout", f"has page size {layout.page_size} but the cache has {local.page_size}")
        if isinstance(rank, bool) or not isinstance(rank, int) or not 0 <= rank < layout.world:
            raise VashistaInputError("rank", f"must be an integer in [0, {layout.world}), got {rank!r}")
        self.local, self.layout, self.rank = local, layout, rank
        self._total: dict[int, int] = {}

    def add_sequence(self, seq_id: int) -> int:
        self.local.add_sequence(seq_id)
        self._total[seq_id] = 0
        return seq_id

    def total_length(self, seq_id: int) -> int:
        """Logical length of the whole sequence (all shards)."""
        self.local.length(seq_id)          # names an unknown id as the cache does
        return self._total[seq_id]

    def global_positions(self, seq_id: int) -> torch.Tensor:
        """(T_local,) int64 logical positions of this rank's tokens of ``seq_id``, increasing."""
        n = self.local.length(seq_id)
        return self.layout.local_to_global(self.rank, torch.arange(n, device=self.local.device))

    def append(self, seq_id: int, keys: torch.Tensor, values: torch.Tensor) -> None:
        """Append T tokens (keys (T, Hkv, D), values (T, Hkv, Dv)) to the logical sequence; this rank
        stores those it owns."""
        keys = V.tensor("keys", keys, ndim=3)
        values = V.tensor("values", values, ndim=3)
        if keys.shape[0] != values.shape[0]:
            raise VashistaInputError("values", f"has {values.shape[0]} tokens but keys have {keys.shape[0]}")
        start = self.total_length(seq_id)
        mine = self.layout.owned(self.rank, start, keys.shape[0]).to(keys.device)
        if mine.numel():
            self.local.append(seq_id, keys[mine], values[mine])
        self._total[seq_id] = start + keys.shape[0]

    def append_step(self, seq_ids, keys: torch.Tensor, values: torch.Tensor) -> None:
        """One decode step (one token per sequence; keys (B, Hkv, D), values (B, Hkv, Dv)): each token
        goes to the owner of its position."""
        ids = [int(s) for s in V.index_tensor("seq_ids", seq_ids).tolist()]
        if len(set(ids)) != len(ids):
            raise VashistaInputError("seq_ids", "must be distinct (one token per sequence per step)")
        for name, x in (("keys", keys), ("values", values)):
            # checked on every rank, also those that store none of the tokens (the ranks stay in step)
            if V.tensor(name, x, ndim=3).shape[0] != len(ids):
                raise VashistaInputError(name, f"expected one token per sequence ({len(ids)}), got {x.shape[0]}")
        rows = [b for b, s in enumerate(ids) if self.layout.owner(self.total_length(s)) == self.rank]
        if rows:
            self.local.append_step([ids[b] for b in rows], keys[rows], values[rows])
        for s in ids:
            self._total[s] += 1
