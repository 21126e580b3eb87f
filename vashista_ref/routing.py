"""Page routing (SPEC 2, step 1): score page summaries, keep the top-P pages plus the forced ones.

Scores of a block (page, or hierarchy node) for a query q, both multiplied by ``scale``:

    router="mean"   ⟨q, mean key⟩                         (the paper's notebook; may miss an outlier)
    router="bound"  UB(q) = Σ_d max(q_d min_d, q_d max_d)  (SPEC 2; ≥ ⟨q, k⟩ for every key of the block)

Routed pages = forced pages ∪ the P best of the other pages, where the forced pages are the sink
page(s) (logical pages 0 .. sink_pages−1) and the newest page (which may be partial). P larger than
the number of other pages routes them all.

With a shared selection across a GQA group (G query heads, one KV head) a block's score is the max of
its per-head scores: the group attends to the union of what each head would want.

**Tie rule** (docs/ARCHITECTURE.md): order by score descending, ties to the lower logical index — a
stable sort of −score over blocks listed in logical order (``top_indices``). The same rule picks
candidate tokens.

Hierarchical routing (cache built with ``fanout=F``) descends the pages-of-pages tree: at every level,
from the top, it scores the children of the nodes kept one level up and keeps the forced nodes
(ancestors of forced pages) plus the P best others. Blocks dropped at any level are reported as
excluded blocks so the certificate can bound their tokens by the block's own box (looser than per-page
boxes, but the number of summaries scored is O(P·F·levels) instead of M/S).

Example:
    >>> import numpy as np
    >>> from vashista_ref.paged_cache import PagedKVCache
    >>> from vashista_ref.routing import route
    >>> rng = np.random.default_rng(0)
    >>> cache, (seq,) = PagedKVCache.from_dense(rng.normal(size=(64, 1, 4)), rng.normal(size=(64, 1, 4)), 8)
    >>> r = route(rng.normal(size=(1, 4)), cache, seq, head=0, P=2, sink_pages=1, router="bound", scale=0.5)
    >>> len(r.pages)   # sink page 0, newest page 7, and the 2 best others
    4
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from vashista_core.options import ROUTERS, check_router  # noqa: F401  (ROUTERS re-exported)

from .paged_cache import PagedKVCache, Summaries



def top_indices(scores: np.ndarray, k: int) -> np.ndarray:
    """Indices of the k largest scores; ties to the lower index (stable sort of −score)."""
    return np.argsort(-np.asarray(scores), kind="stable")[:k]


def block_scores(qs: np.ndarray, summ: Summaries, router: str, scale: float) -> np.ndarray:
    """Routing score of each block for queries qs (G, D): max over the G heads (G = 1: that head's)."""
    if router == "mean":
        per_head = summ.mean @ qs.T
    else:
        per_head = np.stack([summ.upper_bound(q) for q in qs], axis=1)
    return per_head.max(axis=1) * scale


@dataclass
class Routing:
    """Outcome of routing one query (or one shared group) in one sequence and KV head.

    ``pages``: routed logical pages, ascending. ``excluded``: (level, block indices) pairs of blocks not
    routed — level 0 are pages, level l >= 1 hierarchy nodes. ``summaries_scored``: routing cost.
    """
    pages: np.ndarray
    excluded: list[tuple[int, np.ndarray]] = field(default_factory=list)
    summaries_scored: int = 0


def forced_pages(n_pages: int, sink_pages: int) -> np.ndarray:
    return np.unique(np.r_[np.arange(min(sink_pages, n_pages)), n_pages - 1]).astype(np.int64)


def _keep(candidates: np.ndarray, scores: np.ndarray, forced: np.ndarray, P: int) -> tuple[np.ndarray, np.ndarray]:
    """Split candidate blocks (ascending) into kept = forced ∪ top-P of the rest, and dropped."""
    is_forced = np.isin(candidates, forced)
    others = np.flatnonzero(~is_forced)
    best = others[top_indices(scores[others], P)]
    keep = np.zeros(candidates.shape[0], dtype=bool)
    keep[is_forced] = True
    keep[best] = True
    return candidates[keep], candidates[~keep]


def route(qs: np.ndarray, cache: PagedKVCache, seq_id: int, head: int, P: int, sink_pages: int,
          router: str, scale: float, *, hierarchical: bool = False) -> Routing:
    """Route queries qs (G, D) (G > 1: a shared group selection) for one sequence and KV head."""
    check_router(router, sketch=False)
    qs = np.atleast_2d(qs)
    n_pages = cache.n_pages(seq_id)
    forced = forced_pages(n_pages, sink_pages)
    if not hierarchical or cache.n_levels(seq_id) == 1:
        summ = cache.summaries(seq_id, head)
        cand = np.arange(n_pages)
        kept, dropped = _keep(cand, block_scores(qs, summ, router, scale), forced, P)
        return Routing(pages=kept, excluded=[(0, dropped)], summaries_scored=n_pages)
    F = cache.fanout
    top = cache.n_levels(seq_id) - 1
    n_top = cache.summaries(seq_id, head, top).count.shape[0]
    cand = np.arange(n_top)
    excluded, scored = [], 0
    for level in range(top, -1, -1):
        summ = cache.summaries(seq_id, head, level)
        scores = np.full(summ.count.shape[0], -np.inf)
        scores[cand] = block_scores(qs, _subset(summ, cand), router, scale)
        scored += cand.shape[0]
        kept, dropped = _keep(cand, scores[cand], np.unique(forced // F ** level), P)
        excluded.append((level, dropped))
        if level == 0:
            return Routing(pages=kept, excluded=excluded, summaries_scored=scored)
        n_below = cache.summaries(seq_id, head, level - 1).count.shape[0] if level > 1 else n_pages
        cand = (kept[:, None] * F + np.arange(F)[None, :]).ravel()
        cand = cand[cand < n_below]
    raise AssertionError("unreachable")


def _subset(summ: Summaries, idx: np.ndarray) -> Summaries:
    return Summaries(count=summ.count[idx], mean=summ.mean[idx], kmin=summ.kmin[idx], kmax=summ.kmax[idx],
                     vmax=summ.vmax[idx])


def excluded_summaries(cache: PagedKVCache, seq_id: int, head: int, routing: Routing) -> Summaries:
    """Summaries (count, box, value norm) of every excluded block, stacked over levels."""
    parts = [_subset(cache.summaries(seq_id, head, level), idx) for level, idx in routing.excluded]
    D = cache.head_dim
    if not parts:
        return Summaries(np.zeros(0, np.int64), np.zeros((0, D)), np.zeros((0, D)), np.zeros((0, D)), np.zeros(0))
    return Summaries(*(np.concatenate([getattr(p, f) for p in parts]) for f in
                       ("count", "mean", "kmin", "kmax", "vmax")))
