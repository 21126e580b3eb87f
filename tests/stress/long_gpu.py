"""The long GPU-tier stress profile, in parallel worker processes and within a time budget:

    python tests/stress/long_gpu.py --tiers gpu-torch-fp32,gpu-triton-bf16 --workers 3 --seconds 200 \
        --json out.json

Each tier gets ``workers`` processes; worker w of a tier checks the cases of seeds seed0 + w,
seed0 + w + workers, … (every kind in turn, ``generators.draw``) until its time is up, so the seeds
checked are disjoint and reproducible ((kind, seed) reproduces a violation). Runs that are to be added
up (several device calls) take disjoint ``--seed0`` ranges; each tier's JSON names the seeds it
reached. The totals per tier — query-heads, cases, refused, violations — are printed and written to
``--json`` (benchmarks/RESULTS.md, "Soundness stress").
"""
from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))


def _worker(tier: str, w: int, workers: int, deadline: float, q, seed0: int = 0) -> None:
    """Always reports (a crash is reported as an error, so the parent never waits forever)."""
    try:
        _work(tier, w, workers, deadline, q, seed0)
    except BaseException as exc:                    # noqa: BLE001
        q.put((tier, dict(query_heads=0, cases=0, refused=0, unsupported=0, seeds=[seed0 + w, seed0 + w],
                          violations=[dict(tier=tier, what=f"worker crashed: {exc!r}")])))


def _work(tier: str, w: int, workers: int, deadline: float, q, seed0: int = 0) -> None:
    import numpy as np

    import tiers_cp  # the context-parallel tiers, cp-* (tiers_cp.py)
    import tiers_gpu_steps
    from generators import KINDS, draw
    from run import check_case
    from tiers import Unsupported
    from vashista_core.errors import VashistaInputError
    np.seterr(all="ignore")
    if tier.startswith(("gpu-triton", "gpu-plan")):
        tiers_gpu_steps.register_triton()
    if tier.startswith("cp-fused"):
        tiers_cp.register_fused()
    seed = seed0 + w
    tot = dict(query_heads=0, cases=0, refused=0, unsupported=0, violations=[], seeds=[seed, seed])
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


COUNTS = ("query_heads", "cases", "refused", "unsupported")


def _add(totals: dict, tier: str, t: dict, **first) -> dict:
    """Add one worker's or one run's counts ``t`` to ``totals[tier]`` (created with ``first``)."""
    s = totals.setdefault(tier, dict(dict.fromkeys(COUNTS, 0), violations=[], **first))
    for k in COUNTS:
        s[k] += t[k]
    s["violations"] += t["violations"]
    return s


def _report(totals: dict, path: str | None) -> int:
    """Print the totals (and the first violations) per tier, write them to ``path``; 1 if any violation."""
    for tier, s in sorted(totals.items()):
        runs = f" ({s['runs']} runs)" if "runs" in s else ""
        print(f"{tier}: {s['query_heads']} query-heads, {s['cases']} cases, {s['refused']} refused, "
              f"{len(s['violations'])} violations{runs}", flush=True)
        for v in s["violations"][:5]:
            print("  VIOLATION", v, flush=True)
    if path:
        with open(path, "w") as f:
            json.dump(totals, f, indent=1)
    return 1 if any(s["violations"] for s in totals.values()) else 0


def add_up(paths: list) -> dict:
    """Per-tier totals of several ``--json`` files (runs with disjoint ``--seed0`` ranges)."""
    totals: dict = {}
    for path in paths:
        with open(path) as f:
            for tier, t in json.load(f).items():
                s = _add(totals, tier, t, runs=0, seed_ranges=[])
                s["runs"] += 1
                if "seed_min" in t:
                    s["seed_ranges"].append([t["seed_min"], t["seed_max"]])
    return totals


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sum", nargs="+", metavar="JSON", help="only add up the totals of earlier --json files")
    p.add_argument("--tiers")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--seconds", type=float, default=120.0)
    p.add_argument("--json", default=None)
    p.add_argument("--seed0", type=int, default=0, help="first seed (disjoint ranges for runs to be added up)")
    a = p.parse_args(argv)
    if a.sum:
        return _report(add_up(a.sum), a.json)
    if not a.tiers:
        p.error("--tiers is required (or --sum)")
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    deadline = time.time() + a.seconds
    procs = [ctx.Process(target=_worker, args=(t, w, a.workers, deadline, q, a.seed0))
             for t in a.tiers.split(",") for w in range(a.workers)]
    for pr in procs:
        pr.start()
    totals: dict = {}
    for _ in procs:
        tier, t = q.get()
        s = _add(totals, tier, t, workers=0, seed_min=t["seeds"][0], seed_max=t["seeds"][1])
        s["seed_min"], s["seed_max"] = min(s["seed_min"], t["seeds"][0]), max(s["seed_max"], t["seeds"][1])
        s["workers"] += 1
    for pr in procs:
        pr.join()
    return _report(totals, a.json)


if __name__ == "__main__":
    sys.exit(main())
