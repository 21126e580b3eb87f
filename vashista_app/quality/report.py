"""Outputs of the quality suite: CSV tables, figures and a markdown summary under ``--out``.

Example::

    >>> from vashista_app.quality.report import write_csv
    >>> import tempfile, os
    >>> d = tempfile.mkdtemp(); write_csv(os.path.join(d, "t.csv"), [dict(a=1, b=2.5)])
    >>> open(os.path.join(d, "t.csv")).read().split()
    ['a,b', '1,2.5']
"""
from __future__ import annotations

import csv
import os


def write_csv(path: str, rows: list[dict]) -> None:
    if not rows:
        return
    keys = list(dict.fromkeys(k for r in rows for k in r))
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=keys)
        w.writeheader()
        w.writerows(rows)


def figures(out: str, sweep_rows: list[dict], stat_rows: list[dict], layer_rows: list[dict]) -> list[str]:
    """accuracy / PPL change vs budget, certified vs true error scatter, fallback rate per layer."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    made = []
    if sweep_rows:
        fig, ax = plt.subplots(1, 2, figsize=(10, 4))
        for kind, axis, key in (("ppl", ax[0], "ppl_change_pct"), ("passkey", ax[1], "accuracy")):
            rows = [r for r in sweep_rows if r["task"] == kind]
            xs = [r["budget_fraction"] for r in rows]
            axis.plot(xs, [r[key] for r in rows], "o-")
            axis.set_xscale("log", base=2)
            axis.set_xlabel("(Kc + pages·S) / context")
            axis.set_ylabel("relative PPL change (%)" if kind == "ppl" else "passkey accuracy (sparse)")
        fig.tight_layout()
        p = os.path.join(out, "budget_sweep.png")
        fig.savefig(p, dpi=110)
        plt.close(fig)
        made.append(p)
    pts = [(r["certified_error"], r["true_error"]) for r in stat_rows if "true_error" in r]
    if pts:
        fig, ax = plt.subplots(figsize=(5, 5))
        c, t = zip(*pts)
        floor = 1e-12
        ax.scatter([max(x, floor) for x in c], [max(y, floor) for y in t], s=3, alpha=0.3)
        lim = [floor, max(max(c), max(t), 1e-6) * 2]
        ax.plot(lim, lim, "k--", lw=1, label="certified = true")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("certified error")
        ax.set_ylabel("true error (float64 dense shadow)")
        ax.legend()
        fig.tight_layout()
        p = os.path.join(out, "certified_vs_true.png")
        fig.savefig(p, dpi=110)
        plt.close(fig)
        made.append(p)
    if layer_rows:
        fig, ax = plt.subplots(figsize=(8, 3.5))
        ax.bar([r["layer"] for r in layer_rows], [r["fallback_rate"] for r in layer_rows])
        ax.set_xlabel("layer")
        ax.set_ylabel("fallback rate")
        fig.tight_layout()
        p = os.path.join(out, "fallback_per_layer.png")
        fig.savefig(p, dpi=110)
        plt.close(fig)
        made.append(p)
    return made


def markdown(summary: dict, ppl_rows, pass_rows, multi_rows, sweep_rows, layer_rows) -> str:
    def table(rows, keys):
        if not rows:
            return "(none run)\n"
        out = "| " + " | ".join(keys) + " |\n|" + "---|" * len(keys) + "\n"
        for r in rows:
            out += "| " + " | ".join(_fmt(r.get(k, "")) for k in keys) + " |\n"
        return out

    s = "# Vashista quality suite\n\n"
    s += "Settings: " + summary["settings"] + "\n\n"
    if summary.get("env"):
        s += "Environment: " + ", ".join(f"{k}={v}" for k, v in summary["env"].items()) + "\n\n"
    s += "## Summary\n\n" + table([summary], [k for k in summary if k not in ("settings", "env")]) + "\n"
    s += "## Perplexity (dense prefill, token-by-token decode of the span)\n\n"
    s += table(ppl_rows, ["text", "ctx", "span", "P", "Kc", "budget_fraction", "ppl_dense", "ppl_sparse",
                          "ppl_change_pct", "violations", "fallback_rate"])
    s += "\n## Passkey (needle depth x context)\n\n"
    s += table(pass_rows, ["ctx", "depth", "key", "answer_dense", "answer_sparse", "dense", "sparse"])
    s += "\n## Multi-key (RULER style)\n\n"
    s += table(multi_rows, ["ctx", "n_keys", "key", "answer_dense", "answer_sparse", "dense", "sparse"])
    s += "\n## Budget sweep\n\n"
    s += table(sweep_rows, ["task", "ctx", "P", "Kc", "budget_fraction", "ppl_change_pct", "accuracy",
                            "violations"])
    s += "\n## Per layer (sparse layers, all runs)\n\n"
    s += table(layer_rows, list(layer_rows[0].keys()) if layer_rows else [])
    return s


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)
