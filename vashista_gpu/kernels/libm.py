"""Accurately rounded exp/log and one-ulp outward steps for the Triton kernels of the certificates.

Why: on CUDA ``tl.exp``/``tl.log`` of float32 may lower to the approximate instructions (ex2.approx /
lg2.approx after a float32 product by log2 e), whose error grows with |x| — fine inside a bound that
widens its argument (``row_lse``), not for the certificate's own arithmetic. On CUDA these helpers
call libdevice (``__nv_expf`` within 2 ulp, ``__nv_logf`` within 1 ulp over the whole range). The
Triton interpreter (``TRITON_INTERPRET=1``, CPU) cannot call libdevice; there ``tl.exp``/``tl.log`` are
NumPy's float32 functions (within 4 ulp). Every certificate charges 16u = 8 ulp per call, which covers
both. The backend is fixed when this module is imported (``TRITON_INTERPRET`` is read once, as Triton
itself does).
"""
from __future__ import annotations

import os

import numpy as np
import triton
import triton.language as tl

__all__ = ["INTERPRET", "exp_acc", "f32_down", "f32_up", "log_acc", "next_down", "next_up"]

INTERPRET = os.environ.get("TRITON_INTERPRET", "0") == "1"

if INTERPRET:
    @triton.jit
    def exp_acc(x):
        return tl.exp(x)

    @triton.jit
    def log_acc(x):
        return tl.log(x)
else:                                                   # pragma: no cover - CUDA only
    from triton.language.extra import libdevice

    @triton.jit
    def exp_acc(x):
        return libdevice.exp(x)

    @triton.jit
    def log_acc(x):
        return libdevice.log(x)


@triton.jit
def next_up(x):
    """The next float32 above x (+0 → the smallest subnormal; ±inf and NaN unchanged), as
    ``torch.nextafter(x, +inf)``."""
    b = x.to(tl.int32, bitcast=True)
    nb = tl.where(x > 0, b + 1, tl.where(x < 0, b - 1, 1))        # ±0 → bits 1 (2⁻¹⁴⁹)
    y = nb.to(tl.float32, bitcast=True)
    return tl.where((x != x) | (x == float("inf")), x, tl.where(x == float("-inf"), -3.4028234663852886e38, y))


@triton.jit
def next_down(x):
    """The next float32 below x (±0 → −2⁻¹⁴⁹; ±inf and NaN unchanged)."""
    return -next_up(-x)


def f32_up(x: float) -> float:
    """The smallest float32 ≥ x (a host constant passed to a kernel as an upper factor)."""
    y = np.float32(x)
    return float(y if float(y) >= x else np.nextafter(y, np.float32(np.inf)))


def f32_down(x: float) -> float:
    """The largest float32 ≤ x."""
    y = np.float32(x)
    return float(y if float(y) <= x else np.nextafter(y, np.float32(-np.inf)))
