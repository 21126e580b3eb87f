"""In-kernel twin of ``vashista_gpu.selection.tie_keys``: pack (float32 score, logical index) into an
int64 key whose integer order is the tie rule's order (score descending, lower index first).

    key = orderable(score) << 32 | (2**32 − 1 − index);  forced -> orderable = 2**31 − 1;
    invalid -> −2**63.   (−0.0 is mapped to +0.0 first so the two zeros tie, as in NumPy.)

``orderable`` alone (the int32 high half) is what ``kernels/select_topk.py`` radix-selects on.
Used by ``kernels/block_scores.py``, ``kernels/token_scores.py``, ``kernels/row_keys.py``,
``kernels/select_above.py`` and ``kernels/select_topk.py``.
"""
import triton
import triton.language as tl

__all__ = ["orderable", "tie_key"]


@triton.jit
def orderable(score):
    """float32 -> int32 with the same order as signed integers (−0.0 ties with +0.0)."""
    s = tl.where(score == 0.0, 0.0, score).to(tl.float32)
    bits = s.to(tl.int32, bitcast=True)
    return tl.where(bits < 0, bits ^ 0x7FFFFFFF, bits)


@triton.jit
def tie_key(score, index, valid, forced):
    hi = tl.where(forced, 2147483647, orderable(score).to(tl.int64))
    key = hi * 4294967296 + (4294967295 - index.to(tl.int64))
    return tl.where(valid, key, -9223372036854775807 - 1)
