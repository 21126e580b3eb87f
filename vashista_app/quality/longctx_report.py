"""Tables and figures of a long-context run from its ``results.jsonl`` (``longctx.py``).

Writes to the run's folder:

* ``accuracy.csv`` — per mode, task and context: items, accuracy (RULER: mean score x 100), the
  difference to dense on the same items, and the accuracy on the items every mode has
  (``shared_items``, ``accuracy_shared``: what ``modes.csv`` and the figures average);
* ``perplexity.csv`` — per mode, text and context: scored tokens, PPL, PPL change vs dense (%);
* ``modes.csv`` — per mode: mean accuracy over the task and context cells every mode has (on the items every
  mode has: ``common_cells``), decode steps checked, certificate
  violations (0 expected), fallback rate, bytes read per token relative to dense, max true error;
* ``per_layer.csv`` — per mode and layer: steps, fallback rate, mean certified and true error;
* ``tolerance.csv`` — per sparse mode, context and tolerance t of the records' grid (``modes.TOL_GRID``):
  the fraction of (step, head) queries whose certified error exceeds t and whose true error does;
  ``summary.md``'s "DenseFallback at tolerance t" shows it per report-only mode (the certified fraction
  is the fallback rate DenseFallback(t) would have: exact at the first decode step, later steps decode
  other outputs) and, per fallback mode, the measured fallback rate and quality next to its tolerance,
  the rate its report-only twin predicted there and the share of queries it left > 0.1 off exact
  (``true_above``; how to pick a tolerance: ``modes.py``);
* ``targets.csv`` — per sparse mode and context: issue 16's bar (``targets.py``: every task within 1
  point of dense, every text's PPL within 0.5 %, 0 violations), the signed worst task and text, and
  whether the verdict is full size (≥ 50 items per task, ≥ 3 texts of ≥ 512 scored tokens); ``summary.md``
  adds the smallest budget per mode family that meets it;
* ``accuracy_vs_context.png`` (mean RULER accuracy per mode vs context, over the tasks every mode has
  at every context: ``context_curves``) and ``accuracy_vs_bytes.png``
  (accuracy vs relative bytes read at the largest context, both at that context, over the tasks every
  mode has there: ``bytes_points``; with the Pareto front of the modes);
* ``summary.md`` and ``summary.json``.

Example::

    >>> s = write_report("/tmp/run", figures=False)    # doctest: +SKIP
    >>> s["modes"]["dense"]["accuracy"]                # doctest: +SKIP
"""
from __future__ import annotations

import json
import math
import os
import statistics
from collections import defaultdict

from .modes import bounded, parse_mode, report_twin
from .results_file import RESULTS, json_safe, read_results, record_key
from .report import write_csv
from .ruler import TASKS
from .targets import ACC_POINTS, FULL_ITEMS, FULL_SCORED, FULL_TEXTS, PPL_PCT, smallest_budgets, target_rows

__all__ = ["accuracy_rows", "bytes_points", "common_cells", "context_curves", "fallback_rows", "layer_rows",
           "mode_rows", "pareto", "phase_rows", "ppl_rows", "prefill_rows", "tolerance_rows", "write_report"]


# what a run on the engine's decoder (engine_decoder.py) does not produce, said where its numbers are read
ENGINE_NOTE = ("- engine: rel_bytes is the model of modes.relative_bytes (not measured); per-layer certified error "
               "is the sparse step's certificate (the first attempt's on a fallen-back head); the dense gap, "
               "supports and true leakage of the HF shadow are not computed; on a GPU its certified step's certificate is "
               "the fused path's middle form, which can be looser than the HF decoder's torch path (the smallest "
               "of four forms) for the same outputs")


def _mean(xs):
    xs = [x for x in xs if x is not None]
    return sum(xs) / len(xs) if xs else float("nan")


