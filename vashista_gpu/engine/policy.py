"""Policies on the device for the graph-replayed certified step: DenseFallback(tol) and Capped(tol)
with a fixed capacity of exact recomputations per step, no host synchronisation, overflow counted.

The eager policies (``sketch_plan.paged_certified_decode``) read the certificates on the host and
recompute the flagged heads one batch row at a time. Inside a CUDA graph nothing may depend on a
host value, so here every shape is fixed when the step is planned:

1. flag and compact (``kernels/flag_pairs.py``, one launch): a (row, query head) pair is *flagged*
   when ``not certified_error <= tol`` — an error above tol, or a non-finite certificate (NaN/inf
   counts as uncertified, never as certified); the flagged pairs, in row-major order, go into a
   (capacity, 2) int32 list (row, head), padded with −1 (a prefix sum gives each its slot; pairs
   past the capacity are not listed), with their number on the device;
2. recompute: the paged dense flash-decode kernel in pairs mode (``kernels/paged_dense.py``) writes
   exact attention for the listed pairs into the step's output buffer, in place: a persistent grid
   (at most 4 programs per SM) loops over the (pair, split) items of the flagged pairs only, their
   count read on the device, so the unused capacity adds no program to the fixed grid;
3. count (device int64, in place, so a replayed graph accumulates; in the same launch as 1):
   flagged, fell back, overflow.

Overflow is never silent. Flagged pairs beyond the capacity keep the certified step's output; they
are marked in the result's ``overflowed`` mask, counted in ``counts[OVERFLOW]``, and ``any_overflow``
is a device flag the engine reads when it next synchronises. :func:`resolve_overflow` is the second,
eager path (one synchronisation): it recomputes exactly the overflowed pairs, e.g. when the engine
re-runs a token outside the graph. ``capacity = B·Hq`` (the default) cannot overflow, and its idle
slots cost no split program (the combine still has one tiny program per slot).

Capped(tol) on the device (:class:`DeviceCapped`): the engine pre-plans a second certified step at
Kc_max (``widen``, a callable q → (out, certified_error), captured in the same graph); the flagged
pairs take its output and certificate, and what is still flagged falls back to exact attention as
above. The simplest honest version: in a graph the widened step cannot be skipped when nothing is
flagged, so it costs a second certified step (scan included) on every token — worth it only where
flags are frequent and dense recomputation costs more. The eager Capped (doubling Kc per row until
certified or capped) stays on the host path.

Example (CPU: ``TRITON_INTERPRET=1``)::

    >>> import torch
    >>> pol = DeviceDenseFallback(0.5)
    >>> pairs, count, flagged, listed, over, any_over = pol.flag(torch.tensor([[0.1, float("nan")], [0.0, 2.0]]), 2)
    >>> pairs.tolist(), int(count), pol.counts.tolist()
    ([[0, 1], [1, 1]], 2, [2, 2, 0])
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from vashista_core.errors import VashistaInputError

from ..validate import nonnegative_scalar, positive_int

__all__ = ['DeviceCapped', 'DeviceDenseFallback', 'DevicePolicyResult', 'FLAGGED', 'FELL_BACK', 'OVERFLOW', 'resolve_overflow']

FLAGGED, FELL_BACK, OVERFLOW = 0, 1, 2          # rows of DeviceDenseFallback.counts


@dataclass
class DevicePolicyResult:
    """One step's policy outcome, all on the device: ``flagged`` (B, Hq) not certified within tol
    (after widening, for Capped), ``fell_back`` recomputed exactly in this step, ``overflowed``
    flagged but beyond the capacity (output left as the certified step's), ``any_overflow`` 0-d bool,
    ``certified_error`` (B, Hq) the certificate compared with tol (the widened step's where Capped
    widened)."""
    flagged: torch.Tensor
    fell_back: torch.Tensor
    overflowed: torch.Tensor
    any_overflow: torch.Tensor
    certified_error: torch.Tensor


class DeviceDenseFallback:
    """DenseFallback(tol) inside the graph (module doc). ``capacity`` exact recomputations per step
    and layer (default: every pair, B·Hq, which cannot overflow); ``num_splits`` of the pairs kernel
    (default: sized for a few flagged pairs, so one flagged pair at 128k is spread over the card)."""

    def __init__(self, tol: float, *, capacity: int | None = None, num_splits: int | None = None,
                 device="cpu"):
        self.tol = float(nonnegative_scalar("tol", tol))
        self.capacity = None if capacity is None else positive_int("capacity", capacity)
        self.num_splits = None if num_splits is None else positive_int("num_splits", num_splits)
        self.counts = torch.zeros(3, dtype=torch.int64, device=device)
        self._tol: dict = {}          # (dtype, device) -> tol as a one-element tensor, made once (not per step)

    def flag(self, certified_error: torch.Tensor, capacity: int):
        """Flag, compact and count (module doc, step 1) in one launch: returns (pairs, count, flagged,
        listed, overflowed, any_overflow) and adds to ``counts``."""
        from ..kernels.flag_pairs import flag_pairs

        key = (certified_error.dtype, certified_error.device)
        if key not in self._tol:      # made on the first (warm-up) call, before any graph capture
            self._tol[key] = torch.tensor([self.tol], dtype=certified_error.dtype, device=certified_error.device)
        return flag_pairs(certified_error, self._tol[key], capacity, self.counts)

    def _splits(self, max_tokens: int, device) -> int:
        from ..kernels.paged_dense import default_splits

        return self.num_splits or default_splits(8, max_tokens, 64, torch.device(device))

    def __call__(self, out: torch.Tensor, certified_error: torch.Tensor, q: torch.Tensor, pool, row_idx, *,
                 max_tokens: int, scale: float) -> DevicePolicyResult:
        """Patch ``out`` (B, Hq, Dv) in place with exact attention for the flagged pairs of
        ``certified_error`` (B, Hq); ``q`` (B, Hq, D) the step's query, ``pool`` the layer's
        ``TorchPagedKVCache``, ``row_idx`` (B,) int32 sequence of each row."""
        from ..kernels.paged_dense import cache_dense_decode

        if certified_error.shape != out.shape[:2] or q.shape[:2] != out.shape[:2]:
            raise VashistaInputError("certified_error", f"expected shape {tuple(out.shape[:2])} (out's rows and "
                                                        f"heads), got {tuple(certified_error.shape)}")
        B, Hq = certified_error.shape
        cap = B * Hq if self.capacity is None else self.capacity
        pairs, n, flag, within, over, any_over = self.flag(certified_error, cap)
        cache_dense_decode(q, pool, row_idx, max_tokens=max_tokens, scale=scale, out=out, pairs=pairs,
                           pair_count=n, num_splits=self._splits(max_tokens, q.device))
        return DevicePolicyResult(flagged=flag, fell_back=within, overflowed=over, any_overflow=any_over,
                                  certified_error=certified_error)


class DeviceCapped(DeviceDenseFallback):
    """Capped(tol) inside the graph (module doc): ``widen(q)`` → (out, certified_error) of the
    pre-planned Kc_max step replaces the flagged pairs, then DenseFallback on what is still flagged."""

    def __init__(self, tol: float, widen, **kw):
        super().__init__(tol, **kw)
        if not callable(widen):
            raise VashistaInputError("widen", f"expected a callable q -> (out, certified_error), got {widen!r}")
        self.widen = widen
        self.widened = torch.zeros((), dtype=torch.int64, device=self.counts.device)

    def __call__(self, out, certified_error, q, pool, row_idx, *, max_tokens: int, scale: float):
        flag = ~(certified_error <= self.tol)
        out_w, err_w = self.widen(q)
        out.copy_(torch.where(flag[..., None], out_w.to(out.dtype), out))
        err = torch.where(flag, err_w, certified_error)
        self.widened += flag.sum()
        return super().__call__(out, err, q, pool, row_idx, max_tokens=max_tokens, scale=scale)


def resolve_overflow(result: DevicePolicyResult, out, q, pool, row_idx, *, max_tokens: int,
                     scale: float) -> int:
    """The eager second path: recompute exactly the pairs ``result.overflowed`` marks (one host
    synchronisation) into ``out``; returns how many."""
    from ..kernels.paged_dense import cache_dense_decode

    pairs = torch.nonzero(result.overflowed).to(torch.int32).contiguous()
    if pairs.shape[0]:
        cache_dense_decode(q, pool, row_idx, max_tokens=max_tokens, scale=scale, out=out, pairs=pairs)
    return int(pairs.shape[0])
