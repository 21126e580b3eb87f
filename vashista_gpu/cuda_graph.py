"""Capture a decode step in a CUDA graph: the planned steps (``plan.plan_decode`` + ``decode.run_plan``,
``sketch_plan.plan_sketch_step`` + ``run_sketch_plan``) issue only device work with static shapes, so
a decode loop can capture one step and replay it while the cache grows (within the plan's sizes).

    >>> # on a CUDA device:
    >>> # holder = {}
    >>> # replay = capture(lambda: holder.update(r=run_sketch_plan(plan, q)))
    >>> # ... append to the cache, write the next query into q ...
    >>> # replay(); holder["r"].out
"""
from __future__ import annotations

import torch

__all__ = ["capture"]


def capture(fn):
    """Run ``fn`` once (compiles its kernels), once more on a side stream (the allocator's warm-up
    that capture requires), then capture it; returns the graph's ``replay``. The outputs ``fn``
    writes during capture are the buffers every replay overwrites."""
    fn()
    torch.cuda.synchronize()
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        fn()
    torch.cuda.current_stream().wait_stream(s)
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        fn()
    return g.replay