def accuracy_rows(recs: list[dict]) -> list[dict]:
    """Per (mode, task, ctx): items, accuracy over the mode's own items, the difference to dense on the
    ``items_vs_dense`` items both have, and ``accuracy_shared`` over the ``shared_items`` every mode of
    the run has for that task and context — what the modes table and the figures compare, so that a
    mode a run cut short (fewer, or other, items) is not compared on other items than the rest."""
    by = defaultdict(dict)                         # (mode, task, ctx) -> {item: score}
    for r in recs:
        if r["task"] != "ppl":
            by[(r["mode"], r["task"], r["ctx"])][r["item"]] = r["score"]
    shared = {}                                    # (task, ctx) -> items every mode has
    for (mode, task, ctx), scores in by.items():
        shared[(task, ctx)] = shared.get((task, ctx), set(scores)) & set(scores)
    rows = []
    for (mode, task, ctx), scores in sorted(by.items(), key=lambda kv: (kv[0][2], kv[0][1], kv[0][0])):
        dense = by.get(("dense", task, ctx), {})
        common = [i for i in scores if i in dense]
        both = sorted(shared[(task, ctx)])
        rows.append(dict(mode=mode, task=task, ctx=ctx, items=len(scores), accuracy=100 * _mean(scores.values()),
                         delta_vs_dense=(100 * (_mean([scores[i] for i in common]) - _mean([dense[i] for i in common]))
                                         if common else float("nan")),
                         shared_items=len(both), accuracy_shared=100 * _mean([scores[i] for i in both]),
                         items_vs_dense=len(common)))
    return rows


def ppl_rows(recs: list[dict]) -> list[dict]:
    by = {(r["mode"], r["text"], r["ctx"]): r for r in recs if r["task"] == "ppl"}
    rows = []
    for (mode, text, ctx), r in sorted(by.items(), key=lambda kv: (kv[0][2], kv[0][1], kv[0][0])):
        d = by.get(("dense", text, ctx))
        rows.append(dict(mode=mode, text=text, ctx=ctx, n_scored=r["n_scored"], ppl=r["ppl"],
                         ppl_change_pct=100 * (r["ppl"] - d["ppl"]) / d["ppl"] if d else float("nan")))
    return rows


def _fallback_rate(recs: list[dict]) -> float:
    """Fallback rate over the records' decode steps (0 without any)."""
    steps = sum(r.get("decode_steps") or 0 for r in recs)
    return sum((r.get("decode_steps") or 0) * r["fallback_rate"] for r in recs) / steps if steps else 0.0


def common_cells(acc: list[dict]) -> list[tuple[str, int]]:
    """The (task, ctx) cells every mode of the run has, sorted by context then task: what the modes
    table averages, so that a mode run on fewer tasks or contexts (the paged mode at 32k on the needle
    tasks only, say) is not set against dense's mean over cells it never ran — at 32k variable tracking
    and common words pull dense's mean far down."""
    cells = defaultdict(set)
    for r in acc:
        cells[r["mode"]].add((r["task"], r["ctx"]))
    common = set.intersection(*cells.values()) if cells else set()
    return sorted(common, key=lambda tc: (tc[1], tc[0]))


def mode_rows(recs: list[dict], acc: list[dict]) -> list[dict]:
    """Per mode: ``accuracy`` = mean ``accuracy_shared`` over ``common_cells`` (nan where the modes
    share no cell), the decode steps checked, violations, fallback rate, bytes, errors and time."""
    cells = set(common_cells(acc))
    by = defaultdict(list)
    for r in recs:
        by[r["mode"]].append(r)
    rows = []
    for mode, rs in by.items():
        bound = bounded(rs[0]["kind"])          # else: no step checked against a bound, no violation to count
        steps = sum(r.get("decode_steps") or 0 for r in rs) if bound else 0
        a = [x["accuracy_shared"] for x in acc if x["mode"] == mode and (x["task"], x["ctx"]) in cells]
        errs = [r["max_true_error"] for r in rs if r.get("max_true_error") is not None]
        decoders = sorted({r.get("decoder") or "hf" for r in rs})
        notes = sorted({r["decoder_note"] for r in rs if r.get("decoder_note")})
        rows.append(dict(mode=mode, kind=rs[0]["kind"], budget=rs[0]["budget"], tol=rs[0].get("tol"),
                         records=len(rs), decoder="+".join(decoders), decoder_note="; ".join(notes) or None,
                         accuracy=_mean(a), decode_steps_checked=steps,
                         violations=sum(r.get("violations") or 0 for r in rs) if bound else None,
                         fallback_rate=_fallback_rate(rs),
                         rel_bytes=_mean([r["rel_bytes"] for r in rs]),
                         max_true_error=max(errs) if errs else None,
                         seconds_per_record=_mean([r.get("seconds") for r in rs])))
    order = {"dense": 0, "certified": 1, "paged": 2, "window": 3}
    return sorted(rows, key=lambda r: (order.get(r["kind"], 9), -(r["budget"] or 2), r["mode"]))


