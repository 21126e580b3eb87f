"""Input checks of the reference tier's array shapes (NumPy). Each check names the argument it rejects.

The generic checks (real arrays, positive scalars and integers) live in :mod:`vashista_core.validate`
and are re-exported here for the reference modules that import them from this module.
"""
from __future__ import annotations

import numpy as np

from vashista_core.errors import VashistaInputError
from vashista_core.validate import as_real_array, nonnegative_scalar, positive_int, positive_scalar

__all__ = ["as_real_array", "nonnegative_scalar", "positive_int", "positive_scalar", "queries_and_keys",
           "query_and_keys"]


def query_and_keys(q, K) -> tuple[np.ndarray, np.ndarray]:
    """Validate a query ``q`` (D,) against keys ``K`` (M, D); M >= 1, matching D."""
    K = as_real_array("K", K, ndim=2)
    q = as_real_array("q", q, ndim=1)
    if K.shape[0] == 0:
        raise VashistaInputError("K", "has no keys (M = 0)")
    if q.shape[0] != K.shape[1]:
        raise VashistaInputError("q", f"has dimension {q.shape[0]} but keys K have dimension {K.shape[1]}")
    return q, K


def queries_and_keys(Q, K) -> tuple[np.ndarray, np.ndarray]:
    """Validate a batch of queries ``Q`` (B, D) against keys ``K`` (M, D)."""
    K = as_real_array("K", K, ndim=2)
    Q = as_real_array("Q", Q, ndim=2)
    if Q.shape[1] != K.shape[1]:
        raise VashistaInputError("Q", f"has dimension {Q.shape[1]} but keys K have dimension {K.shape[1]}")
    return Q, K
