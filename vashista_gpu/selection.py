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

Example::

    >>> import torch
    >>> s = torch.tensor([[1.0, 3.0, 3.0, 2.0]])
    >>> idx = torch.arange(4).expand(1, 4)
    >>> top_indices(tie_keys(s, idx), 2)
    tensor([[1, 2]])
"""
from __future__ import annotations

import torch

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


def topk_keys(keys: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(positions, keys) of the k largest keys along the last dim, sorted by key descending."""
    vals, pos = torch.topk(keys, k, dim=-1, sorted=True)
    return pos, vals