def phase_rows(recs: list[dict]) -> list[dict]:
    """Median seconds per record and phase of the engine decoder's runs (``phases``), per mode, and the
    slowest record's total. Medians, not means: a mode's first record in a process compiles its kernels
    (~55 s for a certified mode on an H100, against a 0.17 s capture after), and a mean over 30 records
    would charge ~1.8 s of that to every record's capture."""
    by = defaultdict(list)
    for r in recs:
        if r.get("phases"):
            by[r["mode"]].append(r["phases"])
    return [dict(mode=mode, records=len(ps), **{k: statistics.median([p.get(k, 0.0) for p in ps]) for k in ps[0]},
                 slowest_record=max(sum(p.values()) for p in ps))
            for mode, ps in sorted(by.items())]


def prefill_rows(recs: list[dict]) -> list[dict]:
    """Per context: the jobs whose records carry ``prefill_seconds`` (the dense prefill every mode of a
    job shares; an item's share of its batch's) and its median over those jobs — the part of a job's
    time that no mode's phases show."""
    by = defaultdict(dict)                      # ctx -> {job: seconds}
    for r in recs:
        if r.get("prefill_seconds") is not None:
            by[r["ctx"]][record_key(r)[:3]] = r["prefill_seconds"]      # one job: (task, ctx, item or text)
    return [dict(ctx=ctx, jobs=len(js), prefill_median=statistics.median(js.values()))
            for ctx, js in sorted(by.items())]


def tolerance_rows(recs: list[dict]) -> list[dict]:
    """Exceedance curves per sparse mode, context and tolerance (long form): queries, and the fractions
    of them whose certified / true error exceeds t, weighted by each record's decode steps (None where
    no record has the curve: the window's certificate, a run without the shadow)."""
    acc = defaultdict(lambda: defaultdict(float))
    policy = {}
    for r in recs:
        n = r.get("decode_steps") or 0
        if not n or not r.get("tol_grid"):            # dense, or a record from before the curves
            continue
        policy[r["mode"]] = r.get("policy")
        for i, t in enumerate(r["tol_grid"]):
            a = acc[(r["mode"], r["ctx"], t)]
            a["queries"] += n
            for key in ("cert_exceeds", "true_exceeds"):
                if r.get(key) is not None:
                    a[key] += n * r[key][i]
                    a["n_" + key] += n
    return [dict(mode=mode, policy=policy[mode], ctx=ctx, tol=t, queries=int(a["queries"]),
                 **{k: a[k] / a["n_" + k] if a["n_" + k] else None for k in ("cert_exceeds", "true_exceeds")})
            for (mode, ctx, t), a in sorted(acc.items(), key=lambda kv: (kv[0][1], kv[0][0], kv[0][2]))]


def _pct(x) -> str:
    return "—" if x is None else f"{100 * x:.1f}"


def curve_table_rows(tol: list[dict]) -> list[dict]:
    """``tolerance_rows`` of the modes without fallback as one row per (mode, context), a column per t:
    "certified % / true %" (summary.md)."""
    rows = {}
    for r in tol:
        if r["policy"] != "fallback":
            row = rows.setdefault((r["mode"], r["ctx"]), dict(mode=r["mode"], ctx=r["ctx"], queries=r["queries"]))
            row[f"t={r['tol']:g}"] = f"{_pct(r['cert_exceeds'])} / {_pct(r['true_exceeds'])}"
    return list(rows.values())


# the residual error fallback_rows reports: a point of modes.TOL_GRID where, on the 32k model, the
# fallback modes' true-error curves differ (eleventh and twelfth sessions; above it they are ~0)
RESIDUAL_T = 0.1


