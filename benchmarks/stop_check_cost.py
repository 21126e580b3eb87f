"""What the early stop costs a graph-replayed decode: ms/token of Engine.run with stop_tokens (a
token never produced, so every segment runs to its end and only the test's cost shows) against
without, in the same process, alternating, on a random-weight Llama-3.2-1B shape.

    python benchmarks/stop_check_cost.py --out results.json [--context 8192] [--batch 1 4] [--steps 256]

The test reads the device's tokens every ``check_every`` replays (one host synchronisation); between
tests the replays queue as before."""
from __future__ import annotations

import argparse
import json
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks.e2e_decode import build_model  # noqa: E402


def ms_per_token(model, prompts, steps, mode, stop, every):
    from vashista_gpu.engine import Engine

    S = 16
    T = max(len(p) for p in prompts) + steps + S
    eng = Engine(model, mode=mode, bits=4, budget=1 / 16, max_seqs=len(prompts), max_tokens=T,
                 num_pages=sum(-(-(len(p) + steps) // S) for p in prompts), progress=False)
    with eng:
        eng.add(prompts, steps)
        ran = eng.run(stop_tokens=stop, check_every=every)
        assert ran == steps - 1, ran
        return 1e3 * eng.decode_s / eng.steps


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--context", type=int, default=8192)
    ap.add_argument("--batch", type=int, nargs="+", default=[1, 4])
    ap.add_argument("--steps", type=int, default=256)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--shape", default="llama-1b")
    ap.add_argument("--device", default="cuda")
    a = ap.parse_args()
    dev = torch.device(a.device)
    model = build_model(a.shape, dev)
    never = [model.config.vocab_size + 7]           # an id the model cannot produce
    env = dict(card=torch.cuda.get_device_name() if dev.type == "cuda" else "cpu", torch=torch.__version__,
               steps=a.steps, shape=a.shape)
    rows = []
    for B in a.batch:
        g = torch.Generator().manual_seed(B)
        prompts = [torch.randint(0, min(1000, model.config.vocab_size), (a.context,), generator=g).tolist() for _ in range(B)]
        for mode in ("dense", "certified"):
            ms_per_token(model, prompts, 8, mode, None, 16)              # compile, warm
            t = {"none": [], "every16": [], "every4": []}
            for _ in range(a.repeats):
                t["none"].append(ms_per_token(model, prompts, a.steps, mode, None, 16))
                t["every16"].append(ms_per_token(model, prompts, a.steps, mode, never, 16))
                t["every4"].append(ms_per_token(model, prompts, a.steps, mode, never, 4))
            row = dict(batch=B, context=a.context, mode=mode, **{k: min(v) for k, v in t.items()}, runs=t)
            row.update(cost16=row["every16"] / row["none"] - 1, cost4=row["every4"] / row["none"] - 1)
            print(json.dumps({k: v for k, v in row.items() if k != "runs"}), flush=True)
            rows.append(row)
            with open(a.out, "w") as f:          # after every row: a call's time limit keeps what ran
                json.dump(dict(env=env, rows=rows), f, indent=1)


if __name__ == "__main__":
    main()
