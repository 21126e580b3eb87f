"""Figure of the H200 quality run (issue 6): relative PPL change vs context, both modes, both texts.

Reads the per-step ``perplexity.csv`` files that ``bash benchmarks/gpu_quality.sh run`` wrote (copied to
``benchmarks/results/quality_gpu_h200/<step>/``) and plots 100·(PPL_sparse / PPL_dense − 1) against the
context length for the paper's paged mode (router ``bound``) and certified mode (int8 sketch; int4 where
it was run), one line per (mode, text). The y axis is logarithmic because paged mode's changes (1–42 %)
and certified mode's (0.004–3 %) differ by up to four orders of magnitude (symlog if any change is
≤ 0); the ≤ 1 % target band is shaded.

Example::

    python benchmarks/plot_quality_gpu.py            # writes quality_vs_context.png next to the CSVs
"""
from __future__ import annotations

import argparse
import csv
import os
from collections import defaultdict

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT_DIR = os.path.join(HERE, "results", "quality_gpu_h200")
# step folder -> mode label; a step is one `vashista quality` call of the batch plan
MODES = {"ppl2k4k_bound": "paged (bound router)", "ppl8k_bound": "paged (bound router)",
         "ppl2k4k_sketch8": "certified int8", "ppl8k_sketch8": "certified int8",
         "ppl8k_sketch4": "certified int4"}
STYLE = {"paged (bound router)": dict(color="tab:red", marker="o"),
         "certified int8": dict(color="tab:blue", marker="s"),
         "certified int4": dict(color="tab:green", marker="^", markersize=10, markerfacecolor="none")}


def load(root: str) -> dict:
    """{(mode, text): [(ctx, ppl_change_pct), ...]} sorted by context."""
    series = defaultdict(list)
    for step, mode in MODES.items():
        path = os.path.join(root, step, "perplexity.csv")
        if not os.path.isfile(path):
            continue  # a step cut by the device budget simply has no points
        for row in csv.DictReader(open(path)):
            series[(mode, row["text"])].append((int(row["ctx"]), float(row["ppl_change_pct"])))
    return {k: sorted(v) for k, v in series.items()}


def main(argv=None) -> str:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--dir", default=DEFAULT_DIR, help="folder with the step sub-folders")
    p.add_argument("--out", default=None, help="PNG path (default: <dir>/quality_vs_context.png)")
    args = p.parse_args(argv)
    series = load(args.dir)
    if not series:
        raise SystemExit(f"no perplexity.csv under {args.dir}")
    fig, ax = plt.subplots(figsize=(8.6, 4.2))
    positive = all(y > 0 for pts in series.values() for _, y in pts)
    ax.axhspan(1e-3 if positive else -1, 1, color="0.9", label="target |change| ≤ 1 % (at 8k)")
    for (mode, text), pts in sorted(series.items()):
        xs, ys = zip(*pts)
        ax.plot(xs, ys, linestyle="-" if text == "code" else "--", label=f"{mode}, {text}",
                **STYLE.get(mode, {}))
    ax.set_xscale("log", base=2)
    ax.set_xticks([2048, 4096, 8192], ["2k", "4k", "8k"])
    if positive:
        ax.set_yscale("log")
    else:
        ax.set_yscale("symlog", linthresh=0.1)
    ax.set_xlabel("context (tokens); budget 1/8 of it")
    ax.set_ylabel("PPL change vs dense (%)")
    ax.set_title("SmolLM2-135M, H200, 32 decoded tokens per text")
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    ax.grid(True, which="both", alpha=0.3)
    out = args.out or os.path.join(args.dir, "quality_vs_context.png")
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    return out


if __name__ == "__main__":
    print(main())
