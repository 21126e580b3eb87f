"""The one timing harness of ``vashista repro`` and the benchmarks (``benchmarks/*.py``).

``bench(fn, cuda=...)`` is the median time of one call of ``fn`` in milliseconds:

* on a GPU, ``triton.testing.do_bench`` — CUDA events around each call, 50 ms of warm-up, calls
  repeated for ``rep_ms`` ms, L2 flushed between calls — so host timer resolution and launch queues
  do not enter the number;
* on a CPU, one warm-up call and then the median of ``reps`` wall-clock calls (``time.perf_counter``).

``graph_of`` captures a step in a CUDA graph (timing the replay measures the device work of a step
planned once); ``copy_bandwidth`` measures the card's device-to-device copy rate, the roofline that
the benchmarks compare their bytes against.

Example:
    >>> from vashista_app.timing import bench
    >>> bench(lambda: sum(range(1000)), cuda=False) >= 0
    True
"""
from __future__ import annotations

import statistics
import time

__all__ = ["bench", "copy_bandwidth", "graph_of"]


def bench(fn, *, cuda: bool, reps: int = 3, rep_ms: int = 200) -> float:
    """Median milliseconds of ``fn()`` (see the module doc); ``reps`` counts the CPU repetitions,
    ``rep_ms`` the GPU measuring time."""
    if cuda:
        import triton.testing
        return float(triton.testing.do_bench(fn, warmup=50, rep=rep_ms, return_mode="median"))
    fn()
    ts = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t)
    return 1e3 * statistics.median(ts)


def copy_bandwidth(dev) -> float:
    """Measured device-to-device copy bandwidth (bytes read + written per second)."""
    import torch
    n = 2 ** 30                                              # 2 GiB of bf16
    a = torch.randn(n, device=dev, dtype=torch.bfloat16)
    b = torch.empty_like(a)
    ms = bench(lambda: b.copy_(a), cuda=True)
    del a, b
    return 2 * n * 2 / (ms * 1e-3)


def graph_of(fn, cuda: bool):
    """``fn`` captured in a CUDA graph (``vashista_gpu.cuda_graph.capture``); returns replay. On CPU: fn
    after one warm-up run."""
    if not cuda:
        fn()
        return fn
    from vashista_gpu.cuda_graph import capture
    return capture(fn)
