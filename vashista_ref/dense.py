"""Exact dense decode over a paged cache: the baseline every sparse step is measured against.

For each batch row b and query head h (KV head h // G, G = Hq / Hkv query heads per KV head):

    softmax model:  a = argmax_{a ∈ Δ_T} ⟨s, a⟩ + H(a) = softmax(s),  s_j = scale·⟨q, k_j⟩,  o = Vᵀa;
    eg / fw:        α ≈ argmin_{α ∈ Δ_T} ½‖Kᵀα − q‖² − ε H(α)  by the fixed-iteration solvers of
                    ``entropic.py`` on *all* T tokens (the projection model), o = Vᵀα.

Scores are computed by :func:`token_scores`, the single scoring routine of the reference tier: sparse
decode scores the same tokens with the same routine, so dense and sparse see bit-identical scores and
their outputs differ only by the tokens left out (and float64 rounding of the sums).

Example:
    >>> import numpy as np
    >>> from vashista_ref.paged_cache import PagedKVCache
    >>> from vashista_ref.dense import dense_decode
    >>> rng = np.random.default_rng(0)
    >>> cache, seqs = PagedKVCache.from_dense(rng.normal(size=(50, 1, 8)), rng.normal(size=(50, 1, 4)), 16)
    >>> dense_decode(rng.normal(size=(1, 2, 8)), cache, seqs).shape     # 2 query heads share 1 KV head
    (1, 2, 4)
"""
from __future__ import annotations

import numpy as np

from vashista_core.errors import VashistaInputError
from vashista_core.options import SOLVERS, check_solver  # noqa: F401  (re-exported: sparse_decode, the CLI)

from .paged_cache import PagedKVCache
from .state import finalize, from_scores
from .validate import as_real_array, positive_scalar



def token_scores(q: np.ndarray, K: np.ndarray, scale: float) -> np.ndarray:
    """s_j = scale·⟨q, k_j⟩ for the rows of K (n, D).

    An elementwise product reduced over the contiguous last axis: each row's value depends only on that
    row (unlike a BLAS mat-vec, whose blocking may depend on n), so a page and the whole sequence give
    bit-identical scores for the same token.
    """
    with np.errstate(over="ignore", invalid="ignore"):
        s = (K * q).sum(axis=-1) * scale
    if not np.all(np.isfinite(s)):
        # reported, not warned: every score-based result (softmax, bounds) would be NaN or meaningless
        raise VashistaInputError("q", "scores overflow float64 (q·k is not finite); rescale q or the keys")
    return s


def check_decode_inputs(q, cache: PagedKVCache, seq_ids) -> tuple[np.ndarray, list[int], int]:
    """Validate q (B, Hq, D) against the cache and sequence ids; return (q, seq_ids, G)."""
    if not isinstance(cache, PagedKVCache):
        raise VashistaInputError("cache", f"expected a PagedKVCache, got {type(cache).__name__}")
    q = as_real_array("q", q, ndim=3)
    B, Hq, D = q.shape
    if D != cache.head_dim:
        raise VashistaInputError("q", f"has head dimension {D} but the cache stores keys of dimension {cache.head_dim}")
    if Hq % cache.n_kv_heads != 0:
        raise VashistaInputError("q", f"has {Hq} query heads, not a multiple of the cache's {cache.n_kv_heads} KV heads")
    try:
        ids = list(seq_ids)
    except TypeError:
        raise VashistaInputError("seq_ids", f"expected a sequence of integer ids, got {seq_ids!r}") from None
    # integers only: int(0.7) would silently decode sequence 0
    if any(isinstance(s, (bool, np.bool_)) or not isinstance(s, (int, np.integer)) for s in ids):
        raise VashistaInputError("seq_ids", f"expected a sequence of integer ids, got {seq_ids!r}")
    seq_ids = [int(s) for s in ids]
    if len(seq_ids) != B:
        raise VashistaInputError("seq_ids", f"has {len(seq_ids)} ids but q has batch size {B}")
    for s in seq_ids:
        if s not in cache.seq_ids:
            raise VashistaInputError("seq_ids", f"unknown sequence {s}")
        if cache.length(s) == 0:
            raise VashistaInputError("cache", f"sequence {s} is empty (no tokens to attend to)")
    return q, seq_ids, Hq // cache.n_kv_heads


def resolve_scale(scale, D: int) -> float:
    return 1.0 / np.sqrt(D) if scale is None else positive_scalar("scale", scale)


def resolve_eps(eps, scale: float) -> float:
    """The projection model's ε; by default 1/scale, the ε at which its scores ⟨k, r⟩/ε match softmax's."""
    return 1.0 / scale if eps is None else positive_scalar("eps", eps)


def projection_weights(solver: str, q: np.ndarray, K: np.ndarray, eps: float, iters: int) -> tuple[np.ndarray, float]:
    """Weights of the projection model on keys K by ``entropic.eg_weights`` / ``entropic.fw_weights``.

    Returns (alpha, solver certificate: EG's certificate or FW's duality gap).
    """
    from .entropic import eg_weights, fw_weights   # issue 2's module; imported only when used
    fn = eg_weights if solver == "eg" else fw_weights
    alpha, cert = fn(q, K, eps, iters=iters)
    return np.asarray(alpha, dtype=np.float64), float(cert)


def attend(solver: str, q: np.ndarray, K: np.ndarray, V: np.ndarray, scale: float,
           eps: float, iters: int) -> np.ndarray:
    """Output of one query over the keys/values given, in the chosen model."""
    if solver == "softmax":
        return finalize(from_scores(token_scores(q, K, scale), V))
    alpha, _ = projection_weights(solver, q, K, eps, iters)
    return alpha @ V


def dense_decode(q, cache: PagedKVCache, seq_ids, *, solver: str = "softmax", scale: float | None = None,
                 eps: float | None = None, iters: int = 50) -> np.ndarray:
    """Exact dense attention of q (B, Hq, D) over each sequence's whole cache; returns (B, Hq, Dv)."""
    q, seq_ids, G = check_decode_inputs(q, cache, seq_ids)
    solver = check_solver(solver)
    scale = resolve_scale(scale, cache.head_dim)
    eps = resolve_eps(eps, scale)
    B, Hq, _ = q.shape
    out = np.empty((B, Hq, cache.value_dim))
    for b, sid in enumerate(seq_ids):
        for kvh in range(cache.n_kv_heads):
            K, V = cache.gather(sid, kvh)
            for h in range(kvh * G, (kvh + 1) * G):
                out[b, h] = attend(solver, q[b, h], K, V, scale, eps, iters)
    return out
