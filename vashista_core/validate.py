"""Argument checks shared by every tier (NumPy and plain Python values). Each check names the argument
it rejects in a :class:`VashistaInputError`.

Imports only the standard library and NumPy, so the GPU tier can use these checks without pulling in
SciPy (``vashista_gpu.validate`` adds the torch-tensor twins with the same wording).
"""
from __future__ import annotations

import math

import numpy as np

from .errors import VashistaInputError

__all__ = ["as_real_array", "nonnegative_scalar", "positive_int", "positive_scalar"]


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
