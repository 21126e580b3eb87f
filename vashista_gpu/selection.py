"""Top-k selection that reproduces the project's tie rule exactly, on any device.

Tie rule (docs/ARCHITECTURE.md): order by score descending, break ties by the lower logical index —
what ``np.argsort(-s, kind="stable")`` does in the reference. ``torch.topk`` makes no promise about
ties, so each (score, logical index) pair is packed into one int64 *key* whose integer order is the
tie rule's order, and ``topk`` runs on the keys:

    key = orderable(score) << 32  |  (2**32 - 1 - index)

``orderable`` maps a float32 bit pattern to an int32 with the same order (negative floats get their
magnitude bits flipped); -0.0 is first turned into +0.0 so that the two zeros tie, as in NumPy.
All keys are distinct, so the selected *set* is fully determined. The Triton kernels compute the same
keys in-kernel (kernels/keys.py); this module is the torch version used by the plain path and tests.
The certified step's ``select_candidates`` runs, wherever Triton does, one kernel instead
(``kernels/select_topk.py``: a radix select on ``orderable`` with the same tie rule, no topk, no sort).

Example::

    >>> import torch
    >>> s = torch.tensor([[1.0, 3.0, 3.0, 2.0]])
    >>> idx = torch.arange(4).expand(1, 4)
    >>> top_indices(tie_keys(s, idx), 2)
    tensor([[1, 2]])
"""
from __future__ import annotations

import operator
import os

import torch

from vashista_core.errors import VashistaInputError

__all__ = ["FORCED_ORDERABLE", "INVALID_KEY", "LOW_MASK", "key_index", "orderable", "select_candidates",
           "tie_keys", "top_ascending", "top_indices", "topk_keys"]

INVALID_KEY = -(2 ** 63)                 # below every real key: padding, empty slots
FORCED_ORDERABLE = 2 ** 31 - 1           # above every finite or infinite float: sink/newest pages
LOW_MASK = 2 ** 32 - 1


def orderable(scores: torch.Tensor) -> torch.Tensor:
    """float32 scores -> int64 values with the same order (as signed 32-bit integers)."""
    s = scores.to(torch.float32)
    s = torch.where(s == 0, torch.zeros_like(s), s)          # -0.0 ties with +0.0
    bits = s.view(torch.int32).to(torch.int64)
    return torch.where(bits < 0, bits ^ 0x7FFFFFFF, bits)


def tie_keys(scores: torch.Tensor, index: torch.Tensor, *, valid: torch.Tensor | None = None,
             forced: torch.Tensor | None = None) -> torch.Tensor:
    """Pack scores and logical indices (broadcastable) into int64 keys; invalid -> INVALID_KEY."""
    hi = orderable(scores)
    if forced is not None:
        hi = torch.where(forced, torch.full_like(hi, FORCED_ORDERABLE), hi)
    key = hi * (2 ** 32) + (LOW_MASK - index.to(torch.int64))
    if valid is not None:
        key = torch.where(valid, key, torch.full_like(key, INVALID_KEY))
    return key


def key_index(keys: torch.Tensor) -> torch.Tensor:
    """Recover the logical index from keys (meaningless for INVALID_KEY)."""
    return LOW_MASK - (keys & LOW_MASK)


def top_indices(keys: torch.Tensor, k: int) -> torch.Tensor:
    """Logical indices of the k largest keys along the last dim, in ascending index order."""
    vals, _ = torch.topk(keys, k, dim=-1, sorted=False)
    return torch.sort(key_index(vals), dim=-1).values


