"""Input checks for the GPU tier (torch tensors): the twin of ``vashista_ref.validate``.

Same error type (:class:`vashista_core.errors.VashistaInputError`) and the same wording, so callers
catch one exception whichever tier they use. Scalar checks are not duplicated: they are re-exported
from the reference module (it has no torch and no cvxpy at import time).

Example::

    >>> import torch
    >>> from vashista_gpu.validate import tensor
    >>> tensor("q", torch.ones(2, 4, 8), ndim=3).shape
    torch.Size([2, 4, 8])
"""
from __future__ import annotations

import torch

from vashista_core.errors import VashistaInputError
from vashista_core.validate import nonnegative_scalar, positive_int, positive_scalar  # noqa: F401  (re-export)

__all__ = ["FLOAT_DTYPES", "batch_query", "index_tensor", "same_device", "tensor"]

FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)


def tensor(name: str, x, *, ndim: int | tuple[int, ...] | None = None, allow_empty: bool = False,
           dtypes: tuple = FLOAT_DTYPES, check_finite: bool = True) -> torch.Tensor:
    """Return ``x`` if it is a finite floating-point tensor of an allowed dtype and rank.

    Integer tensors are rejected rather than cast (token ids passed where vectors were expected).
    The finiteness check costs one reduction (and, on a GPU, one host synchronisation); hot decode
    loops pass ``check_finite=False`` after validating once.
    """
    if not isinstance(x, torch.Tensor):
        raise VashistaInputError(name, f"expected a torch.Tensor, got {type(x).__name__}")
    if x.dtype not in dtypes:
        raise VashistaInputError(name, f"expected a real floating-point tensor "
                                       f"({', '.join(str(d).replace('torch.', '') for d in dtypes)}), got dtype {x.dtype}")
    if ndim is not None:
        allowed = (ndim,) if isinstance(ndim, int) else ndim
        if x.ndim not in allowed:
            raise VashistaInputError(name, f"expected {' or '.join(map(str, allowed))} dimensions, "
                                           f"got shape {tuple(x.shape)}")
    if x.numel() == 0 and not allow_empty:
        raise VashistaInputError(name, f"is empty (shape {tuple(x.shape)})")
    if check_finite and x.numel() and not bool(torch.isfinite(x).all()):
        bad = int((~torch.isfinite(x)).sum())
        raise VashistaInputError(name, f"contains {bad} NaN or infinite value(s)")
    return x


def index_tensor(name: str, x, *, ndim: int = 1) -> torch.Tensor:
    """An integer tensor (sequence ids, positions); python lists/ints are converted."""
    if isinstance(x, int) and not isinstance(x, bool):
        x = torch.tensor([x])
    elif isinstance(x, (list, tuple)):
        if not all(isinstance(v, int) and not isinstance(v, bool) for v in x):
            raise VashistaInputError(name, "expected integers")
        x = torch.tensor(list(x), dtype=torch.int64)
    if not isinstance(x, torch.Tensor):
        raise VashistaInputError(name, f"expected integer ids, got {type(x).__name__}")
    if x.dtype not in (torch.int8, torch.int16, torch.int32, torch.int64, torch.uint8):
        raise VashistaInputError(name, f"expected an integer tensor, got dtype {x.dtype}")
    if x.ndim != ndim:
        raise VashistaInputError(name, f"expected {ndim} dimension(s), got shape {tuple(x.shape)}")
    if x.numel() == 0:
        raise VashistaInputError(name, "is empty")
    return x


def same_device(name: str, x: torch.Tensor, device: torch.device) -> None:
    if x.device.type != torch.device(device).type:
        raise VashistaInputError(name, f"is on {x.device} but the cache lives on {device}")


def batch_query(q, cache, seq_ids):
    """(q, host ids) of a decode batch checked against each other and the cache: q (B, Hq, D) finite on
    the cache's device with the cache's head dimension, one sequence id per batch row (every step of
    the tier takes its batch through here)."""
    q = tensor("q", q, ndim=3)
    same_device("q", q, cache.device)
    ids = [int(s) for s in index_tensor("seq_ids", seq_ids).tolist()]
    if len(ids) != q.shape[0]:
        raise VashistaInputError("seq_ids", f"has {len(ids)} ids but q has batch size {q.shape[0]}")
    if q.shape[2] != cache.head_dim:
        raise VashistaInputError("q", f"has head dimension {q.shape[2]} but the cache stores keys of dimension "
                                      f"{cache.head_dim}")
    return q, ids
