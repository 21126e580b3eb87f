"""The GPU tier's decode steps as stress tiers: ``sparse_decode`` on a ``TorchPagedKVCache`` (every
router: bound/mean routing with the paged step, sketch with the certified torch path or, on the Triton
backend with a supported cache, the fused paged step), per backend and dtype:

    gpu-torch-fp32, gpu-torch-bf16, gpu-torch-fp16      torch backend (CPU, or CUDA when present)
    gpu-triton-fp32, gpu-triton-bf16, gpu-triton-fp16   Triton backend (registered with CUDA; on CPU the
                                        interpreter is too slow for the CI profile: tests/stress/
                                        test_stress_gpu.py runs fp32/bf16 on a few cases with
                                        :func:`register_triton`)
    gpu-plan2s-fp32                     the engine's planned certified step with two-sided bounds
                                        (registered with the Triton tiers)

The cache stores keys and values in the tier's dtype and the query is passed in it too (bf16 tiers:
bf16 queries, the output returned in bf16). The case's arrays are rounded to that dtype *in place*
before the step, so the exact truth (``truth.py``) is over the stored numbers — what the certificate
promises (docs/ROUNDING.md, GPU tier). A case whose numbers the dtype cannot hold (values of 1e300 in
float32) is refused by the cache's append with a VashistaInputError, counted as refused.
"""
from __future__ import annotations

import numpy as np
import torch

from tiers import TIERS, TierResult, Unsupported, register

CUDA = torch.cuda.is_available()
DEVICE = "cuda" if CUDA else "cpu"
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}   # issue 15: "every dtype"


def _stored(a: np.ndarray, dtype) -> None:
    """Round ``a`` in place to the numbers a ``dtype`` tensor holds (±inf beyond its range)."""
    with np.errstate(over="ignore"):
        a[...] = torch.from_numpy(np.ascontiguousarray(a)).to(dtype).double().numpy()


def _paged_case(case, dtype, backend: str):
    """(cache, seq ids, query) of a case in ``dtype``: its arrays rounded in place to the stored numbers
    (module doc), or a VashistaInputError when the dtype cannot hold them (the append would refuse)."""
    from vashista_core.errors import VashistaInputError
    from vashista_gpu.paged_cache import TorchPagedKVCache
    big = float(torch.finfo(dtype).max)
    for a in (*case.keys, *case.values, case.q):
        if np.abs(a).max() > big:     # the cache (or the query's dtype) cannot hold it: the append refuses
            raise VashistaInputError("keys", f"numbers beyond the range of {dtype}")
        _stored(a, dtype)
    cache, ids = TorchPagedKVCache.from_dense([torch.from_numpy(k).to(dtype) for k in case.keys],
                                              [torch.from_numpy(v).to(dtype) for v in case.values],
                                              case.page_size, fanout=case.fanout, shuffle_seed=case.seed,
                                              dtype=dtype, device=DEVICE, backend=backend)
    return cache, ids, torch.from_numpy(case.q).to(dtype=dtype, device=DEVICE)


def _result(r) -> TierResult:
    cand = r.candidates.cpu().numpy()
    return TierResult(r.out.double().cpu().numpy(), r.certified_error.double().cpu().numpy(),
                      r.certified_leakage.double().cpu().numpy(), [[c[c >= 0] for c in row] for row in cand])


def step(case, backend: str, dtype) -> TierResult:
    from vashista_gpu.decode import sparse_decode
    cache, ids, q = _paged_case(case, dtype, backend)
    r = sparse_decode(q, cache, ids, case.P, case.Kc, scale=case.scale, router=case.router, bits=case.bits,
                      share_selection_in_group=case.share, hierarchical=case.fanout is not None, backend=backend)
    return _result(r)


def _make(backend, name):
    def tier(case):
        return step(case, backend, DTYPES[name])
    tier.__doc__ = f"vashista_gpu sparse_decode, {backend} backend, {name} cache and query"
    return tier


for _name in DTYPES:
    register(f"gpu-torch-{_name}")(_make("torch", _name))


def planned_two_sided(case, dtype) -> TierResult:
    """The engine's planned certified step with two-sided token bounds (``plan_sketch_step(...,
    one_sided=False)`` + ``run_sketch_plan``: the CUDA path's int8 default since the sixth session),
    which ``sparse_decode`` never takes. Sketch-router cases of shapes the fused step supports only."""
    from vashista_gpu.sketch_plan import fused_shapes_ok, plan_sketch_step, run_sketch_plan
    if case.router != "sketch" or case.fanout is not None or case.share:
        raise Unsupported("the planned step: sketch router, flat page table, per-head selection")
    cache, ids, q = _paged_case(case, dtype, "triton")
    why = fused_shapes_ok(cache, case.bits)
    if why is not None:
        raise Unsupported(why)
    plan = plan_sketch_step(cache, ids, q.shape[1], case.Kc, bits=case.bits, scale=case.scale, one_sided=False)
    return _result(run_sketch_plan(plan, q, sync=True))


def register_triton() -> list:
    """Register the Triton tiers (done at import with CUDA); returns their names: gpu-triton-<dtype>
    (``sparse_decode``) and gpu-plan2s-fp32 (the planned step, two-sided bounds)."""
    try:
        import triton  # noqa: F401
    except ImportError:                                        # pragma: no cover
        return []
    names = []
    for name in DTYPES:
        TIERS[f"gpu-triton-{name}"] = _make("triton", name)
        names.append(f"gpu-triton-{name}")
    TIERS["gpu-plan2s-fp32"] = lambda case: planned_two_sided(case, torch.float32)
    names.append("gpu-plan2s-fp32")
    return names


if CUDA:
    register_triton()
