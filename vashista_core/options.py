"""Option names every tier accepts, and their checks (one spelling, one message, in every tier).

    SOLVERS          the decode solvers: softmax (the runtime certificate), eg / fw (projection solvers)
    ROUTERS          page routers that score page summaries: bound (the SPEC 3 upper bound), mean
    SKETCH_ROUTER    certified mode: a quantized key sketch of every token (SPEC 3b)
    SUPPORTED_BITS   sketch code widths; META_DTYPE_NAMES the sketch's per-group metadata dtypes

Example:
    >>> from vashista_core.options import check_sketch_options
    >>> check_sketch_options("sketch", None, "softmax", False, False)     # 4 bits by default
    4
    >>> check_sketch_options("bound", None, "eg", False, False) is None
    True
"""
from __future__ import annotations

from .errors import VashistaInputError
from .validate import positive_int

__all__ = ["ALL_ROUTERS", "META_DTYPE_NAMES", "ROUTERS", "SKETCH_ROUTER", "SOLVERS", "SUPPORTED_BITS",
           "check_bits", "check_group", "check_meta_dtype", "check_router", "check_sketch_options",
           "check_solver"]

SOLVERS = ("softmax", "eg", "fw")
ROUTERS = ("bound", "mean")
SKETCH_ROUTER = "sketch"
ALL_ROUTERS = ROUTERS + (SKETCH_ROUTER,)
SUPPORTED_BITS = (2, 4, 8)
META_DTYPE_NAMES = ("float16", "float32")


def check_solver(solver) -> str:
    if solver not in SOLVERS:
        raise VashistaInputError("solver", f"must be one of {SOLVERS}, got {solver!r}")
    return solver


def check_router(router, *, sketch: bool = True) -> str:
    """A page router; ``sketch=False`` where only the summary routers apply."""
    allowed = ALL_ROUTERS if sketch else ROUTERS
    if router not in allowed:
        raise VashistaInputError("router", f"must be one of {allowed}, got {router!r}")
    return router


def check_bits(bits) -> int:
    # bool is an int subclass: True would pass as 1 bit's neighbour, so it is rejected by name
    if isinstance(bits, bool) or bits not in SUPPORTED_BITS:
        raise VashistaInputError("bits", f"must be one of {SUPPORTED_BITS}, got {bits!r}")
    return int(bits)


def check_group(group) -> int:
    """Tokens per quantization group (a page in the paged cache)."""
    return positive_int("group", group)


def check_meta_dtype(meta_dtype) -> str:
    if meta_dtype not in META_DTYPE_NAMES:
        raise VashistaInputError("meta_dtype", f"must be one of {META_DTYPE_NAMES}, got {meta_dtype!r}")
    return meta_dtype


def check_sketch_options(router: str, bits, solver: str, share_selection: bool, hierarchical: bool) -> int | None:
    """Validate ``sparse_decode``'s certified-mode options; returns ``bits`` (4 by default for the
    sketch router, None otherwise)."""
    if router != SKETCH_ROUTER:
        if bits is not None:
            raise VashistaInputError("bits", f"only the sketch router uses bits (router={router!r})")
        return None
    bits = check_bits(4 if bits is None else bits)
    if solver != "softmax":
        raise VashistaInputError("solver", "certified mode (router='sketch') certifies the softmax solver only")
    if share_selection:
        raise VashistaInputError("share_selection_in_group", "is not supported by router='sketch' "
                                                             "(each query head selects on its own)")
    if hierarchical:
        raise VashistaInputError("hierarchical", "router='sketch' scans every page; no hierarchy is used")
    return bits
