"""Decode speed on the CPU (eager, the engine's host path): what a user without a GPU gets from
``vashista generate`` on the embedded SmolLM2-135M-Instruct (real weights, float32).

The prompt is the start of this repository's README, cut to ``--context`` tokens (the same for every
mode). Each mode decodes ``--new`` tokens through ``vashista_gpu.engine.generate`` (``graph=False``:
the CPU has no graphs), every decode step timed. Reported per mode: decode ms per
token and tokens/s (the best of ``--repeat`` runs), prefill seconds, the fallback rate, and the cache
bytes against the dense KV cache. Dense runs first and last, so a drift of the shared machine shows as
two different dense times.

    python benchmarks/cpu_decode.py --context 6000 --out benchmarks/results/cpu_decode/run.json
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from vashista_core.policies import DenseFallback  # noqa: E402
from vashista_gpu.engine import generate  # noqa: E402
from vashista_gpu.hf.model import load_default_model  # noqa: E402

MODES = {
    "dense": dict(mode="dense"),
    "cert-int4": dict(mode="certified", bits=4),
    "cert-int8": dict(mode="certified", bits=8),
    "cert-int8@1": dict(mode="certified", bits=8, policy=DenseFallback(1.0)),
    "paged": dict(mode="paged"),
    # compile=True (engine/compiled.py): the layers' norms, MLP and residual adds through torch.compile;
    # the first run's first step compiles, so take --repeat >= 2 (the best run is reported)
    "dense+compile": dict(mode="dense", compile=True),
    "cert-int8+compile": dict(mode="certified", bits=8, compile=True),
}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--context", type=int, default=6000, help="prompt tokens (default 6000)")
    ap.add_argument("--new", type=int, default=6, help="new tokens per run (default 6)")
    ap.add_argument("--repeat", type=int, default=2, help="runs per mode; the fastest is reported (default 2)")
    ap.add_argument("--budget", type=float, default=1 / 16)
    ap.add_argument("--modes", nargs="+", default=["dense", "cert-int4", "cert-int8", "cert-int8@1", "paged", "dense"],
                    choices=sorted(MODES))
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default=None, help="write the JSON here too")
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    model, tok = load_default_model(dtype=torch.float32, device=torch.device("cpu"))
    here = os.path.dirname(os.path.abspath(__file__))
    ids = tok(open(os.path.join(here, "..", "README.md")).read(), return_tensors="pt").input_ids[0]
    if ids.numel() < a.context:
        raise SystemExit(f"--context {a.context}: the README has only {ids.numel()} tokens")
    ids = ids[: a.context].tolist()
    rows = []
    for name in a.modes:
        best = None
        for _ in range(a.repeat):
            r = generate(model, ids, mode=MODES[name]["mode"], bits=MODES[name].get("bits", 4), budget=a.budget,
                         policy=MODES[name].get("policy"), max_new_tokens=a.new, graph=False, progress=False,
                         compile=MODES[name].get("compile", False))
            if best is None or r.ms_per_token < best.ms_per_token:
                best = r
        row = dict(mode=name, ms_per_token=best.ms_per_token, tokens_per_s=best.tokens_per_s,
                   prefill_s=best.prefill_s, fallback_rate=best.stats.get("fallback_rate"),
                   cache_bytes=best.cache_bytes["total"], dense_cache_bytes=best.dense_cache_bytes,
                   tokens=best.tokens[0])
        rows.append(row)
        print(f"{name:12s} {row['ms_per_token']:9.1f} ms/token  {row['tokens_per_s']:6.2f} tok/s  "
              f"prefill {row['prefill_s']:.1f} s  fallback {row['fallback_rate']}", flush=True)
    res = dict(date=time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
               machine=platform.processor() or platform.machine(), cpus=os.cpu_count(), threads=a.threads,
               torch=torch.__version__, context=a.context, new_tokens=a.new, budget=a.budget, rows=rows)
    if a.out:
        os.makedirs(os.path.dirname(os.path.abspath(a.out)), exist_ok=True)
        with open(a.out, "w") as f:
            json.dump(res, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