def top_ascending(s: torch.Tensor, k: int) -> torch.Tensor:
    """(rows, k) int64: per row of ``s`` (rows, n), any float dtype, the indices of its k largest
    entries under the tie rule, in ascending order — the set of
    ``torch.sort(s, dim=-1, descending=True, stable=True).indices[:, :k]`` without sorting n entries:
    the k-th largest value τ by ``topk``, then every entry above τ and the lowest-index entries equal to
    τ that complete k (float64 scores have no ``tie_keys``). A NaN anywhere takes that sort itself."""
    if k >= s.shape[-1] or bool(torch.isnan(s).any()):
        return torch.sort(torch.sort(s, dim=-1, descending=True, stable=True).indices[:, :k], dim=-1).values
    tau = torch.topk(s, k, dim=-1, sorted=False).values.amin(-1, keepdim=True)
    above, tie = s > tau, s == tau
    take = above | (tie & (tie.cumsum(-1) <= k - above.sum(-1, keepdim=True)))
    return torch.nonzero(take)[:, 1].view(s.shape[0], k)


def topk_keys(keys: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(positions, keys) of the k largest keys along the last dim, sorted by key descending."""
    vals, pos = torch.topk(keys, k, dim=-1, sorted=True)
    return pos, vals


def select_candidates(s: torch.Tensor, bmax: torch.Tensor, Kc: int, cap: int, sync: bool, short_window: int = 0,
                      *, block: int | None = None, method: str = "auto"):
    """Top-Kc logical indices (ascending) of each row of ŝ under the tie rule, and the overflow mask.

    ``bmax`` (R, ⌈T/block⌉) holds the maxima of ŝ over consecutive blocks of ``block`` columns of
    each row (default: the scan's 16 tokens, ``kernels/sketch_scan.SUB``); the radix method reads
    only the blocks that can hold a candidate. With at least 8·Kc blocks the selection is the *threshold path*:
    τ = the Kc-th largest block maximum (at least Kc tokens are ≥ τ, so the top-Kc is among them);
    rows with more than ``cap`` tokens ≥ τ (many ties, or a flat row) are *overflowed*. Otherwise
    the *full path* selects from every token (no overflow).

    ``method="radix"`` (the default, ``"auto"``, wherever Triton runs and ŝ is float32 with unit
    column stride): one launch (``kernels/select_topk.py``, a radix select per row), no host
    synchronisation. The tokens ≥ τ are kept in token order in ``cap`` slots per row; an overflowed
    row gets the top-Kc of its first ``cap`` such tokens and is flagged, or, when ``sync``, its exact
    top-Kc (nothing flagged). The full path is exact on every row (with at least 2·Kc blocks it
    prunes by τ too).
    ``method="topk"`` (the default elsewhere): ``torch.topk`` over int64 tie keys; in the threshold
    path the tokens ≥ τ are compacted into ``cap`` slots (``kernels/select_above.py``) and topk'd,
    so an overflowed row holds an arbitrary subset — reselected from all keys when ``sync`` (one
    host synchronisation per step), else only flagged.

    Rows padded with −inf past their end (a paged batch): a row with fewer than Kc finite block maxima
    has τ = −inf, which would admit its padding. When ``short_window`` > 0 (the caller knows such rows
    may exist and that their tokens all lie in the first ``short_window`` columns), those rows are
    selected among that window instead — decided on the device, no synchronisation, never flagged."""
    R, T = s.shape
    NB = bmax.shape[1]
    if method not in ("auto", "radix", "topk"):
        raise VashistaInputError("method", f"expected 'auto', 'radix' or 'topk', got {method!r}")
    try:
        Kc = operator.index(Kc)
    except TypeError:
        raise VashistaInputError("Kc", f"expected an int, got {Kc!r}") from None
    if not 1 <= Kc <= T:
        raise VashistaInputError("Kc", f"must be in [1, {T}] (the row length), got {Kc}")
    if block is not None and (isinstance(block, bool) or not isinstance(block, int) or block < 1
                              or NB != -(-T // block)):
        raise VashistaInputError("bmax", f"expected ⌈{T}/{block!r}⌉ block maxima per row, got {NB}")
    on_triton = s.is_cuda or os.environ.get("TRITON_INTERPRET", "0") == "1"
    radix_ok = on_triton and s.dtype == torch.float32 and s.stride(1) == 1
    threshold = NB >= 8 * Kc     # else too few blocks for a selective threshold: every token
    if threshold and cap < Kc:
        raise VashistaInputError("cap", f"must be >= Kc ({Kc}), got {cap}")
    if method == "topk" or (method == "auto" and not radix_ok):
        return _select_by_topk(s, bmax, Kc, cap, sync, short_window, threshold, radix_ok)
    if not radix_ok:
        raise VashistaInputError("s", f"method='radix' needs float32 scores with unit column stride on a Triton "
                                      f"device (CUDA, or TRITON_INTERPRET=1), got {s.dtype} on {s.device}")
    from .kernels.select_topk import select_topk      # Triton is optional for the torch path's users

    # (.float().contiguous(): no copy for the scan's maxima, float32 rows of unit stride)
    blocks = dict(bmax=bmax.float().contiguous(), **({} if block is None else dict(block=block)))
    if threshold:          # overflowed rows: flagged (sync: selected exactly instead, nothing flagged)
        return select_topk(s, Kc, cap=cap, flag=not sync, short_window=short_window, **blocks)
    if NB >= 2 * Kc:       # the threshold's pruning still pays; every row exact, nothing flagged
        return select_topk(s, Kc, cap=max(cap, 4 * Kc), flag=False, **blocks)
    return select_topk(s, Kc)


def _select_by_topk(s, bmax, Kc, cap, sync, short_window, threshold, keys_kernel):
    """select_candidates with ``torch.topk`` over int64 tie keys (its ``method="topk"``);
    ``keys_kernel``: the keys by ``kernels/row_keys.py`` (Triton runs and ŝ is float32 of unit column
    stride, the caller's ``radix_ok``), else in torch."""
    from .kernels.row_keys import row_keys            # Triton is optional for the torch path's users
    from .kernels.select_above import select_above

    R, T = s.shape
    if keys_kernel:
        def keys_of(w):        # tie_keys(s[:, :w], idx[:w]) in one launch instead of ~10 ops
            return row_keys(s, w)
    else:
        def keys_of(w):
            return tie_keys(s[:, :w], torch.arange(w, device=s.device))
    if not threshold:
        top = torch.topk(keys_of(T), Kc, dim=-1, sorted=False).values
        return torch.sort(key_index(top), dim=-1).values, torch.zeros(R, dtype=torch.bool, device=s.device)
    # (no pooling of the maxima to a smaller topk: scores within a quantization group are correlated
    # through the shared offsets, so the Kc-th largest maximum of 64-token blocks let whole groups
    # through and overflowed 29 of 512 rows at 128k on an H200, where 16-token maxima overflowed none)
    tau = torch.topk(bmax, Kc, dim=-1, sorted=False).values.amin(-1).contiguous()
    keys = torch.full((R, cap), INVALID_KEY, dtype=torch.int64, device=s.device)
    count = torch.zeros(R, dtype=torch.int32, device=s.device)
    select_above(s, tau, keys, count)
    cand = torch.sort(key_index(torch.topk(keys, Kc, dim=-1, sorted=False).values), dim=-1).values
    overflow = count > cap
    if short_window:
        short = torch.isneginf(tau)
        w = min(short_window, T)
        top = torch.topk(keys_of(w), Kc, dim=-1, sorted=False).values
        cand = torch.where(short[:, None], torch.sort(key_index(top), dim=-1).values, cand)
        overflow = overflow & ~short
    if sync and bool(overflow.any()):
        rows = overflow.nonzero()[:, 0]
        top = torch.topk(tie_keys(s[rows], torch.arange(T, device=s.device)), Kc, dim=-1, sorted=False).values
        cand[rows] = torch.sort(key_index(top), dim=-1).values
        overflow = torch.zeros_like(overflow)
    return cand, overflow