def fallback_rows(recs: list[dict], acc: list[dict], ppl: list[dict], tol: list[dict]) -> list[dict]:
    """Per fallback mode and context: its tolerance, the measured fallback rate, the rate its report-only
    twin's certificates predict at that tolerance (None off the grid or without the twin), the fraction
    of its own queries whose returned output is still more than ``RESIDUAL_T`` from exact attention
    (float64 shadow; None without it) — what the tolerance lets through, which is what moves quality —
    accuracy, its difference to dense, PPL change and bytes read."""
    by = defaultdict(list)
    for r in recs:
        if r.get("policy") == "fallback":
            by[(r["mode"], r["ctx"])].append(r)
    curve = {(r["mode"], r["ctx"], r["tol"]): r["cert_exceeds"] for r in tol}
    true = {(r["mode"], r["ctx"], r["tol"]): r["true_exceeds"] for r in tol}
    rows = []
    for (mode, ctx), rs in sorted(by.items(), key=lambda kv: (kv[0][1], kv[0][0])):
        t = rs[0].get("tol")                  # one per mode: its @t, or --tol (pinned in config.json)
        a = [x for x in acc if (x["mode"], x["ctx"]) == (mode, ctx)]
        p = [x for x in ppl if (x["mode"], x["ctx"]) == (mode, ctx)]
        rows.append(dict(mode=mode, ctx=ctx, tol=t, fallback_rate=_fallback_rate(rs),
                         predicted_fallback=curve.get((report_twin(parse_mode(mode)).name, ctx, t)),
                         true_above=true.get((mode, ctx, RESIDUAL_T)),
                         accuracy=_mean([x["accuracy"] for x in a]),
                         delta_vs_dense=_mean([x["delta_vs_dense"] for x in a]),
                         ppl_change_pct=_mean([x["ppl_change_pct"] for x in p]),
                         rel_bytes=_mean([r["rel_bytes"] for r in rs])))
    return rows


def layer_rows(recs: list[dict]) -> list[dict]:
    acc = defaultdict(lambda: defaultdict(float))
    for r in recs:
        for L in r.get("per_layer") or []:
            a = acc[(r["mode"], L["layer"])]
            n = L["steps"]
            a["steps"] += n
            a["fb"] += n * L["fallback_rate"]
            if L.get("cert_err_mean") is not None:
                a["cert"] += n * L["cert_err_mean"]
                a["n_cert"] += n
            if L.get("true_err_mean") is not None:
                a["true"] += n * L["true_err_mean"]
                a["n_true"] += n
            a["viol"] += L.get("violations") or 0
    rows = []
    for (mode, layer), a in sorted(acc.items()):
        cert = a["cert"] / a["n_cert"] if a["n_cert"] else None      # None: no certificate (window)
        true = a["true"] / a["n_true"] if a["n_true"] else None
        rows.append(dict(mode=mode, layer=layer, steps=int(a["steps"]), fallback_rate=a["fb"] / a["steps"],
                         cert_err_mean=cert, true_err_mean=true, violations=int(a["viol"]),
                         cert_over_true=(cert / true if cert is not None and true else None)))
    return rows


def pareto(points: list[tuple[float, float, str]]) -> list[str]:
    """Names on the front: no other point reads fewer or equal bytes with higher or equal accuracy
    (strictly better in one)."""
    front = []
    for b, a, n in points:
        if not any((b2 <= b and a2 >= a) and (b2 < b or a2 > a) for b2, a2, _ in points):
            front.append(n)
    return front


def context_curves(acc: list[dict]) -> tuple[list[str], dict]:
    """The accuracy-vs-context figure's data: per mode and context, the mean ``accuracy_shared`` over the
    tasks that every mode has at every context it ran, and those tasks. Otherwise a run with variable
    tracking at 4k but not at 32k would draw the task mix changing as a change with context, and a mode
    run on the needle tasks alone would sit above dense, whose mean has the hard tasks in it. Where no
    task is common to all, each context's points average the tasks every mode has there."""
    tasks_of = defaultdict(set)                    # (mode, ctx) -> tasks
    for r in acc:
        tasks_of[(r["mode"], r["ctx"])].add(r["task"])
    common = set.intersection(*tasks_of.values()) if tasks_of else set()
    at_ctx = defaultdict(list)
    for (mode, ctx), ts in tasks_of.items():
        at_ctx[ctx].append(ts)
    keep = {ctx: common or set.intersection(*sets) for ctx, sets in at_ctx.items()}
    by = defaultdict(lambda: defaultdict(list))
    for r in acc:
        if r["task"] in keep[r["ctx"]]:
            by[r["mode"]][r["ctx"]].append(r["accuracy_shared"])       # on the items every mode has
    return sorted(common), {mode: {c: _mean(v) for c, v in cs.items()} for mode, cs in by.items()}


