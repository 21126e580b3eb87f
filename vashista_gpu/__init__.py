"""vashista_gpu — tier two of Vashista: paged KV cache and fused sparse decode (PyTorch + Triton).

The public API (what benchmarks, notebooks and the application layer import):

* cache: ``TorchPagedKVCache``; dense reference step ``dense_decode``;
* paged sparse step: ``plan_decode`` (host, once) + ``run_plan`` (device only, graph-capturable),
  or ``sparse_decode`` (one call, with a policy; ``router="sketch"`` is certified mode);
* certified step: ``plan_sketch_step`` + ``run_sketch_plan``, or ``paged_certified_decode`` (one
  call, with a policy); ``fused_paged_sketch_step`` (plan + run, no policy); the equal-length
  ``fused_sketch_step`` and the torch path ``quantize_keys`` / ``certified_decode`` / ``sketch_decode``;
* every step returns a ``StepResult``; ``capture`` records a step in a CUDA graph.

Triton is needed only by the Triton backend and the fused certified step (imported on use).
"""
from .cuda_graph import capture
from .decode import run_plan, sparse_decode
from .dense import dense_decode
from .paged_cache import TorchPagedKVCache
from .plan import DecodePlan, plan_decode
from .result import StepResult
from .selection import select_candidates
from .sketch import (TorchKeySketch, attach_sketch, certified_decode, fused_sketch_step, quantize_keys,
                     sketch_decode)
from .sketch_plan import (SketchStepPlan, candidate_weights, fused_paged_sketch_step, fused_shapes_ok,
                          paged_certified_decode, plan_sketch_step, run_sketch_plan)

__all__ = [
    "DecodePlan", "SketchStepPlan", "StepResult", "TorchKeySketch", "TorchPagedKVCache", "attach_sketch",
    "candidate_weights", "capture", "certified_decode", "dense_decode", "fused_paged_sketch_step",
    "fused_shapes_ok", "fused_sketch_step", "paged_certified_decode", "plan_decode", "plan_sketch_step",
    "quantize_keys", "run_plan", "run_sketch_plan", "select_candidates", "sketch_decode", "sparse_decode",
]
