"""Certified mode on a paged cache (issue 8): ``fused_paged_sketch_step`` vs dense SDPA flash on the
same keys and values stored contiguously. The paged step reads the page sketch of every token through
the page table (shuffled physical pages) and only the candidates' key/value rows.

Shapes: batch 4, 32 heads (MHA), head dim 128, bf16, page 64 (= the quantization group, float16
metadata: 8 B/token/head as in ``sketch_decode_scaling.py``), Kc = 256, T = 32k; int4 and int8,
one- and two-sided bounds. Three timings per configuration:

* ``paged_eager_ms`` — ``fused_paged_sketch_step(..., sync=True)``: plan + launch every call, the host
  checks for overflowed rows (what a simple decode loop calls);
* ``planned_eager_ms`` — ``run_sketch_plan(plan, q)`` with the plan made once (``sync=False``): the
  launches alone, issued from Python;
* ``paged_graph_ms`` — the same planned step captured in a CUDA graph and replayed (``max_tokens`` =
  T): what an engine's decode loop pays. ``plan_ms`` is the host planning time (once per re-plan).

    PYTHONPATH=. python benchmarks/sketch_paged_scaling.py --out paged.json      # CUDA only
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from decode_scaling import bench, graph_of  # noqa: E402

from vashista_gpu.dense import sdpa_decode  # noqa: E402
from vashista_gpu.paged_cache import TorchPagedKVCache  # noqa: E402
from vashista_gpu.sketch import attach_sketch  # noqa: E402
from vashista_gpu.sketch_plan import fused_paged_sketch_step, plan_sketch_step, run_sketch_plan  # noqa: E402


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=None)
    ap.add_argument("--T", type=int, default=32768)
    ap.add_argument("--B", type=int, default=4)
    a = ap.parse_args(argv)
    from torch.nn.attention import SDPBackend, sdpa_kernel
    dev, dt, H, D, S, Kc = "cuda", torch.bfloat16, 32, 128, 64, 256
    B, T = a.B, a.T
    gen = torch.Generator(device=dev).manual_seed(0)
    K = torch.randn(B, H, T, D, device=dev, dtype=dt, generator=gen)
    V = torch.randn(B, H, T, D, device=dev, dtype=dt, generator=gen)
    q = torch.randn(B, H, D, device=dev, dtype=dt, generator=gen)
    scale = 1 / math.sqrt(D)

    def dense():
        with sdpa_kernel([SDPBackend.FLASH_ATTENTION]):
            return sdpa_decode(q, K, V, scale)
    dense_ms = bench(dense, cuda=True)
    t0 = time.time()
    cache, ids = TorchPagedKVCache.from_dense([K[b].transpose(0, 1) for b in range(B)],
                                              [V[b].transpose(0, 1) for b in range(B)], S, shuffle_seed=0,
                                              dtype=dt, device=dev)
    build_s = time.time() - t0
    rows = []
    for bits in (4, 8):
        t0 = time.time()
        attach_sketch(cache, bits)
        torch.cuda.synchronize()
        sketch_s = time.time() - t0
        for one_sided in (True, False):
            eager = bench(lambda: fused_paged_sketch_step(q, cache, ids, Kc, bits=bits, one_sided=one_sided), cuda=True)
            t0 = time.perf_counter()
            plan = plan_sketch_step(cache, ids, H, Kc, bits=bits, one_sided=one_sided, max_tokens=T)
            plan_ms = 1e3 * (time.perf_counter() - t0)
            planned = bench(lambda: run_sketch_plan(plan, q), cuda=True)
            holder = {}

            def step():
                holder["r"] = run_sketch_plan(plan, q)
            replay = graph_of(step, cuda=True)
            graph_ms = bench(replay, cuda=True)
            replay()
            torch.cuda.synchronize()
            r = holder["r"]                                  # the graph's output buffers, as replayed
            ref = fused_paged_sketch_step(q, cache, ids, Kc, bits=bits, one_sided=one_sided)
            same = bool(torch.equal(r.candidates, ref.candidates)) if not bool(r.overflow.any()) else None
            row = dict(T=T, B=B, H=H, D=D, page=S, Kc=Kc, bits=bits, one_sided=one_sided, dense_flash_ms=dense_ms,
                       paged_eager_ms=eager, speedup_eager=dense_ms / eager, plan_ms=plan_ms,
                       planned_eager_ms=planned, paged_graph_ms=graph_ms, speedup_graph=dense_ms / graph_ms,
                       graph_candidates_equal_eager=same, overflow_rows=int(r.overflow.sum()),
                       sketch_build_s=sketch_s, cache_build_s=build_s)
            rows.append(row)
            print(json.dumps(row), flush=True)
    meta = dict(date=time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), torch=torch.__version__,
                device=torch.cuda.get_device_name())
    if a.out:
        with open(a.out, "w") as f:
            json.dump(dict(meta=meta, rows=rows), f, indent=1)


if __name__ == "__main__":
    main()
