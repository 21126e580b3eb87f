"""Host-side planning of one sparse decode step, separated from the launches.

``plan_decode`` validates the arguments, reads only the cache's *host* mirrors (lengths, page
counts) and fixes every size the launches need: the padded page count NP, the routing width
W = P + sink_pages + 1 (forced pages plus the P best others), the candidate count, the hierarchy
levels to descend, and the device index tensors. Executing a plan (``decode.run_plan``) then only
issues device work with static shapes, so a step can be captured in a CUDA graph and replayed while
the cache grows, as long as ``max_pages`` (the padded page count) was fixed when planning.

Example::

    >>> import torch
    >>> from vashista_gpu.paged_cache import TorchPagedKVCache
    >>> c = TorchPagedKVCache(4, 2, 8, num_pages=16, max_seqs=2, dtype=torch.float32)
    >>> s = c.add_sequence(); c.append(s, torch.randn(9, 2, 8), torch.randn(9, 2, 8))
    >>> p = plan_decode(c, [s], num_q_heads=4, P=1, Kc=4)
    >>> (p.G, p.NP, p.W, p.Kc)
    (2, 3, 3, 4)
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from vashista_core.errors import VashistaInputError
from vashista_core.options import ROUTERS, SOLVERS

from . import validate as V

__all__ = ["DecodePlan", "decode_batch", "plan_decode"]



@dataclass
class DecodePlan:
    B: int
    Hq: int
    Hkv: int
    G: int                   # query heads per KV head
    D: int
    Dv: int
    S: int                   # page size
    NP: int                  # padded number of logical pages (max over the batch, or max_pages)
    P: int                   # best non-forced blocks kept per level
    W: int                   # blocks kept per level at most: P + forced (≤ sink_pages + 1), ≤ NP
    Kc: int                  # candidates per query head (≤ W·S)
    scale: float
    sink_pages: int
    router: str
    solver: str
    eps: float               # projection-model ε (solver eg/fw)
    iters: int               # eg/fw iterations
    F: int                   # hierarchy fanout (0: none)
    L: int                   # summary levels descended (1: pages only)
    certify: bool            # False: skip the certificate (benchmarks measure its overhead)
    seq_ids: torch.Tensor    # (B,) int64 on the cache device
    lens: torch.Tensor       # (B,) int64 on the cache device
    host_lens: list

    def level_size(self, level: int) -> int:
        """Padded number of blocks at ``level`` (level 0: pages)."""
        return math.ceil(self.NP / self.F ** level) if level else self.NP


def decode_batch(cache, seq_ids, num_q_heads: int):
    """(seq_ids tensor, host ids, host lengths, Hq, Hkv) of a decode batch, checked against the cache's
    host mirrors: every sequence live and non-empty, Hq a multiple of the cache's KV heads (shared by
    the planners of both modes)."""
    ids = V.index_tensor("seq_ids", seq_ids)
    host_ids = [int(s) for s in ids.tolist()]
    for s in host_ids:
        if not cache.is_live(s):
            raise VashistaInputError("seq_ids", f"unknown sequence {s}")
        if cache.length(s) == 0:
            raise VashistaInputError("cache", f"sequence {s} is empty (no tokens to attend to)")
    Hq = V.positive_int("num_q_heads", num_q_heads)
    Hkv = cache.n_kv_heads
    if Hq % Hkv:
        raise VashistaInputError("q", f"has {Hq} query heads, not a multiple of the cache's {Hkv} KV heads")
    return ids, host_ids, [cache.length(s) for s in host_ids], Hq, Hkv


def plan_decode(cache, seq_ids, num_q_heads: int, P: int, Kc: int, *, scale: float | None = None,
                sink_pages: int = 1, router: str = "bound", solver: str = "softmax",
                hierarchical: bool = False, eps: float | None = None, iters: int = 50,
                max_pages: int | None = None, certify: bool = True) -> DecodePlan:
    """Check arguments against the cache and fix the launch sizes (no device synchronisation)."""
    ids, host_ids, host_lens, Hq, Hkv = decode_batch(cache, seq_ids, num_q_heads)
    if cache.kmin is None:
        raise VashistaInputError("cache", "has no key summaries (key_summaries=False): page routing needs them")
    P = V.positive_int("P", P)
    Kc = V.positive_int("Kc", Kc)
    if isinstance(sink_pages, bool) or not isinstance(sink_pages, int) or sink_pages < 0:
        raise VashistaInputError("sink_pages", f"must be an integer >= 0, got {sink_pages!r}")
    if router not in ROUTERS:
        raise VashistaInputError("router", f"must be one of {ROUTERS}, got {router!r}")
    if solver not in SOLVERS:
        raise VashistaInputError("solver", f"must be one of {SOLVERS}, got {solver!r}")
    sc = 1.0 / math.sqrt(cache.head_dim) if scale is None else V.positive_scalar("scale", scale)
    ep = 1.0 / sc if eps is None else V.positive_scalar("eps", eps)
    iters = V.positive_int("iters", iters)
    if hierarchical and cache.fanout is None:
        raise VashistaInputError("hierarchical", "needs a cache built with fanout=F (pages of pages)")
    S = cache.page_size
    NP = max(math.ceil(n / S) for n in host_lens)
    if max_pages is not None:
        max_pages = V.positive_int("max_pages", max_pages, upper=cache.max_pages_per_seq,
                                   upper_name="cache.max_pages_per_seq")
        if max_pages < NP:
            raise VashistaInputError("max_pages", f"{max_pages} < pages in use {NP}")
        NP = max_pages
    W = min(P + sink_pages + 1, NP)
    L = cache.n_levels_for(NP) if hierarchical else 1
    dev = cache.device
    return DecodePlan(B=len(host_ids), Hq=Hq, Hkv=Hkv, G=Hq // Hkv, D=cache.head_dim, Dv=cache.value_dim,
                      S=S, NP=NP, P=P, W=W, Kc=min(Kc, W * S), scale=sc, sink_pages=sink_pages,
                      router=router, solver=solver, eps=ep, iters=iters, F=cache.fanout or 0, L=L, certify=bool(certify),
                      seq_ids=ids.to(device=dev, dtype=torch.int64),
                      lens=torch.tensor(host_lens, dtype=torch.int64, device=dev), host_lens=host_lens)
