"""Floating-point rounding constants and outward-rounding helpers used by the certificates.

Unit roundoffs u (half the machine epsilon; round-to-nearest):

    U64 = 2⁻⁵³ (float64)   U32 = 2⁻²⁴ (float32)   U_FP16 = 2⁻¹¹ (float16)   U_BF16 = 2⁻⁸ (bfloat16)

``gamma(n, u)`` is Higham's γ_n = n u / (1 − n u): the relative error of a sum or dot product of n
terms evaluated in any order (Higham, *Accuracy and Stability of Numerical Algorithms*, §3.1).
``up`` / ``down`` move a float64 value (or NumPy array) one ulp outward, so a computed upper / lower
bound stays one after the rounding of the last operation. ``FN_REL`` is the allowance for one float64
``exp`` or ``log`` (NumPy's and torch's are accurate to a few ulp; 16 u doubles that margin).
``FLOAT32_MATMUL_ROUNDOFF`` is the unit roundoff a float32 matmul is charged under each of torch's
``float32_matmul_precision`` settings (tf32 and bf16 passes, rounded up to a power of two).

Example:
    >>> from vashista_core.rounding import U64, gamma, up
    >>> gamma(2) == 2 * U64 / (1 - 2 * U64)
    True
    >>> bool(up(1.0) > 1.0)
    True
"""
from __future__ import annotations

import numpy as np

from .errors import VashistaInputError

__all__ = ["FLOAT32_MATMUL_ROUNDOFF", "FN_REL", "U32", "U64", "U_BF16", "U_FP16", "down", "gamma", "up"]

U64 = 2.0 ** -53
U32 = 2.0 ** -24
U_FP16 = 2.0 ** -11
U_BF16 = 2.0 ** -8
FN_REL = 16 * U64
FLOAT32_MATMUL_ROUNDOFF = {"highest": U32, "high": 2.0 ** -10, "medium": 2.0 ** -7}


def gamma(n: int, u: float = U64) -> float:
    """γ_n = n u / (1 − n u); defined only while n u < 1."""
    if n * u >= 1:
        raise VashistaInputError("n", f"gamma needs n·u < 1, got n = {n}, u = {u!r}")
    return n * u / (1 - n * u)


def up(x):
    """The next float64 above ``x`` (elementwise)."""
    return np.nextafter(x, np.inf)


def down(x):
    """The next float64 below ``x`` (elementwise)."""
    return np.nextafter(x, -np.inf)
