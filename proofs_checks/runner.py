"""Run every claim's check, print the ledger table, and write report.md, report.csv and the plots.

    >>> from proofs_checks.runner import run_all
    >>> results = run_all(quick=True, out=None, progress=False)      # doctest: +SKIP
"""
from __future__ import annotations

import csv
import json
import math
import sys
import time
from pathlib import Path

from . import (claim1_kkt, claim2_leakage, claim3_theorem1, claim4_softmax, claim5_inside,
               claim6_router, claim7_support)
from .result import CheckResult

__all__ = ["BUDGETS", "MODULES", "run_all", "table", "write_report"]

MODULES = (claim1_kkt, claim2_leakage, claim3_theorem1, claim4_softmax, claim5_inside,
           claim6_router, claim7_support)

# budgets: quick (CI, about a minute on 2 cores) and thorough (default)
BUDGETS = {
    True: {1: {"n": 16}, 2: {"n": 12, "adversarial": 30}, 3: {"n": 12}, 4: {"n": 200}, 5: {"n": 12}, 6: {"n": 30},
           7: {"Ms": (16, 64, 256, 1024)}},
    False: {1: {"n": 120}, 2: {"n": 80, "adversarial": 300}, 3: {"n": 80}, 4: {"n": 5000}, 5: {"n": 90}, 6: {"n": 400},
            7: {"Ms": (16, 64, 256, 1024, 4096, 16384)}},
}


def run_all(quick: bool = True, seed: int = 0, out: str | Path | None = None,
            only: list[int] | None = None, progress: bool = True) -> list[CheckResult]:
    results = []
    mods = [m for m in MODULES if only is None or m.CLAIM.number in only]
    bar = None
    if progress:
        try:
            from tqdm import tqdm
            bar = tqdm(total=len(mods), desc="claims", file=sys.stderr, leave=False)
        except ImportError:
            bar = None
    for m in mods:
        if bar is not None:
            bar.set_postfix_str(m.CLAIM.name)
        t0 = time.perf_counter()
        res = m.check(seed=seed, **BUDGETS[quick][m.CLAIM.number])
        res.notes.append(f"check ran in {time.perf_counter() - t0:.1f} s")
        results.append(res)
        if bar is not None:
            bar.update(1)
    if bar is not None:
        bar.close()
    if out is not None:
        write_report(results, Path(out), quick=quick, seed=seed)
    return results


def _fmt(v, digits: int = 3) -> str:
    if isinstance(v, float):
        if math.isnan(v):
            return "nan"
        if math.isinf(v):
            return "inf"
        return f"{v:.{digits}g}"
    return str(v)


def _constants(res: CheckResult, limit: int = 3) -> str:
    items = list(res.constants.items())[:limit]
    return "; ".join(f"{k}={_fmt(v)}" for k, v in items)


def table(results: list[CheckResult]) -> str:
    head = ["claim", "instances", "holds", "worst ratio", "constants"]
    rows = [[f"{r.claim.number}. {r.claim.name}", str(r.instances),
             "yes" if r.holds else f"NO ({r.violations})", _fmt(r.worst_ratio, 4), _constants(r)]
            for r in results]
    widths = [max(len(h), *(len(row[i]) for row in rows)) for i, h in enumerate(head)]
    line = lambda cells: "  ".join(c.ljust(w) for c, w in zip(cells, widths))  # noqa: E731
    return "\n".join([line(head), line(["-" * w for w in widths])] + [line(r) for r in rows])


def write_report(results: list[CheckResult], out: Path, *, quick: bool, seed: int) -> None:
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "report.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["claim", "name", "instances", "holds", "violations", "worst_ratio",
                    "exact_checked", "constants", "counterexample"])
        for r in results:
            w.writerow([r.claim.number, r.claim.name, r.instances, r.holds, r.violations,
                        r.worst_ratio, r.exact_checked, json.dumps(r.constants),
                        json.dumps(r.counterexample)[:2000] if r.counterexample else ""])
    figures = []
    try:
        from .plots import plot_face_error, plot_leakage
    except ModuleNotFoundError as exc:
        # plots are the one part of the check that needs an extra: say so, and write the rest
        if (exc.name or "").split(".")[0] != "matplotlib":
            raise
        print('vashista check: plots skipped (matplotlib is not installed; pip install "vashista[reports]")',
              file=sys.stderr)
    else:
        figures = [f for f in (plot_leakage(results, out), plot_face_error(results, out)) if f]
    lines = [f"# Vashista claims ledger ({'quick' if quick else 'thorough'} run, seed {seed})", "",
             "Each of the paper's claims run as an executable check. *worst ratio* is observed/bound "
             "(≤ 1 means the claim held on every instance); a failure is a finding, with the smallest "
             "counterexample below.", "", "```", table(results), "```", ""]
    for f in figures:
        lines += [f"![{f.stem}]({f.name})", ""]
    for r in results:
        c = r.claim
        lines += [f"## {c.number}. {c.name} — {r.verdict}", "",
                  f"**Statement.** $${c.latex}$$", "", c.plain, "",
                  f"**Hypotheses.** {c.hypotheses}  ", f"**Source.** {c.source}  ",
                  f"**Instances.** {r.instances}; violations {r.violations}; worst ratio "
                  f"{_fmt(r.worst_ratio)}; certificates verified in exact arithmetic: {r.exact_checked}", "",
                  "**Measured constants.**", ""]
        lines += [f"- {k}: {_fmt(v)}" for k, v in r.constants.items()] + [""]
        if r.rows:
            keys = list(r.rows[0].keys())
            lines += ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
            lines += ["| " + " | ".join(_fmt(row.get(k)) for k in keys) + " |" for row in r.rows[:25]]
            lines += [""]
        if r.counterexample:
            ce = {k: v for k, v in r.counterexample.items() if k not in ("q", "K")}
            lines += [f"**Smallest counterexample** (full q and K in report.csv): `{json.dumps(ce)}`", ""]
        lines += [f"- {n}" for n in r.notes] + [""]
    (out / "report.md").write_text("\n".join(lines))
