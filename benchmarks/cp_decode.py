"""Context-parallel certified decode (issue 17): one attention layer's decode step with the sequence
sharded over R GPUs, against dense context-parallel decode under the same sharding.

Shape: Llama-3.1-8B's KV layout per layer — 32 query heads, 8 KV heads, head dim 128, bf16 K/V
(4 KiB per token per layer) — N ∈ {1M, 2M, 4M} tokens per sequence, batch 1 and 4, R ∈ {2, 4, 8}
GPUs; each rank holds N/R tokens of every sequence (page size 16 = the sketch's quantization group,
int4 two-sided sketch, Kc = 256 per rank: ``selection="local"``, docs/CONTEXT_PARALLEL.md §4).

Per configuration and rank, with a barrier before each of ``--iters`` steps and CUDA events between
the step's parts:

* certified: local part (``fused_terms.fused_shard_state``: scan, threshold top-Kc, rescoring,
  Z̄_out — captured in a CUDA graph, replayed), the collective (one ``all_gather`` of the packed
  (B, 32, 138) float64 state, eager, into a fixed buffer), the tail (merge + certificate, graph);
* dense: local part (flash attention over the rank's contiguous shard with its log-sum-exp, graph
  replay; its log-sum-exp is checked against float64 once at start), the same collective of
  (B, 32, 130), the merge (graph);
* ``collective_alone``: the all_gather of the certified state without a step around it (latency
  without waiting for a slower rank).

Reported (JSON, rank 0): medians over iterations of each part, the step (max over ranks of the
median total), the collective's share of the step, weak-scaling efficiency t₁(N/R) / t_R(N) against
the single-GPU planned step (``sketch_plan.run_sketch_plan``, R = 1, also graph-replayed) at N/R
tokens, dense/certified speedup, and the issue's targets: step(4 GPUs, 4M) ≤ 1.2 × single GPU at 1M,
≥ 3× faster than dense CP at 4M, collective ≤ 15 % of the step. Random keys and values: the step's
cost does not depend on them (the sketch's soundness is tested in tests/test_distributed.py and
tests/test_sketch_plan.py); the certificates' medians are reported for completeness only.

NCCL with NVLink multicast (NVLS) off: ``NCCL_NVLS_ENABLE=0`` is set before any process starts.

Usage (an 8-GPU host; each world size is its own spawn; configurations that do not fit are skipped)::

    PYTHONPATH=. python benchmarks/cp_decode.py --out cp_decode.json
    PYTHONPATH=. python benchmarks/cp_decode.py --gpus 2 --tokens 1M --batch 1 --iters 10   # quick
    for g in 1 2 4 8; do PYTHONPATH=. python benchmarks/cp_decode.py --gpus $g --tokens 1M 2M 4M --out cp$g.json; done
    PYTHONPATH=. python benchmarks/cp_decode.py --combine cp1.json cp2.json cp4.json cp8.json  # weak scaling, targets
    PYTHONPATH=. TRITON_INTERPRET=1 python benchmarks/cp_decode.py --smoke                # CPU, gloo, tiny
"""
from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import tempfile
import time

os.environ["NCCL_NVLS_ENABLE"] = "0"          # before torch / NCCL read it, inherited by the workers

import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402
import torch.multiprocessing as mp  # noqa: E402

from vashista_gpu.cuda_graph import capture  # noqa: E402
from vashista_gpu.distributed.fallback import dense_partial  # noqa: E402
from vashista_gpu.distributed.fused_terms import fused_shard_state  # noqa: E402
from vashista_gpu.distributed.merge import all_gather_states, certificate, merge, merge_softmax  # noqa: E402
from vashista_gpu.paged_cache import TorchPagedKVCache  # noqa: E402
from vashista_gpu.sketch import attach_sketch  # noqa: E402
from vashista_gpu.sketch_plan import plan_sketch_step, run_sketch_plan  # noqa: E402

SHAPE_8B = (32, 8, 128)                        # query heads, KV heads, head dim
PAGE, BITS = 16, 4
FILL_CHUNK = 1 << 16


def parse_tokens(s: str) -> int:
    s = s.strip().upper()
    mult = {"K": 1 << 10, "M": 1 << 20}.get(s[-1], 1)
    return int(float(s[:-1] if s[-1] in "KM" else s) * mult)