def bytes_points(acc: list[dict], recs: list[dict]) -> tuple[int, list[str], list[tuple[float, float, str]]]:
    """The accuracy-vs-bytes figure's data at the run's largest context: the tasks every mode has there,
    and per mode (its records' mean relative bytes at that context, its mean ``accuracy_shared`` over
    those tasks, name) — both at that context, so that a mode's bytes at 4k do not sit beside its
    accuracy at 32k."""
    top = max(r["ctx"] for r in acc)
    at_top = [r for r in acc if r["ctx"] == top]
    modes = sorted({r["mode"] for r in at_top})
    common = set.intersection(*({r["task"] for r in at_top if r["mode"] == m} for m in modes))
    pts = []
    for mode in modes:
        a = [r["accuracy_shared"] for r in at_top if r["mode"] == mode and r["task"] in common]
        b = [r["rel_bytes"] for r in recs if r["mode"] == mode and r["ctx"] == top and r.get("rel_bytes") is not None]
        if a and b:
            pts.append((_mean(b), _mean(a), mode))
    return top, sorted(common), pts


def make_figures(out: str, acc: list[dict], modes: list[dict], recs: list[dict],
                 targets: list[dict] | None = None) -> list[str]:
    """The two figures; ``targets`` (``target_rows``) labels each sparse point of the bytes figure with
    its verdict at that context, so that a mode high on RULER accuracy alone (the paged mode, whose
    perplexity misses) does not read as the best trade."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    made = []
    common, by = context_curves(acc)
    if by:
        fig, ax = plt.subplots(figsize=(8, 5))
        for mode in [m["mode"] for m in modes if m["mode"] in by]:
            xs = sorted(by[mode])
            style = "k-o" if mode == "dense" else ("--s" if mode.startswith("window") else
                                                   (":^" if mode.startswith("paged") else "-o"))
            ax.plot(xs, [by[mode][x] for x in xs], style, label=mode, ms=4)
        ax.set_xscale("log", base=2)
        ax.set_xlabel("context (tokens)")
        over = (("the tasks every mode has at every context: " + ", ".join(common)) if common
                else "each context's tasks that every mode has there")
        ax.set_ylabel("RULER-style accuracy (%), mean over tasks\n(the items every mode decoded)", fontsize=9)
        ax.set_title(over, fontsize=8)
        ax.legend(fontsize=6, ncol=2)
        fig.tight_layout()
        p = os.path.join(out, "accuracy_vs_context.png")
        fig.savefig(p, dpi=120)
        plt.close(fig)
        made.append(p)
        top, tasks, pts = bytes_points(acc, recs)
        verdict = {t["mode"]: t["verdict"] for t in targets or [] if t["ctx"] == top}
        front = set(pareto(pts))
        fig, ax = plt.subplots(figsize=(7, 5))
        # labels in order of bytes, alternately above and below their point: modes with near-equal
        # bytes and accuracy (int4 at two budgets) would otherwise print on top of each other
        for i, (b, a, n) in enumerate(sorted(pts)):
            ax.scatter([b], [a], s=30, marker="*" if n in front else "o",
                       c="k" if n == "dense" else None)
            label = f"{n} ({verdict[n]})" if n in verdict else n
            ax.annotate(label, (b, a), fontsize=6, xytext=(3, 4 if i % 2 == 0 else -9), textcoords="offset points")
        fp = sorted((b, a) for b, a, n in pts if n in front)
        if fp:
            ax.plot(*zip(*fp), "k:", lw=1, label="Pareto front")
            ax.legend(fontsize=7)
        ax.set_xscale("log")
        ax.set_xlabel("bytes read per decode token, relative to dense (model)")
        ax.set_ylabel(f"accuracy at {top} tokens (%, the items every mode decoded)")
        ax.set_title("mean over the tasks every mode has there: " + ", ".join(tasks), fontsize=8)
        fig.tight_layout()
        p = os.path.join(out, "accuracy_vs_bytes.png")
        fig.savefig(p, dpi=120)
        plt.close(fig)
        made.append(p)
    return made


def _table(rows: list[dict], keys: list[str]) -> str:
    if not rows:
        return "(none)\n"

    def fmt(v):
        if v is None:
            return "—"
        if isinstance(v, float):
            return "nan" if math.isnan(v) else f"{v:.4g}"
        return str(v)

    s = "| " + " | ".join(keys) + " |\n|" + "---|" * len(keys) + "\n"
    for r in rows:
        s += "| " + " | ".join(fmt(r.get(k)) for k in keys) + " |\n"
    return s


def error_rows(out: str, recs: list[dict] | None = None) -> list[dict]:
    """Per mode, the decodes that raised (``errors.jsonl``, written by ``longctx.run``): how many, how
    many of them a later run has recorded since (``recs``, the run's records: a retry that succeeded),
    and the last one's job and message."""
    path = os.path.join(out, "errors.jsonl")
    if not os.path.exists(path):
        return []
    by: dict[str, list[dict]] = defaultdict(list)
    with open(path) as f:
        for line in f:
            try:
                e = json.loads(line)
            except json.JSONDecodeError:        # a line cut by a crash
                continue
            by[e.get("mode", "?")].append(e)
    done = {record_key(r) for r in recs or []}
    rows = []
    for mode, es in sorted(by.items()):
        last = es[-1]
        job = " ".join(str(last[k]) for k in ("task", "ctx", "item", "text") if last.get(k) is not None)
        since = sum(record_key(e) in done for e in es if "task" in e)     # an error line is its job's where + mode
        rows.append(dict(mode=mode, failures=len(es), recorded_since=since, last_job=job,
                         last_error=last.get("error", "")[:200]))
    return rows


def write_report(out: str, *, figures: bool = True, meta: dict | None = None) -> dict:
    recs = read_results(os.path.join(out, RESULTS))
    acc, ppl = accuracy_rows(recs), ppl_rows(recs)
    modes, layers = mode_rows(recs, acc), layer_rows(recs)
    write_csv(os.path.join(out, "accuracy.csv"), acc)
    write_csv(os.path.join(out, "perplexity.csv"), ppl)
    write_csv(os.path.join(out, "modes.csv"), modes)
    write_csv(os.path.join(out, "per_layer.csv"), layers)
    tol = tolerance_rows(recs)
    fallback = fallback_rows(recs, acc, ppl, tol)
    write_csv(os.path.join(out, "tolerance.csv"), tol)
    targets = target_rows(acc, ppl, recs)
    write_csv(os.path.join(out, "targets.csv"), targets)
    made = make_figures(out, acc, modes, recs, targets) if figures else []
    summary = dict(records=len(recs), violations=sum(m["violations"] or 0 for m in modes),
                   modes={m["mode"]: {k: v for k, v in m.items() if k != "mode"} for m in modes},
                   tolerance=dict(curves=tol, fallback=fallback),
                   targets=dict(rows=targets, smallest_budgets=smallest_budgets(targets)),
                   figures=[os.path.basename(p) for p in made], **(meta or {}))
    s = "# Long-context quality (RULER-style tasks and decoded perplexity)\n\n"
    for k in ("model", "env", "texts", "complete", "seconds"):
        if meta and k in meta:
            s += f"- {k}: {json.dumps(meta[k]) if isinstance(meta[k], dict) else meta[k]}\n"
    errors = error_rows(out, recs)
    summary["errors"] = errors
    if errors:
        s += ("\n## Errors (decodes that raised: not recorded, retried by the next run; `errors.jsonl`; "
              "recorded_since: how many of them a later run has recorded)\n\n"
              + _table(errors, ["mode", "failures", "recorded_since", "last_job", "last_error"]))
    cells = common_cells(acc)
    s += ("\n## Modes\n\n(accuracy: mean of each mode's accuracy on the items every mode decoded — `accuracy.csv`'s "
          "`accuracy_shared` — over the task and context cells every mode has, so that modes are compared on the "
          "same items, tasks and contexts: " + (", ".join(f"{t} at {c}" for t, c in cells) or "none, so no mean")
          + "; per cell: the accuracy table below; the other columns are over each mode's own records, at "
          "whatever contexts it ran)\n\n") + _table(modes, ["mode", "decoder", "records", "accuracy", "decode_steps_checked",
                                          "violations", "fallback_rate", "rel_bytes", "max_true_error",
                                          "seconds_per_record"])
    if targets:
        s += (f"\n## Issue 16's bar\n\nPer sparse mode and context against dense on the same items: every task within "
              f"{ACC_POINTS:g} point, every text's PPL within {PPL_PCT:g} %, 0 violations (two-sided: worst_task_delta "
              f"and worst_ppl_pct are signed, > 0 is more accuracy or more perplexity than dense). full_size: each of "
              f"the issue's {len(TASKS)} tasks on >= {FULL_ITEMS} items shared with dense and >= {FULL_TEXTS} texts "
              f"of >= {FULL_SCORED} scored tokens; below that a verdict rests on fewer items (one item = 100/items "
              f"points) or fewer tasks (tasks_missing).\n\n")
        s += _table(targets, ["ctx", "mode", "verdict", "worst_task", "worst_task_delta", "min_items", "worst_text",
                              "worst_ppl_pct", "texts", "violations", "full_size", "tasks_missing"])
        s += "\nSmallest exact-read budget per mode family that meets the bar:\n\n"
        s += _table(summary["targets"]["smallest_budgets"], ["ctx", "family", "budgets_run", "smallest_meeting",
                                                             "full_size"])
    notes = [f"- {m['mode']}: {m['decoder_note']}" for m in modes if m.get("decoder_note")]
    if any(m["decoder"] != "hf" for m in modes):
        notes.append(ENGINE_NOTE)
    if notes:
        s += "\nDecoders:\n\n" + "\n".join(notes) + "\n"
    phases = phase_rows(recs)
    if phases:
        s += ("\n## Time per record and phase (engine decoder, median seconds; CUDA synchronised at each phase; "
              "slowest_record: the slowest record's total, a mode's first record includes compilation)\n\n"
              + _table(phases, list(phases[0])))
    summary["prefill"] = prefill = prefill_rows(recs)
    if prefill:
        s += ("\n## Prefill (the dense prefill a job's modes share, in no mode's time above; median seconds per "
              "job, an item's share of its batch; CUDA synchronised)\n\n"
              + _table(prefill, ["ctx", "jobs", "prefill_median"]))
    curves = curve_table_rows(tol)
    if curves or fallback:
        s += ("\n## DenseFallback at tolerance t\n\nPer report-only sparse mode and context: the % of (step, head) "
              "queries whose certified error exceeds t — the fallback rate DenseFallback(t) would have (exact at "
              "the first decode step; later steps decode other outputs) — / the % whose true error (float64 dense "
              "shadow) does. Pick the smallest t whose first number is low enough to pay for (each fallback "
              "re-reads the whole context); the second says how many queries really are that wrong. Then run "
              "`cert-...-fallback@t` and read its quality below. The window has no certificate (—).\n\n")
        s += _table(curves, list(dict.fromkeys(k for r in curves for k in r)))
        s += ("\nFallback modes at their tolerance: measured fallback rate, the rate the report-only twin's "
              "certificates predict at that t (— off the grid or without the twin), `true_above`: the fraction "
              f"of the mode's queries whose returned output is still more than {RESIDUAL_T:g} from exact "
              "attention (float64 shadow), what the tolerance lets through — at one t, a mode with tighter "
              "certificates falls back less and lets more through — and quality.\n\n")
        s += _table(fallback, ["mode", "ctx", "tol", "fallback_rate", "predicted_fallback", "true_above",
                               "accuracy", "delta_vs_dense", "ppl_change_pct", "rel_bytes"])
    s += "\n## Accuracy per task and context (%; delta vs dense on the same items, points)\n\n"
    s += _table(acc, ["ctx", "task", "mode", "items", "accuracy", "delta_vs_dense"])
    s += "\n## Perplexity (decoded, teacher-forced)\n\n"
    s += _table(ppl, ["ctx", "text", "mode", "n_scored", "ppl", "ppl_change_pct"])
    s += ("\n## Per layer: certified vs true error (float64 dense shadow)\n\nThe certified error is the sparse "
          "step's bound; the true error is that of the output the layer used (dense after a fallback, so "
          "cert_over_true is meaningful for report-only modes). The window baseline has no certificate (—).\n\n")
    s += _table(layers, ["mode", "layer", "steps", "fallback_rate", "cert_err_mean", "true_err_mean",
                         "cert_over_true", "violations"])
    with open(os.path.join(out, "summary.md"), "w") as f:
        f.write(s)
    with open(os.path.join(out, "summary.json"), "w") as f:
        json.dump(json_safe(summary), f, indent=1)
    return json_safe(summary)

