"""Soundness stress driver: draw cases, run tiers, compare with exact attention, count violations.

    python tests/stress/run.py --tier ref --query-heads 100000 [--seed0 0] [--json out.json]

(from the repository root, with the repository on PYTHONPATH). ``check_case`` is what the pytest
profiles (``test_stress.py``) call. A violation is a (batch row, query head) whose certified error is
below ‖out − o_exact‖, whose certified leakage is below the exact leakage, or whose certificate is NaN;
it is printed with its (kind, seed, tier), which reproduce it (``generators.draw``).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from generators import KINDS, draw  # noqa: E402
from tiers import TIERS, Unsupported  # noqa: E402
from truth import ExactHead  # noqa: E402
from vashista_core.errors import VashistaInputError  # noqa: E402

try:                                    # the GPU helper's tiers, where present
    import tiers_gpu  # noqa: E402,F401
except ImportError:
    pass


def check_case(case, tier: str) -> dict:
    """Run ``tier`` on ``case``; return counts and the violations found (list of dicts)."""
    r = TIERS[tier](case)
    B, Hq, _ = case.q.shape
    Hkv = case.keys[0].shape[1]
    G = Hq // Hkv
    viol, finite_err = [], 0
    for b in range(B):
        for h in range(Hq):
            ce, cl = float(r.certified_error[b, h]), float(r.certified_leakage[b, h])
            where = dict(tier=tier, kind=case.kind, seed=case.seed, b=b, h=h)
            if math.isnan(ce) or math.isnan(cl) or ce < 0 or cl < 0:
                viol.append(dict(where, what="NaN or negative certificate", error=ce, leakage=cl))
                continue
            finite_err += math.isfinite(ce)
            truth = ExactHead(case.q[b, h], case.keys[b][:, h // G], case.values[b][:, h // G], case.scale)
            err = truth.error_lower(r.out[b, h])           # lower bounds: a violation is certain
            if ce < err:
                viol.append(dict(where, what="error", certified=ce, true=err))
            if r.candidates is not None:
                leak = truth.leakage_lower(r.candidates[b][h])
                if cl < leak:
                    viol.append(dict(where, what="leakage", certified=cl, true=leak))
    return dict(query_heads=B * Hq, finite=finite_err, violations=viol)


def run(tier: str, query_heads: int, seed0: int = 0, kinds=KINDS, log=print) -> dict:
    """Cases of every kind in turn (seeds seed0, seed0 + 1, …) until ``query_heads`` are checked."""
    total = dict(query_heads=0, finite=0, cases=0, unsupported=0, refused={}, violations=[],
                 per_kind={k: 0 for k in kinds})
    seed, t0 = seed0, time.time()
    while total["query_heads"] < query_heads:
        for kind in kinds:
            case = draw(kind, seed)
            try:
                c = check_case(case, tier)
            except Unsupported:
                total["unsupported"] += 1
                continue
            except VashistaInputError as exc:      # a clear refusal (e.g. keys beyond fp16 metadata)
                reason = str(exc)[:70]
                total["refused"][reason] = total["refused"].get(reason, 0) + 1
                continue
            total["cases"] += 1
            total["query_heads"] += c["query_heads"]
            total["finite"] += c["finite"]
            total["per_kind"][kind] += c["query_heads"]
            for v in c["violations"]:
                log(f"VIOLATION {v}  [{case.describe()}]")
            total["violations"] += c["violations"]
        seed += 1
        if total["query_heads"] == 0 and seed - seed0 >= 50:
            # every case refused or unsupported (a tier that cannot run here): fail, never loop forever
            raise RuntimeError(f"{tier}: no case ran in seeds {seed0}..{seed}: refused {total['refused']}, "
                               f"unsupported {total['unsupported']}")
        if seed % 200 == 0:
            log(f"{tier}: {total['query_heads']} query-heads, {len(total['violations'])} violations, "
                f"{time.time() - t0:.0f} s")
    total["seconds"] = round(time.time() - t0, 1)
    total["seeds"] = [seed0, seed]
    return total


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--tier", default="ref", choices=sorted(TIERS))
    p.add_argument("--query-heads", type=int, default=100_000)
    p.add_argument("--seed0", type=int, default=0)
    p.add_argument("--json", default=None, help="write the totals here")
    a = p.parse_args(argv)
    np.seterr(all="ignore")
    total = run(a.tier, a.query_heads, a.seed0, log=lambda s: print(s, flush=True))
    print(json.dumps({k: v for k, v in total.items() if k != "violations"}), flush=True)
    print(f"violations: {len(total['violations'])}", flush=True)
    if a.json:
        with open(a.json, "w") as f:
            json.dump(total, f, indent=1)
    return 1 if total["violations"] else 0


if __name__ == "__main__":
    sys.exit(main())
