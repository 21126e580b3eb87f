"""Input checks shared by the reference tier (NumPy). Each check names the argument it rejects.

The GPU tier has its own torch-side twin (``vashista_gpu.validate``) with the same messages; this
module must not import torch.
"""
from __future__ import annotations

import math

import numpy as np

from .errors import VashistaInputError


def as_real_array(name: str, x, *, ndim: int | tuple[int, ...] | None = None,
                  allow_empty: bool = False) -> np.ndarray:
    """Return ``x`` as a finite float64 array, rejecting integer, complex, bool and object dtypes.

    Integer input is rejected rather than cast: an int key matrix usually means the caller passed
    token ids or indices where vectors were expected.
    """
    arr = np.asarray(x)
    if arr.dtype.kind not in "f":
        raise VashistaInputError(name, f"expected a real floating-point array, got dtype {arr.dtype}")
    if ndim is not None:
        allowed = (ndim,) if isinstance(ndim, int) else ndim
        if arr.ndim not in allowed:
            raise VashistaInputError(name, f"expected {' or '.join(map(str, allowed))} dimensions, "
                                           f"got shape {arr.shape}")
    if arr.size == 0 and not allow_empty:
        raise VashistaInputError(name, f"is empty (shape {arr.shape})")
    if not np.all(np.isfinite(arr)):
        bad = int(np.size(arr) - np.count_nonzero(np.isfinite(arr)))
        raise VashistaInputError(name, f"contains {bad} NaN or infinite value(s)")
    return arr.astype(np.float64, copy=False)


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


def positive_scalar(name: str, value) -> float:
    """A finite, strictly positive real number (ε, a scale, a tolerance)."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise VashistaInputError(name, f"expected a positive real number, got {type(value).__name__}")
    v = float(value)
    if not math.isfinite(v) or v <= 0.0:
        raise VashistaInputError(name, f"must be finite and > 0, got {value!r}")
    return v


def nonnegative_scalar(name: str, value) -> float:
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise VashistaInputError(name, f"expected a non-negative real number, got {type(value).__name__}")
    v = float(value)
    if not math.isfinite(v) or v < 0.0:
        raise VashistaInputError(name, f"must be finite and >= 0, got {value!r}")
    return v


def positive_int(name: str, value, *, upper: int | None = None, upper_name: str = "") -> int:
    """An integer >= 1 (and <= ``upper`` when given)."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
        raise VashistaInputError(name, f"expected an integer, got {type(value).__name__}")
    v = int(value)
    if v < 1:
        raise VashistaInputError(name, f"must be >= 1, got {v}")
    if upper is not None and v > upper:
        raise VashistaInputError(name, f"must be <= {upper}{' (' + upper_name + ')' if upper_name else ''}, got {v}")
    return v
