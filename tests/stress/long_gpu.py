"""The long GPU-tier stress profile, in parallel worker processes and within a time budget:

    python tests/stress/long_gpu.py --tiers gpu-torch-fp32,gpu-triton-bf16 --workers 3 --seconds 200 \
        --json out.json

Each tier gets ``workers`` processes; worker w of a tier checks the cases of seeds w, w + workers, …
(every kind in turn, ``generators.draw``) until its time is up, so the seeds checked are disjoint and
reproducible ((kind, seed) reproduces a violation). The totals per tier — query-heads, cases, refused,
violations — are printed and written to ``--json`` (benchmarks/RESULTS.md, "Soundness stress").
"""
from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))


def _worker(tier: str, w: int, workers: int, deadline: float, q) -> None:
    """Always reports (a crash is reported as an error, so the parent never waits forever)."""
    try:
        _work(tier, w, workers, deadline, q)
    except BaseException as exc:                    # noqa: BLE001
        q.put((tier, dict(query_heads=0, cases=0, refused=0, unsupported=0, seeds=[w, w],
                          violations=[dict(tier=tier, what=f"worker crashed: {exc!r}")])))


def _work(tier: str, w: int, workers: int, deadline: float, q) -> None:
    import numpy as np

    import tiers_cp  # the context-parallel tiers, cp-* (tiers_cp.py)
    import tiers_gpu_steps
    from generators import KINDS, draw
    from run import check_case
    from tiers import Unsupported
    from vashista_core.errors import VashistaInputError
    np.seterr(all="ignore")
    if tier.startswith("gpu-triton"):
        tiers_gpu_steps.register_triton()
    if tier.startswith("cp-fused"):
        tiers_cp.register_fused()
    tot = dict(query_heads=0, cases=0, refused=0, unsupported=0, violations=[], seeds=[w, w])
    seed = w
    while time.time() < deadline:
        for kind in KINDS:
            if time.time() >= deadline:
                break
            try:
                c = check_case(draw(kind, seed), tier)
            except Unsupported:
                tot["unsupported"] += 1
                continue
            except VashistaInputError:
                tot["refused"] += 1
                continue
            tot["cases"] += 1
            tot["query_heads"] += c["query_heads"]
            tot["violations"] += c["violations"]
        tot["seeds"][1] = seed
        seed += workers
    q.put((tier, tot))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--tiers", required=True)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--seconds", type=float, default=120.0)
    p.add_argument("--json", default=None)
    a = p.parse_args(argv)
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    deadline = time.time() + a.seconds
    procs = [ctx.Process(target=_worker, args=(t, w, a.workers, deadline, q))
             for t in a.tiers.split(",") for w in range(a.workers)]
    for pr in procs:
        pr.start()
    totals: dict = {}
    for _ in procs:
        tier, t = q.get()
        s = totals.setdefault(tier, dict(query_heads=0, cases=0, refused=0, unsupported=0, violations=[], workers=0))
        for k in ("query_heads", "cases", "refused", "unsupported"):
            s[k] += t[k]
        s["violations"] += t["violations"]
        s["workers"] += 1
    for pr in procs:
        pr.join()
    for tier, s in totals.items():
        print(f"{tier}: {s['query_heads']} query-heads, {s['cases']} cases, {s['refused']} refused, "
              f"{len(s['violations'])} violations", flush=True)
        for v in s["violations"][:5]:
            print("  VIOLATION", v, flush=True)
    if a.json:
        with open(a.json, "w") as f:
            json.dump(totals, f, indent=1)
    return 1 if any(s["violations"] for s in totals.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
