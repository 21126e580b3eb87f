"""Seeded synthetic paged caches and queries, including adversarial ones, shared by tests, the CLI,
the GPU tests and the notebooks.

``make_case(kind, seed, ...)`` returns a :class:`SyntheticCase` (cache, seq_ids, q of shape (B, Hq, D)).
Kinds:

    gaussian     i.i.d. N(0, 1) keys and values, queries N(0, q_scale²)
    outlier      gaussian, plus one key  k* = c·q/‖q‖  hidden in a middle page whose other keys point
                 along −q, so that page's *mean* key scores very low: the mean router misses the one
                 key that dominates attention, the box bound does not (the certificate must catch it)
    huge_scale   gaussian keys multiplied by 1e3 (scores ~1e4: softmax is one-hot, e^{s} overflows
                 float64 unless everything is done relative to the max)
    all_equal    every key identical (all scores tie: exercises the tie rule, leakage = 1 − Kc/M)
    single_token context of one token (one partial page)

Every sequence gets the same kind; sequences in a batch have lengths ``context``, ``context − 1``, ...
(different lengths, partial last pages), and physical pages are shuffled (``shuffle=True``).

Example:
    >>> from vashista_ref.synthetic import make_case
    >>> case = make_case("outlier", seed=0, context=64, page_size=8, n_kv_heads=2, group=2, batch=2)
    >>> case.q.shape, case.cache.length(case.seq_ids[1])
    ((2, 4, 16), 63)
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from vashista_core.errors import VashistaInputError

from .paged_cache import PagedKVCache
from .validate import positive_int

__all__ = ["KINDS", "make_case", "SyntheticCase"]

KINDS = ("gaussian", "outlier", "huge_scale", "all_equal", "single_token")


@dataclass
class SyntheticCase:
    kind: str
    cache: PagedKVCache
    seq_ids: list[int]
    q: np.ndarray          # (B, Hq, D)
    keys: list[np.ndarray]      # per sequence (T, Hkv, D), logical order (for contiguous comparisons)
    values: list[np.ndarray]    # per sequence (T, Hkv, Dv)
    outlier_page: int | None = None   # logical page holding the outlier (kind "outlier")


def make_case(kind: str = "gaussian", seed: int = 0, *, context: int = 128, page_size: int = 16,
              n_kv_heads: int = 1, group: int = 1, head_dim: int = 16, value_dim: int | None = None,
              batch: int = 1, q_scale: float = 1.0, shuffle: bool = True, fanout: int | None = None) -> SyntheticCase:
    """Build a seeded synthetic case (see module doc for the kinds)."""
    if kind not in KINDS:
        raise VashistaInputError("kind", f"must be one of {KINDS}, got {kind!r}")
    context = 1 if kind == "single_token" else positive_int("context", context)
    S = positive_int("page_size", page_size)
    H, G, D = positive_int("n_kv_heads", n_kv_heads), positive_int("group", group), positive_int("head_dim", head_dim)
    Dv = D if value_dim is None else positive_int("value_dim", value_dim)
    B = positive_int("batch", batch)
    if kind != "single_token" and context - (B - 1) < 1:
        raise VashistaInputError("batch", f"context {context} too short for {B} sequences of decreasing length")
    rng = np.random.default_rng(seed)
    q = rng.normal(size=(B, H * G, D)) * q_scale
    keys, values, outlier_page = [], [], None
    for b in range(B):
        T = context if kind == "single_token" else context - b
        K = rng.normal(size=(T, H, D))
        V = rng.normal(size=(T, H, Dv))
        if kind == "huge_scale":
            K *= 1e3
        elif kind == "all_equal":
            K[:] = rng.normal(size=(1, H, D))
        elif kind == "outlier":
            outlier_page = _plant_outlier(K, q[b], S, G, rng)
        keys.append(K)
        values.append(V)
    cache, seq_ids = PagedKVCache.from_dense(keys, values, S, fanout=fanout,
                                             shuffle_seed=seed if shuffle else None)
    return SyntheticCase(kind, cache, seq_ids, q, keys, values, outlier_page)


def _plant_outlier(K: np.ndarray, qb: np.ndarray, S: int, G: int, rng) -> int | None:
    """Hide, per KV head, a key aligned with the head's first query in a middle page of anti-aligned keys."""
    T, H, D = K.shape
    n_pages = -(-T // S)
    if n_pages < 3:
        return None               # no page that is neither sink nor newest
    page = n_pages // 2
    lo, hi = page * S, min(page * S + S, T)
    for h in range(H):
        u = qb[h * G] / np.linalg.norm(qb[h * G])
        K[lo:hi, h] = -3.0 * u + 0.1 * rng.normal(size=(hi - lo, D))   # the page's mean points away from q
        K[lo + (hi - lo) // 2, h] = 8.0 * u                           # ... except one strongly matching key
    return page
