"""Device work items of ONE engine decode step, per layer and phase, counted on CPU (no GPU needed).

Why: on an H100 the certified engine is launch-bound (``results/e2e_h100/profile/profile.txt``: 5,345
kernels per token for the 16-layer 1B shape, ≈ 334 per layer, against ~58 for dense mode). Launches
do not depend on the device, so they can be counted — and the fusion work measured — without one.

What is counted, for one decode step of the real engine path (``vashista_gpu.engine.Engine.step`` on
the *planned* path, the one CUDA graphs capture: device appends, ``run_sketch_plan`` /
``run_plan`` / the paged dense kernel, device policies, ``StepStats``):

* **aten ops** dispatched, by a ``TorchDispatchMode`` below autograd — each one is (at least) one
  kernel launch on CUDA. Metadata-only ops are not counted: views and aliases (every op whose schema
  returns an alias: view, as_strided, _unsafe_view, expand, permute, select, slice, detach, alias, …)
  and bare allocations (empty, empty_strided), which launch nothing; and ``scalar_tensor`` (a Python
  scalar operand, wrapped as a 0-d CPU tensor that the CUDA kernel reads as an argument);
* **Triton launches**: every ``InterpretedFunction.run`` under ``TRITON_INTERPRET=1`` (the torch ops
  the interpreter itself issues to move arguments are not counted).

Each item goes to the innermost *phase* active when it was issued. Phases are set by wrapping the
engine's functions for the duration of the count (nothing in the library is changed):
``append`` (``TorchPagedKVCache.append_step_device``; sub-phases ``append.summary`` — the page
summary/value norms — and ``append.sketch`` — the page requantization), ``step`` (the mode's step;
sub-phases ``step.scan``, ``step.select``, ``step.rescore``, ``step.certificate``, ``step.row_vmax``),
``policy`` (device DenseFallback/Capped), ``stats`` (``StepStats.add``), and ``model`` for the rest
(embedding, projections, RoPE, MLP, LM head, argmax, the engine's token bookkeeping). Per-layer
numbers are the phase totals divided by the number of layers (``model`` includes the once-per-step
head and embedding).

Order of magnitude check against the H100 profile: some aten ops are several kernels (topk, sort,
matmuls with split-K, index_put with accumulate) and a few are none, so the aten+Triton count is
close to, not equal to, the profiler's kernel count.

    TRITON_INTERPRET=1 PYTHONPATH=. python benchmarks/launch_count.py                 # certified int4
    TRITON_INTERPRET=1 PYTHONPATH=. python benchmarks/launch_count.py --mode paged --json out.json
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
from collections import Counter, defaultdict

os.environ.setdefault("TRITON_INTERPRET", "1")      # before triton is imported: CPU launches

import torch
from torch.utils._python_dispatch import TorchDispatchMode

# allocations and pure metadata ops: no kernel on a device
_NO_KERNEL = {"empty", "empty_strided", "empty_like", "new_empty", "new_empty_strided", "lift_fresh",
              "detach", "alias", "_unsafe_view", "view", "as_strided", "_reshape_alias", "set_", "resize_",
              "_has_compatible_shallow_copy_type", "is_same_size", "sym_size", "sym_stride", "sym_numel",
              # a Python scalar operand wrapped as a 0-d CPU tensor: read by the kernel, no launch
              "scalar_tensor"}


def _is_metadata(func) -> bool:
    name = func.overloadpacket.__name__
    if name in _NO_KERNEL:
        return True
    try:
        return bool(func.is_view)            # returns an alias of an input (view, select, expand, …)
    except AttributeError:                   # pragma: no cover - older torch
        return any(r.alias_info is not None and not r.alias_info.is_write for r in func._schema.returns)


class LaunchCounter(TorchDispatchMode):
    """Counts aten ops and Triton launches by phase (module doc)."""

    def __init__(self):
        super().__init__()
        self.aten: dict = defaultdict(Counter)        # phase -> op name -> count
        self.triton: dict = defaultdict(Counter)      # phase -> kernel name -> count
        self.stack = ["model"]
        self.in_triton = 0

    @property
    def phase(self) -> str:
        return self.stack[-1]

    @contextlib.contextmanager
    def in_phase(self, name: str):
        self.stack.append(name)
        try:
            yield
        finally:
            self.stack.pop()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if not self.in_triton and not _is_metadata(func):
            self.aten[self.phase][func.overloadpacket.__name__] += 1
        return func(*args, **(kwargs or {}))


def _wrap(counter, owner, attr, phase, patches):
    fn = getattr(owner, attr)

    def wrapped(*a, **k):
        with counter.in_phase(phase):
            return fn(*a, **k)
    patches.append((owner, attr, fn))
    setattr(owner, attr, wrapped)


@contextlib.contextmanager
def phases(counter: LaunchCounter):
    """Wrap the engine's functions so that their work lands in their phase (module doc)."""
    import triton.runtime.interpreter as interp

    from vashista_gpu import certificate, sketch, sketch_plan, summaries
    from vashista_gpu import decode as decode_mod
    from vashista_gpu.engine import policy, step
    from vashista_gpu.kernels import paged_dense, rescore, sketch_scan
    from vashista_gpu.paged_cache import TorchPagedKVCache

    patches: list = []
    run = interp.InterpretedFunction.run

    def counted_run(self, *a, **k):
        if not counter.in_triton:
            counter.triton[counter.phase][getattr(self.fn, "__name__", str(self.fn))] += 1
        counter.in_triton += 1
        try:
            return run(self, *a, **k)
        finally:
            counter.in_triton -= 1
    patches.append((interp.InterpretedFunction, "run", run))
    interp.InterpretedFunction.run = counted_run
    table = [
        (TorchPagedKVCache, "append_step_device", "append"),
        (summaries, "update_page_summaries", "append.summary"),
        (sketch.TorchPageSketchStore, "update_pages", "append.sketch"),
        (sketch_plan, "run_sketch_plan", "step"),
        (decode_mod, "run_plan", "step"),
        (paged_dense, "cache_dense_decode", "step"),
        (sketch_scan, "paged_sketch_scan_bound", "step.scan"),
        (sketch_plan, "select_candidates", "step.select"),
        (rescore, "rescore_paged", "step.rescore"),
        (certificate, "fused_certificate", "step.certificate"),
        (sketch_plan, "row_vmax", "step.row_vmax"),
        (policy.DeviceDenseFallback, "__call__", "policy"),
        (policy.DeviceCapped, "__call__", "policy"),
        (step.StepStats, "add", "stats"),
    ]
    for owner, attr, ph in table:
        if owner.__dict__.get(attr) is not None or hasattr(owner, attr):
            _wrap(counter, owner, attr, ph, patches)
    try:
        yield
    finally:
        for owner, attr, fn in reversed(patches):
            setattr(owner, attr, fn)