class Clock:
    """Marks between the parts of a step: CUDA events on a GPU, perf_counter on a CPU."""

    def __init__(self, cuda: bool):
        self.cuda = cuda

    def mark(self):
        if self.cuda:
            e = torch.cuda.Event(enable_timing=True)
            e.record()
            return e
        return time.perf_counter()

    def ms(self, a, b) -> float:
        return a.elapsed_time(b) if self.cuda else 1e3 * (b - a)


def run_parts(parts, iters: int, warmup: int, cuda: bool, barrier: bool = True):
    """Per part, the list of per-iteration milliseconds; a barrier before every iteration so the ranks
    start each step together (per-step latency, as in decoding)."""
    clock = Clock(cuda)
    for _ in range(warmup):
        for p in parts:
            p()
    marks = []
    for _ in range(iters):
        if barrier:
            dist.barrier()
        m = [clock.mark()]
        for p in parts:
            p()
            m.append(clock.mark())
        marks.append(m)
    if cuda:
        torch.cuda.synchronize()
    return [[clock.ms(m[i], m[i + 1]) for m in marks] for i in range(len(parts))]


def fill_cache(B: int, T: int, dev, gen, dtype, HKV: int, D: int):
    """A paged cache with B sequences of T random tokens each, the int4 sketch kept current."""
    pages = -(-T // PAGE)
    cache = TorchPagedKVCache(PAGE, HKV, D, num_pages=B * pages + B, max_seqs=B, max_pages_per_seq=pages + 1,
                              dtype=dtype, device=dev)
    attach_sketch(cache, BITS)
    for b in range(B):
        cache.add_sequence(b)
        for t0 in range(0, T, FILL_CHUNK):
            n = min(FILL_CHUNK, T - t0)
            cache.append(b, torch.randn(n, HKV, D, device=dev, generator=gen, dtype=dtype),
                         torch.randn(n, HKV, D, device=dev, generator=gen, dtype=dtype))
    return cache


def graph(fn, cuda: bool):
    """``fn`` captured in a CUDA graph (its replay); on a CPU ``fn`` itself. Either way ``fn`` has run
    (its outputs exist for the next part to read)."""
    if not cuda:
        fn()
        return fn
    return capture(fn)


def med(xs):
    return float(statistics.median(xs))


def _collective_and_tail(h, tail_fn, cuda):
    """The collective into a fixed buffer, and the tail reading it (graph-captured on a GPU)."""
    buf = all_gather_states(h["p"])                    # allocates the buffer once (and warms up)
    coll = lambda: all_gather_states(h["p"], out=buf)  # noqa: E731
    tail = graph(lambda: tail_fn(buf), cuda)
    return coll, tail


def certified_parts(cache, B, q, Kc, one_sided, cuda):
    plan = plan_sketch_step(cache, list(range(B)), q.shape[1], Kc, bits=BITS, one_sided=one_sided)
    h = {}
    local = graph(lambda: h.update(p=fused_shard_state(plan, q)), cuda)
    coll, tail = _collective_and_tail(h, lambda g: h.update(r=certificate(merge(g))), cuda)
    return [local, coll, tail], h


def dense_parts(K, V, q, scale, cuda):
    h = {}
    local = graph(lambda: h.update(p=dense_partial(q, K, V, scale)), cuda)

    def finish(g):
        _, l, o = merge_softmax(g[..., 0], g[..., 1], g[..., 2:])
        h["out"] = o / l[..., None]
    coll, tail = _collective_and_tail(h, finish, cuda)
    return [local, coll, tail], h


def check_flash_partial(dev, HQ, HKV, D):
    """The flash kernel's log-sum-exp is the natural-log partial state m (l = 1): checked once against
    the float64 path on a small shard before anything is timed."""
    g = torch.Generator(device=dev).manual_seed(3)
    q = torch.randn(1, HQ, D, device=dev, generator=g)
    K, V = (torch.randn(1, HKV, 4096, D, device=dev, generator=g, dtype=torch.bfloat16) for _ in range(2))
    a, b = dense_partial(q, K, V, D ** -0.5), dense_partial(q.double(), K.double(), V.double(), D ** -0.5)
    lse_a, lse_b = a[..., 0] + torch.log(a[..., 1]), b[..., 0] + torch.log(b[..., 1])
    oa, ob = a[..., 2:] / a[..., 1:2], b[..., 2:] / b[..., 1:2]
    if (lse_a - lse_b).abs().max() > 1e-2 or (oa - ob).norm() > 2e-2 * ob.norm():
        raise RuntimeError("the flash kernel's log-sum-exp does not match the float64 partial state: "
                           f"max |Δlse| = {(lse_a - lse_b).abs().max():.3g}")


def worker(rank: int, world: int, args, tmp: str) -> None:
    cuda = not args.smoke
    dev = torch.device("cuda", rank) if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(dev)
    backend = "nccl" if cuda else "gloo"
    kw = dict(device_id=dev) if cuda else {}
    dist.init_process_group(backend, init_method=f"file://{tmp}/rendezvous", rank=rank, world_size=world, **kw)
    dtype = torch.bfloat16 if cuda else torch.float32
    HQ, HKV, D = args.shape
    if cuda:
        check_flash_partial(dev, HQ, HKV, D)
    results = []
    for N in args.tokens:
        for B in args.batch:
            T = N // world
            gib = B * T * HKV * D * 2 * 2 * 1.35 / 2 ** 30        # K, V + sketch, summaries, scan buffers
            row = dict(world=world, tokens=N, batch=B, tokens_per_rank=T, Kc=args.kc)
            if cuda and gib > args.max_gib:
                row["skipped"] = f"needs ~{gib:.0f} GiB per GPU > --max-gib {args.max_gib}"
                results.append(row)
                continue
            gen = torch.Generator(device=dev).manual_seed(1000 + rank)
            qgen = torch.Generator(device=dev).manual_seed(7)          # the same q on every rank
            q = torch.randn(B, HQ, D, device=dev, generator=qgen)
            scale = 1 / math.sqrt(D)
            # dense context parallel: contiguous (B, Hkv, T, D) shard, flash with its log-sum-exp
            K = torch.randn(B, HKV, T, D, device=dev, generator=gen, dtype=dtype)
            V = torch.randn(B, HKV, T, D, device=dev, generator=gen, dtype=dtype)
            parts, _ = dense_parts(K, V, q, scale, cuda)
            dense = run_parts(parts, args.iters, args.warmup, cuda)
            del K, V, parts
            # certified context parallel on the paged cache
            cache = fill_cache(B, T, dev, gen, dtype, HKV, D)
            parts, h = certified_parts(cache, B, q, args.kc, args.one_sided, cuda)
            cert = run_parts(parts, args.iters, args.warmup, cuda)
            r = h["r"]
            alone = run_parts([parts[1]], args.iters, args.warmup, cuda)[0]
            single = None
            if world == 1:          # the single-GPU planned step itself (no collective), graph replay
                plan = plan_sketch_step(cache, list(range(B)), HQ, args.kc, bits=BITS, one_sided=args.one_sided)
                s = graph(lambda: run_sketch_plan(plan, q), cuda)
                single = med(run_parts([s], args.iters, args.warmup, cuda, barrier=False)[0])
            row.update(
                cert_parts_ms=[med(p) for p in cert], cert_step_ms=med([sum(x) for x in zip(*cert)]),
                dense_parts_ms=[med(p) for p in dense], dense_step_ms=med([sum(x) for x in zip(*dense)]),
                collective_alone_ms=med(alone), single_gpu_step_ms=single,
                certified_error_median=float(r.certified_error.median()),
                leakage_median=float(r.certified_leakage.median()))
            results.append(row)
            del cache, parts, h, r
            if cuda:
                torch.cuda.empty_cache()
    gathered = [None] * world
    dist.all_gather_object(gathered, results)
    if rank == 0:
        merged = []
        for i, row in enumerate(results):
            rows = [g[i] for g in gathered]
            if "skipped" not in row:
                for k in ("cert_step_ms", "dense_step_ms"):
                    row[k] = max(x[k] for x in rows)                  # the slowest rank's median
                row["per_rank_cert_step_ms"] = [x["cert_step_ms"] for x in rows]
                row["collective_share"] = max(x["cert_parts_ms"][1] for x in rows) / row["cert_step_ms"]
                row["dense_over_certified"] = row["dense_step_ms"] / row["cert_step_ms"]
            merged.append(row)
        with open(os.path.join(tmp, "results.json"), "w") as f:
            json.dump(merged, f)
    dist.destroy_process_group()


def summarise(rows):
    """Weak-scaling efficiency t₁(N/R) / t_R(N) and the issue's three targets."""
    single = {(r["tokens"], r["batch"]): r["single_gpu_step_ms"] for r in rows
              if r["world"] == 1 and "skipped" not in r}
    for r in rows:
        if "skipped" in r or r["world"] == 1:
            continue
        t1 = single.get((r["tokens_per_rank"], r["batch"]))
        r["weak_scaling_efficiency"] = None if t1 is None else t1 / r["cert_step_ms"]
    targets = {}
    for B in sorted({r["batch"] for r in rows if "batch" in r}):
        four = [r for r in rows if r["world"] == 4 and r["tokens"] == 4 << 20 and r["batch"] == B and "skipped" not in r]
        one = single.get((1 << 20, B))
        if four:
            f = four[0]
            targets[f"batch{B}"] = dict(
                step_4gpu_4M_over_1gpu_1M=None if one is None else f["cert_step_ms"] / one,
                target_step_ratio=1.2, dense_over_certified_4M=f["dense_over_certified"], target_speedup=3.0,
                collective_share=f["collective_share"], target_collective_share=0.15)
    return targets


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--gpus", type=int, nargs="+", default=[1, 2, 4, 8])
    ap.add_argument("--tokens", nargs="+", default=["1M", "2M", "4M"], help="tokens per sequence (whole)")
    ap.add_argument("--batch", type=int, nargs="+", default=[1, 4])
    ap.add_argument("--kc", type=int, default=256)
    ap.add_argument("--one-sided", action="store_true", help="one-sided sketch bounds (default two-sided)")
    ap.add_argument("--iters", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--max-gib", type=float, default=70.0, help="skip configurations needing more per GPU")
    ap.add_argument("--smoke", action="store_true",
                    help="CPU, gloo, tiny sizes and shape (2 query heads, 1 KV head, D = 32; TRITON_INTERPRET=1)")
    ap.add_argument("--out", default=None)
    ap.add_argument("--combine", nargs="+", metavar="JSON",
                    help="no run: the rows of earlier --out files (e.g. one per --gpus, each within the device's "
                         "per-command limit) summarised together")
    args = ap.parse_args(argv)
    if args.combine:
        rows = [r for f in args.combine for r in json.load(open(f))["rows"]]
        text = json.dumps(dict(rows=rows, targets=summarise(rows)), indent=1)
        if args.out:
            with open(args.out, "w") as f:
                f.write(text)
        print(text)
        return
    args.shape = SHAPE_8B
    if args.smoke:
        args.gpus, args.tokens, args.batch, args.kc, args.iters, args.warmup = [1, 2], ["128"], [1], 8, 2, 1
        args.shape = (2, 1, 32)
    args.tokens = [parse_tokens(t) for t in args.tokens]
    rows = []
    for world in args.gpus:
        if not args.smoke and world > torch.cuda.device_count():
            rows.append(dict(world=world, skipped=f"only {torch.cuda.device_count()} GPUs"))
            continue
        a = argparse.Namespace(**vars(args))
        if world == 1:       # the single-GPU references at every per-GPU size of 2, 4 and 8 GPUs
            a.tokens = sorted({N // w for N in args.tokens for w in (1, 2, 4, 8)})
        with tempfile.TemporaryDirectory() as tmp:
            mp.spawn(worker, args=(world, a, tmp), nprocs=world, join=True)
            with open(os.path.join(tmp, "results.json")) as f:
                rows.extend(json.load(f))
    report = dict(device=torch.cuda.get_device_name(0) if torch.cuda.is_available() and not args.smoke else "cpu",
                  nccl_nvls_enable=os.environ["NCCL_NVLS_ENABLE"], torch=torch.__version__, rows=rows,
                  targets=summarise(rows))
    text = json.dumps(report, indent=1)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text)
    print(text)


if __name__ == "__main__":
    sys.exit(main())
