"""The tier registry of the soundness stress: name → function(case) → :class:`TierResult`.

A tier runs one decode step of a :class:`generators.Case` with the case's options and returns the
output it would hand to a caller and its certificate. The stress checks, against exact dense attention
(``truth.py``), that ``certified_error ≥ ‖out − o_exact‖`` and ``certified_leakage ≥`` the exact mass
outside ``candidates``, per (batch row, query head), and that no certificate is NaN.

Register another tier (the GPU tier, a dtype, a backend) with ``@register("name")`` in a module that
``run.py`` imports (``tiers_gpu.py`` is imported when present); a tier that cannot run a case's
options raises :class:`Unsupported` and the case is skipped for it (counted separately).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np


@dataclass
class TierResult:
    out: np.ndarray                 # (B, Hq, Dv) float64 view of the returned output
    certified_error: np.ndarray     # (B, Hq)
    certified_leakage: np.ndarray   # (B, Hq)
    candidates: list | None         # candidates[b][h]: logical token indices; None: leakage not checked


class Unsupported(Exception):
    """The tier does not implement this case's options."""


TIERS: dict[str, Callable] = {}


def register(name: str):
    def wrap(fn):
        TIERS[name] = fn
        return fn
    return wrap


@register("ref")
def ref_tier(case) -> TierResult:
    """vashista_ref.sparse_decode on a paged cache (every router, hierarchy, shared selection)."""
    from vashista_ref.paged_cache import PagedKVCache
    from vashista_ref.sparse_decode import sparse_decode
    cache, seqs = PagedKVCache.from_dense(case.keys, case.values, case.page_size, fanout=case.fanout,
                                          shuffle_seed=case.seed)
    r = sparse_decode(case.q, cache, seqs, case.P, case.Kc, scale=case.scale, router=case.router,
                      bits=case.bits, share_selection_in_group=case.share, hierarchical=case.fanout is not None)
    return TierResult(r.out, r.certified_error, r.certified_leakage, r.candidates)


@register("ref-sketch-prune")
def ref_sketch_prune_tier(case) -> TierResult:
    """vashista_ref.sketch.certified_decode with box pruning (prune_tol 1e-3), one sequence at a time."""
    from vashista_ref.sketch import certified_decode
    if case.router != "sketch":
        raise Unsupported("sketch router only")
    B, Hq, _ = case.q.shape
    Dv = case.values[0].shape[2]
    out, err, leak = np.empty((B, Hq, Dv)), np.empty((B, Hq)), np.empty((B, Hq))
    cands = []
    for b in range(B):
        K = np.ascontiguousarray(case.keys[b].transpose(1, 0, 2))
        V = np.ascontiguousarray(case.values[b].transpose(1, 0, 2))
        steps = certified_decode(case.q[b], K, V, bits=case.bits, Kc=case.Kc, group=case.page_size,
                                 scale=case.scale, prune_tol=1e-3, meta_dtype="float32")
        for h, st in enumerate(steps):
            out[b, h], err[b, h], leak[b, h] = st.out, st.error, st.certified_leakage
        cands.append([st.candidates for st in steps])
    return TierResult(out, err, leak, cands)