def tiny_model(layers: int, heads: int, kv_heads: int, head_dim: int, seed: int = 0):
    """A random Llama with the 1B model's head dim (64) and GQA, small everywhere else."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=256, hidden_size=heads * head_dim, intermediate_size=256,
                      num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=kv_heads,
                      head_dim=head_dim, max_position_embeddings=4096)
    cfg._attn_implementation = "sdpa"
    return LlamaForCausalLM(cfg).eval()


def count_step(*, mode: str = "certified", bits: int = 4, layers: int = 2, heads: int = 8, kv_heads: int = 2,
               head_dim: int = 64, batch: int = 1, prompt: int = 200, budget: float = 1 / 16,
               policy: str = "report", seed: int = 0) -> dict:
    """Count one planned decode step (after one warm-up step) of a tiny random Llama; returns the
    counts per phase (totals, per layer, and per op / kernel)."""
    from vashista_core.policies import DenseFallback
    from vashista_gpu.engine import Engine

    model = tiny_model(layers, heads, kv_heads, head_dim, seed)
    # fallback: DenseFallback with nothing flagged (the policy's fixed cost); fallback-all: every head
    # flagged (tol 0), the 32k quality run's case — the same items on the host, the work is the device's
    pol = DenseFallback(1e30) if policy == "fallback" else DenseFallback(0.0) if policy == "fallback-all" else None
    g = torch.Generator().manual_seed(seed)
    prompts = [torch.randint(0, 256, (prompt - 3 * b,), generator=g).tolist() for b in range(batch)]
    eng = Engine(model, mode=mode, bits=bits, budget=budget, policy=pol, max_seqs=batch,
                 max_tokens=prompt + 16, graph=False)
    for p in eng.cache.pools:             # as on CUDA: the Triton page summary kernel
        p.backend = "triton"
    eng.runner.cfg.planned = True         # the device-only (graph) path, Triton kernels interpreted
    eng.runner.stats.fused = True         # as on CUDA: the statistics kernel
    with eng:
        seqs = eng.add(prompts, max_new_tokens=8)
        eng.plan_segment(seqs)
        with torch.no_grad():
            eng.step()                    # warm-up (first-use allocations)
            counter = LaunchCounter()
            with phases(counter), counter:
                eng.step()
    names = sorted(set(counter.aten) | set(counter.triton))
    per = {}
    for ph in names:
        a, t = sum(counter.aten[ph].values()), sum(counter.triton[ph].values())
        per[ph] = dict(aten=a, triton=t, total=a + t, ops=dict(counter.aten[ph].most_common()),
                       kernels=dict(counter.triton[ph]))
    # roll sub-phases into their parent phase
    top: dict = defaultdict(lambda: dict(aten=0, triton=0, total=0))
    for ph, c in per.items():
        for k in ("aten", "triton", "total"):
            top[ph.split(".")[0]][k] += c[k]
    total = sum(c["total"] for c in top.values())
    return dict(config=dict(mode=mode, bits=bits, layers=layers, heads=heads, kv_heads=kv_heads, head_dim=head_dim,
                            batch=batch, prompt=prompt, budget=budget, policy=policy, Kc=eng.runner.Kc,
                            torch=torch.__version__),
                total=total, per_layer_total=total / layers, phases=dict(top),
                per_layer={ph: c["total"] / layers for ph, c in top.items()},
                detail=per)


def table(res: dict) -> str:
    L = res["config"]["layers"]
    lines = ["| phase | aten / layer | Triton / layer | total / layer |", "|---|---|---|---|"]
    for ph, c in sorted(res["detail"].items()):
        lines.append(f"| {ph} | {c['aten'] / L:g} | {c['triton'] / L:g} | {c['total'] / L:g} |")
    lines.append(f"| **all** | | | **{res['per_layer_total']:g}** |")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--mode", default="certified", choices=("certified", "paged", "dense"))
    ap.add_argument("--bits", type=int, default=4)
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--prompt", type=int, default=200)
    ap.add_argument("--policy", default="report", choices=("report", "fallback", "fallback-all"))
    ap.add_argument("--json", default=None, help="write the full counts (per op and kernel) here")
    ap.add_argument("--ops", action="store_true", help="print the ops and kernels of every phase")
    a = ap.parse_args(argv)
    res = count_step(mode=a.mode, bits=a.bits, layers=a.layers, batch=a.batch, prompt=a.prompt, policy=a.policy)
    print(f"{a.mode} bits={a.bits} layers={a.layers} batch={a.batch} prompt={a.prompt} policy={a.policy} "
          f"Kc={res['config']['Kc']}: {res['total']} work items per step, {res['per_layer_total']:g} per layer")
    print(table(res))
    if a.ops:
        for ph, c in sorted(res["detail"].items()):
            print(f"[{ph}] aten {c['ops']}\n[{ph}] triton {c['kernels']}")
    if a.json:
        with open(a.json, "w") as f:
            json.dump(res, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
