"""Several ``vashista quality`` configurations in one process, in priority order, within a time budget.

A device session is short and loading the model (GGUF dequantisation on the host, then the copy to
the device) costs seconds per process, so a batch loads it once and runs the configurations of a
*plan file* one after another. Each plan line is ``NAME CAP_S ARG...`` (shell syntax; ``#`` starts a
comment): the quality CLI's arguments of one configuration, written to ``OUT_ROOT/NAME``, given at most
``CAP_S`` seconds and never more than what is left of ``--budget-s``. A configuration that reaches its
limit stops starting tasks (``--time-limit``) and keeps the rows it finished; one that fails is
recorded with its error and the batch goes on. ``--summaries FILE`` is rewritten after every
configuration with every summary so far (``{NAME: summary | {"error": ...} | {"skipped": ...}}``).

The problem solved is only scheduling: maximise the prefix of the plan (ordered most important first)
that completes within the budget — a greedy in-order schedule with per-step caps.

Example::

    printf 'ppl8k_bound 120 --contexts 8192 --no-passkey\\n' > /tmp/plan.txt
    python -m vashista_app.quality.batch --plan /tmp/plan.txt --out-root /tmp/q --budget-s 300 \\
        --summaries /tmp/q/summaries.json --common "--device cuda --span 32 --sweep --no-figures"
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import time
import traceback

from vashista_core.errors import VashistaInputError


def read_plan(path: str) -> list[tuple[str, float, list[str]]]:
    steps = []
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            words = shlex.split(line, comments=True)
            if not words:
                continue
            if len(words) < 2:
                raise VashistaInputError("--plan", f"line {n}: expected NAME CAP_S ARG..., got {line.strip()!r}")
            name, cap = words[0], words[1]
            if not name.replace("_", "").replace("-", "").replace(".", "").isalnum():
                raise VashistaInputError("--plan", f"line {n}: step name {name!r} must be [A-Za-z0-9._-]")
            try:
                cap_s = float(cap)
            except ValueError:
                raise VashistaInputError("--plan", f"line {n}: CAP_S {cap!r} is not a number") from None
            steps.append((name, cap_s, words[2:]))
    if not steps:
        raise VashistaInputError("--plan", f"{path} has no steps")
    return steps


def main(argv=None) -> int:
    from .cli import load, parse, run_suite

    p = argparse.ArgumentParser(prog="python -m vashista_app.quality.batch", description=__doc__.split("\n\n")[0])
    p.add_argument("--plan", required=True, help="plan file: NAME CAP_S ARG... per line")
    p.add_argument("--out-root", required=True, help="each step writes OUT_ROOT/NAME")
    p.add_argument("--budget-s", type=float, required=True, help="total seconds for all steps (model load included)")
    p.add_argument("--min-step-s", type=float, default=20.0, help="a step gets at least this much or is skipped")
    p.add_argument("--common", default="", help="arguments added to every step (shell syntax)")
    p.add_argument("--summaries", default=None, help="JSON file of all summaries, rewritten after every step")
    a = p.parse_args(argv)
    t0 = time.time()
    try:
        steps = read_plan(a.plan)
        common = shlex.split(a.common)
        parsed = [(name, cap, extra, parse(common + extra + ["--out", os.path.join(a.out_root, name)]))
                  for name, cap, extra in steps]
        first = parsed[0][3][0]
        for name, _, _, (args, _) in parsed:
            if (args.device, args.model) != (first.device, first.model):
                raise VashistaInputError("--plan", f"step {name}: every step must use the same --device and --model")
    except VashistaInputError as e:
        print(f"quality batch: {e}", file=sys.stderr)
        return 2
    os.makedirs(a.out_root, exist_ok=True)
    loaded = load(first)
    results: dict = {"_env": loaded[2]}

    def save():
        if a.summaries:
            with open(a.summaries, "w") as f:
                json.dump(results, f, indent=1)

    rc = 0
    for name, cap, extra, (args, cfg) in parsed:
        left = a.budget_s - (time.time() - t0)
        limit = min(cap, left)
        if limit < a.min_step_s:
            results[name] = dict(skipped=f"{left:.0f} s left of the budget")
            print(f"[batch] {name}: skipped ({left:.0f} s left)", file=sys.stderr, flush=True)
            save()
            continue
        args.time_limit = limit
        ts = time.time()
        print(f"[batch] {name}: start, limit {limit:.0f} s, args {' '.join(extra)}", file=sys.stderr, flush=True)
        try:
            results[name] = run_suite(args, cfg, loaded=loaded)
        except Exception as e:           # one failed configuration must not lose the others' numbers
            rc = 1
            results[name] = dict(error=f"{type(e).__name__}: {e}", traceback=traceback.format_exc())
            traceback.print_exc()
        print(f"[batch] {name}: done in {time.time() - ts:.1f} s (total {time.time() - t0:.0f} s)",
              file=sys.stderr, flush=True)
        save()
        try:
            import torch
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
        except Exception:
            pass
    return rc


if __name__ == "__main__":
    sys.exit(main())
