"""Issue 16's bar, read off a long-context run's report rows: does a sparse mode match dense at a context?

A mode *meets the bar* at context n when, against dense on the same items and texts,

* every task's accuracy is within ``ACC_POINTS`` (1) point of dense's, ``|Δacc| ≤ 1``;
* every text's decoded perplexity is within ``PPL_PCT`` (0.5) % of dense's, ``|ΔPPL| ≤ 0.5 %``;
* no certificate is below the true error of its query (0 violations against the float64 shadow).

Both comparisons are two-sided on purpose: a mode that answers *more* items than dense, or scores a text
better, differs from dense, and the table says by how much and in which direction (signed worst values).
A verdict stands on the items it was given: *full size* means every task of the issue (``ruler.TASKS``:
the four needle tasks, variable tracking, common words) compared on ≥ ``FULL_ITEMS`` (50) items shared
with dense — one item is then at most 2 points — and ≥ ``FULL_TEXTS`` (3) texts of ≥ ``FULL_SCORED``
(512) scored tokens, what the issue asks for; below that one item moves a task by 100/items points,
and ``tasks_missing`` names the tasks a verdict has not seen.

The bars are read at ``RESOLUTION`` (1e-9 points or %): a delta is a difference of two float means, so
one exactly at the bar can come out an ulp above it (50 items, 54 % against 53 %: ``100 * (0.54 - 0.53)``
is 1.0000000000000009), and "within 1 point" includes 1 point. Real differences are at least
100 / (items x the task's answers) points apart, far above that resolution.

:func:`smallest_budgets` answers the issue's second question per mode family (same kind, bits and
policy at every budget): the smallest exact-read budget whose mode meets the bar at each context.
"""
from __future__ import annotations

import math
from collections import defaultdict

from .modes import bounded, budget_label, parse_mode
from .ruler import TASKS

__all__ = ["ACC_POINTS", "FULL_ITEMS", "FULL_SCORED", "FULL_TEXTS", "PPL_PCT", "RESOLUTION", "smallest_budgets", "target_rows"]

ACC_POINTS = 1.0
PPL_PCT = 0.5
FULL_ITEMS = 50
FULL_TEXTS = 3
FULL_SCORED = 512
RESOLUTION = 1e-9


def _beyond(value: float, bar: float) -> bool:
    """|value| > bar, read at ``RESOLUTION`` so that float rounding of a delta at the bar does not count."""
    return abs(value) - bar > RESOLUTION


def _worst(pairs):
    """(name, signed value) of the largest |value| among finite ones; (None, nan) without any."""
    pairs = [(k, v) for k, v in pairs if v is not None and math.isfinite(v)]
    return max(pairs, key=lambda kv: abs(kv[1])) if pairs else (None, math.nan)


def target_rows(acc: list[dict], ppl: list[dict], recs: list[dict]) -> list[dict]:
    """One row per sparse mode and context: the worst task and text against dense (signed points and
    %), the items and texts those rest on, the violations, and ``verdict`` — ``meets``, ``misses: …``
    (the failed bars), or ``no dense`` where the run has no dense record to compare with.
    ``acc`` and ``ppl`` are ``longctx_report.accuracy_rows`` / ``ppl_rows``; ``recs`` the records."""
    viol, dense_seen, unbounded = defaultdict(int), set(), set()
    for r in recs:
        viol[(r["mode"], r["ctx"])] += r.get("violations") or 0
        if r["mode"] == "dense":
            dense_seen.add(r["ctx"])
        if not bounded(r.get("kind")):            # no violation to count (None, not 0)
            unbounded.add(r["mode"])
    tasks, texts = defaultdict(list), defaultdict(list)
    for a in acc:
        if a["mode"] != "dense":
            tasks[(a["mode"], a["ctx"])].append(a)
    for p in ppl:
        if p["mode"] != "dense":
            texts[(p["mode"], p["ctx"])].append(p)
    rows = []
    for key in sorted(set(tasks) | set(texts), key=lambda k: (k[1], k[0])):
        mode, ctx = key
        ta, tx = tasks.get(key, []), texts.get(key, [])
        wt, wd = _worst((a["task"], a["delta_vs_dense"]) for a in ta)
        wp, wpp = _worst((p["text"], p["ppl_change_pct"]) for p in tx)
        # the items each task's delta rests on: those the mode shares with dense (a run cut short in
        # one of them compares fewer than either has); rows without the count, their own items
        items = [a.get("items_vs_dense", a["items"]) for a in ta]
        scored = [p["n_scored"] for p in tx if math.isfinite(p["ppl_change_pct"])]
        compared = [a for a in ta if math.isfinite(a["delta_vs_dense"])] + [p for p in tx if math.isfinite(p["ppl_change_pct"])]
        if ctx not in dense_seen or not compared:
            verdict = "no dense"
        else:
            failed = [name for name, bad in (("accuracy", any(_beyond(a["delta_vs_dense"], ACC_POINTS) for a in ta
                                                              if math.isfinite(a["delta_vs_dense"]))),
                                             ("ppl", any(_beyond(p["ppl_change_pct"], PPL_PCT) for p in tx
                                                         if math.isfinite(p["ppl_change_pct"]))),
                                             ("violations", viol[key] > 0)) if bad]
            verdict = "misses: " + ", ".join(failed) if failed else "meets"
        missing = " ".join(t for t in TASKS if t not in {a["task"] for a in ta})
        rows.append(dict(mode=mode, ctx=ctx, tasks=len(ta), min_items=min(items) if items else 0,
                         worst_task=wt, worst_task_delta=wd, texts=len(scored), worst_text=wp, worst_ppl_pct=wpp,
                         violations=None if mode in unbounded else viol[key], verdict=verdict,
                         full_size=bool(ta) and not missing and min(items) >= FULL_ITEMS
                         and len(scored) >= FULL_TEXTS and min(scored) >= FULL_SCORED, tasks_missing=missing))
    return rows


def _family(mode_name: str) -> str:
    """The mode's name with its budget replaced by ``*`` (cert-int4-*-report, cert-int8-*-fallback@1, paged-*)."""
    m = parse_mode(mode_name)
    return mode_name.replace(budget_label(m.budget), "*", 1) if m.budget is not None else mode_name


def smallest_budgets(rows: list[dict]) -> list[dict]:
    """Per mode family and context: the budgets run (smallest first), and the smallest whose mode meets
    the bar (``—`` when none does), with whether that verdict is full size."""
    by = defaultdict(list)
    for r in rows:
        m = parse_mode(r["mode"])
        if m.budget is not None:
            by[(_family(r["mode"]), r["ctx"])].append((m.budget, r))
    out = []
    for (fam, ctx), rs in sorted(by.items(), key=lambda kv: (kv[0][1], kv[0][0])):
        rs.sort(key=lambda br: br[0])
        ok = [(b, r) for b, r in rs if r["verdict"] == "meets"]
        out.append(dict(family=fam, ctx=ctx, budgets_run=" ".join(budget_label(b) for b, _ in rs),
                        smallest_meeting=budget_label(ok[0][0]) if ok else "—",
                        full_size=ok[0][1]["full_size"] if ok else None))
    return out
