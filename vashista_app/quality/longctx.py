"""``vashista quality --tasks ...``: RULER-style accuracy and decoded perplexity, every mode in one run.

Jobs are (task, context, item) for the RULER-style tasks (``ruler.py``) and (``ppl``, context, text) for
perplexity; each job is prefilled densely once and then decoded under every mode (``modes.py``) through
a decoder (``decoder.py``'s HF path, or the engine's: ``engine_decoder.py``, the default on CUDA,
``--decoder`` picks). Each record names the decoder that ran it. One JSON line per (job, mode) is
appended to ``OUT/results.jsonl`` and flushed as soon as it is known, so a stopped run loses at most
the mode it was in: run the same command again and every (job, mode) already in the file is skipped
(``--fresh`` starts over). ``OUT/config.json`` pins what the items depend on (seed, haystack, model,
dense layers, span, tolerance); resuming with another one is refused.

Batches (``--batch N``, default 1): up to N consecutive item jobs of one context are prefilled once
each and decoded together under each mode, one engine run per (group, mode) with one row per item
(``EngineDecoder.run_batch``), so the engine's fixed cost per run and its per-step latency are shared
by N items; every item still gets its own record, the same as with ``--batch 1`` but for ``seconds``
and ``phases`` (the batch's, divided by its rows; ``prefill_seconds``, the job's dense prefill, shared
by its modes, is the item's own share of its group's) — on CUDA up to the rounding of differently shaped
launches (``engine_decoder.py``, "Batches"). Perplexity jobs stay single. The HF decoder has no
batches: ``--batch`` > 1 is refused with it.

Perplexity: a window of ``ctx`` tokens of each text; the first ``ctx - span`` tokens are prefilled, the
last ``span`` fed one decode step at a time, scoring the ``span - 1`` tokens that decode steps predict
(``--span 513`` scores 512), so every scored token goes through the mode's sparse steps.

Each record carries the mode's statistics over its sparse layers: decode steps, fallback rate,
certificate violations against the float64 dense shadow, per-layer certified and true error, the
modelled bytes read per decode step relative to dense (``modes.relative_bytes``, fallbacks included),
the DenseFallback tolerance the mode ran at (``tol``: the mode's ``@t`` or ``--tol``; None without
fallback), and the exceedance curves on ``tol_grid`` (``modes.TOL_GRID``): ``cert_exceeds`` /
``true_exceeds``, the fraction of (step, head) queries whose certified / true error exceeds each
tolerance, over the sparse layers and per layer (the window baseline has no certificate: its
``cert_exceeds`` is None). ``longctx_report.py`` turns the file into tables and figures.

Picking a tolerance (``modes.py``, "Picking a tolerance"): run the report-only modes, read in the
report's "DenseFallback at tolerance t" where the certified curve — the fallback rate DenseFallback(t)
would have — is low enough, then run ``cert-...-fallback@t`` (a new mode name: it resumes into the
same folder) and compare its accuracy and measured fallback rate.

Example::

    vashista quality --tasks all --contexts 4096 --items 5 --modes dense 'cert-int8-1/16-*' paged-1/16 \\
        window-1/16 --out results/longctx_cpu
    vashista quality --tasks all --contexts 32768 --items 50 --batch 8 --out results/longctx_gpu   # on CUDA
    vashista quality --tasks all --contexts 4096 --items 5 --modes dense 'cert-int8-1/16-*' \\
        'cert-int8-1/16-fallback@0.3' --out results/longctx_cpu          # resumes: only the new mode runs
"""
from __future__ import annotations

import json
import math
import os
import sys
import time

from vashista_core.errors import VashistaInputError

from . import haystacks, longctx_report
from .longctx_model import PRESETS
from .modes import (DEFAULT_BUDGETS, TOL_GRID, bounded, exact_tokens, mode_setting, parse_budget, relative_bytes,
                    select_modes)
from .results_file import ResultsFile, pin_config
from .ruler import TASKS, Haystack, HFCodec, make_item, score, string_match_all

GENERATOR_VERSION = 1          # bump when an item's content changes for the same seed
PPL = "ppl"


# ----------------------------------------------------------------------------------------- arguments

def parse_tasks(spec: list[str]) -> list[str]:
    out = []
    for t in spec:
        for name in t.split(","):
            name = name.strip()
            if name == "all":
                out += list(TASKS) + [PPL]
            elif name == "ruler":
                out += list(TASKS)
            elif name in TASKS or name == PPL:
                out.append(name)
            elif name:
                raise VashistaInputError("--tasks", f"unknown task {name!r}; tasks: {', '.join(TASKS)}, ppl, "
                                                    f"ruler (all six), all")
    return list(dict.fromkeys(out))


def check_args(args, max_context: int | None = None) -> dict:
    """The run's configuration from ``vashista quality`` arguments; VashistaInputError naming the bad one."""
    tasks = parse_tasks(args.tasks)
    if not tasks:
        raise VashistaInputError("--tasks", "no task given")
    contexts = args.contexts or [4096]
    if max_context is None:
        # a preset knows its window; a model file's window is known only once loaded (then the model
        # itself refuses what it cannot take)
        max_context = PRESETS[args.model or "smollm2-135m"].max_context if (args.model or "smollm2-135m") in PRESETS \
            else 131072
    for c in contexts:
        if not 256 <= c <= max_context:
            raise VashistaInputError("--contexts", f"contexts must be in [256, {max_context}] (the model's window), "
                                                   f"got {c}")
    items = 50 if args.items is None else args.items
    if isinstance(items, bool) or items < 1:
        raise VashistaInputError("--items", f"must be >= 1, got {items}")
    budgets = [parse_budget(b) for b in args.budgets] if args.budgets else list(DEFAULT_BUDGETS)
    modes = select_modes(args.modes, budgets)
    for m in modes:
        for c in contexts:
            try:
                mode_setting(m, c)
            except VashistaInputError as e:
                raise VashistaInputError("--budgets", f"mode {m.name} at {c} tokens: {e.problem}") from None
    span = 513 if args.span is None else args.span
    if PPL in tasks and not 2 <= span <= min(contexts) // 2:
        raise VashistaInputError("--span", f"must be in [2, context/2] for ppl, got {span}")
    have = haystacks.available(args.text_dir)
    hay = args.haystack or "pydoc-topics"
    if hay not in have:
        raise VashistaInputError("--haystack", f"{hay!r} is not available (have: {', '.join(have)})")
    ppl_texts = args.ppl_texts or haystacks.default_ppl_texts(args.text_dir)
    for t in ppl_texts:
        if t not in have:
            raise VashistaInputError("--ppl-texts", f"{t!r} is not available (have: {', '.join(have)})")
    if not (math.isfinite(args.tol) and args.tol >= 0):
        raise VashistaInputError("--tol", "must be finite and >= 0")
    batch = 1 if getattr(args, "batch", None) is None else args.batch
    if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
        raise VashistaInputError("--batch", f"must be an integer >= 1, got {batch!r}")
    if batch > 1 and getattr(args, "decoder", "auto") == "hf":
        raise VashistaInputError("--batch", "the HF decoder decodes one item at a time; batching items needs the "
                                            "engine decoder (--decoder engine or auto on CUDA): use --batch 1 with hf")
    return dict(tasks=tasks, contexts=sorted(contexts), items=items, modes=[m.name for m in modes],
                mode_objs=modes, span=span, haystack=hay, ppl_texts=ppl_texts, seed=args.seed, tol=args.tol,
                dense_layers=list(args.dense_layers), text_dir=args.text_dir, batch=batch)


# ----------------------------------------------------------------------------------------- one record

def _fractions(counts, queries: int):
    return None if counts is None else [c / queries if queries else 0.0 for c in counts]


def exceedance_fields(stats, mode) -> tuple[dict, dict]:
    """The exceedance curves of one decode on ``TOL_GRID`` (module doc): the record's totals over the
    sparse layers, and per layer {layer: curves}."""
    rows = stats.exceedance(TOL_GRID)
    cert = bounded(mode.kind)
    layers = {r["layer"]: dict(cert_exceeds=_fractions(r["certified"], r["queries"]) if cert else None,
                               true_exceeds=_fractions(r["true"], r["queries"])) for r in rows}
    q = sum(r["queries"] for r in rows)

    def total(key):
        if not rows or any(r[key] is None for r in rows):
            return None
        return _fractions([sum(c) for c in zip(*(r[key] for r in rows))], q)
    return dict(tol_grid=list(TOL_GRID), cert_exceeds=total("certified") if cert else None,
                true_exceeds=total("true")), layers


def stats_fields(stats, mode, ctx: int, model_shape: dict) -> dict:
    """Statistics of one (job, mode) decode for the record (see module docstring)."""
    if stats is None:
        return dict(decode_steps=None, fallback_rate=0.0, violations=0, per_layer=[],
                    rel_bytes=relative_bytes(mode, ctx, **model_shape), exact_tokens=exact_tokens(mode, ctx))
    s = stats.summary()
    curves, layer_curves = exceedance_fields(stats, mode)
    layers = []
    for r in stats.per_layer():
        layers.append(dict(layer=r["layer"], steps=r["steps"], fallback_rate=r["fallback_rate"],
                           cert_err_mean=r["certified_error_mean"], true_err_mean=r.get("true_error_mean"),
                           violations=r.get("violations"), **layer_curves[r["layer"]]))
    return dict(decode_steps=s["steps"], fallback_rate=s["fallback_rate"], violations=s["certificate_violations"],
                shadow=s["shadow"], max_true_error=s.get("max_true_error"), per_layer=layers,
                rel_bytes=relative_bytes(mode, ctx, fallback_rate=s["fallback_rate"], **model_shape),
                exact_tokens=exact_tokens(mode, ctx), **curves)


def _mode_fields(m, r) -> dict:
    """The mode of a record, the DenseFallback tolerance it ran at (``r.tol``: None without fallback)
    and which decoder ran it (``r`` its DecodeResult: ``decoder_note`` says why a mode stayed on the HF
    decoder in an engine run)."""
    return dict(mode=m.name, kind=m.kind, budget=None if m.budget is None else float(m.budget), bits=m.bits,
                policy=m.policy if m.kind == "certified" else None, tol=getattr(r, "tol", None),
                decoder=getattr(r, "decoder", "hf"), decoder_note=getattr(r, "decoder_note", None),
                phases=getattr(r, "phases", None))


# ----------------------------------------------------------------------------------------- the run

def jobs_of(cfg: dict) -> list[tuple]:
    """(task, ctx, item or text) in run order: contexts small to large; within one, item 0 of every
    task, then the perplexity texts, then item 1 of every task, ... — so a run cut short by its time
    limit still has every task and the perplexity at the contexts it reached."""
    jobs = []
    tasks = [t for t in cfg["tasks"] if t != PPL]
    for c in cfg["contexts"]:
        for i in range(cfg["items"]):
            jobs += [(t, c, i) for t in tasks]
            if i == 0 and PPL in cfg["tasks"]:
                jobs += [(PPL, c, text) for text in cfg["ppl_texts"]]
    return jobs


# a mode whose decode raised this many times in one run is left out for the rest of it (each failure
# may cost a compilation or a whole prefill's worth of device time)
MAX_MODE_FAILURES = 2


def _fatal(e: BaseException) -> bool:
    """Errors after which nothing else can run in this process: bad input (the configuration is wrong
    for every job), interrupts, and CUDA errors that leave the context unusable (an out-of-memory is
    not one of them: the next mode or job may fit)."""
    if isinstance(e, (VashistaInputError, KeyboardInterrupt, SystemExit)):
        return True
    msg = str(e)
    return "CUDA error" in msg or "cudaError" in msg or "device-side assert" in msg


class _Failures:
    """A decode that raised is logged to ``OUT/errors.jsonl``, one line per (job, mode) it was for (a
    batch: each of its items), and not recorded, so a later run retries them; the run goes on with the
    other modes and jobs. A mode is left out after ``MAX_MODE_FAILURES`` failed decodes (a batch's
    failure is one)."""

    def __init__(self, out: str):
        self.path = os.path.join(out, "errors.jsonl")
        self.per_mode: dict[str, int] = {}
        self.records = 0

    def skip(self, mode) -> bool:
        return self.per_mode.get(mode.name, 0) >= MAX_MODE_FAILURES

    def log(self, e: Exception, mode, wheres: list[dict]) -> None:
        import traceback

        self.per_mode[mode.name] = self.per_mode.get(mode.name, 0) + 1
        self.records += len(wheres)
        err = dict(mode=mode.name, error=f"{type(e).__name__}: {e}"[:2000],
                   traceback="".join(traceback.format_exception(e)[-6:])[-4000:],
                   time=time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()))
        with open(self.path, "a") as f:
            for where in wheres:
                f.write(json.dumps(dict(where, **err)) + "\n")
        gone = " (left out for the rest of this run)" if self.skip(mode) else ""
        on = wheres[0] if len(wheres) == 1 else f"a batch of {len(wheres)} items from {wheres[0]}"
        print(f"[quality] {mode.name} failed on {on}: {err['error'][:300]}{gone}; see {self.path}",
              file=sys.stderr, flush=True)
        if "OutOfMemory" in type(e).__name__:
            import torch
            torch.cuda.empty_cache()

    def total(self) -> int:
        """The (job, mode) records that failed."""
        return self.records


def _units(jobs: list[tuple], todo_of, batch: int):
    """The run's units of work in job order: (index of its first job, [(job, modes to do)]). A ppl job
    is a unit of its own; up to ``batch`` consecutive item jobs of one context form one (a ppl job or
    another context closes a group). A job with nothing to do (``todo_of`` empty) is in none."""
    group: list = []
    first = 0
    for n, job in enumerate(jobs):
        todo = todo_of(job)
        if not todo:
            continue
        if group and (job[0] == PPL or job[1] != group[0][0][1]):
            yield first, group
            group = []
        if job[0] == PPL:
            yield n, [(job, todo)]
            continue
        if not group:
            first = n
        group.append((job, todo))
        if len(group) == batch:
            yield first, group
            group = []
    if group:
        yield first, group


def _prefill(decoder, contexts: list) -> tuple[list, float]:
    """The dense prefill state of each context, and each one's share of the seconds they took together
    (the device's queued work included: a prefill returns before its kernels end)."""
    import torch

    t0 = time.perf_counter()
    states = [decoder.prefill(c) for c in contexts]
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.synchronize()
    return states, round((time.perf_counter() - t0) / len(contexts), 3)


def run(cfg: dict, decoder, codec, out: str, *, model_shape: dict, pinned: dict, fresh: bool = False,
        time_limit: float | None = None, progress: bool = True) -> dict:
    """Run every (job, mode) not yet in ``OUT/results.jsonl``; returns counts (done, skipped, left,
    failed: a decode that raised is logged to ``OUT/errors.jsonl``, not recorded, and retried by the
    next run; a mode failing ``MAX_MODE_FAILURES`` times is left out for the rest of the run).

    ``cfg["batch"]`` (``--batch``, default 1): with N > 1, up to N consecutive item jobs of one context
    (any tasks; ppl jobs stay single) are decoded together (``_units``): each item is prefilled once,
    then for every mode the items of the group whose record of that mode is not yet in the file run as
    one batch (``decoder.run_batch``: the engine decoder only, ``engine_decoder.py``), and each gets its
    own record, as with N = 1. A failing batch logs its error for each of its items. The time limit is
    checked before each group, so one group (all its modes) may overrun it."""
    from tqdm import tqdm

    batch = cfg.get("batch", 1)
    if batch > 1 and not hasattr(decoder, "run_batch"):
        raise VashistaInputError("--batch", f"the {getattr(decoder, 'name', type(decoder).__name__)} decoder "
                                            f"decodes one item at a time; batching items needs the engine decoder "
                                            f"(--decoder engine): use --batch 1 here")
    t0 = time.time()
    pin_config(out, pinned, fresh)
    res = ResultsFile(os.path.join(out, "results.jsonl"))
    modes = cfg["mode_objs"]
    jobs = jobs_of(cfg)
    texts: dict[str, list[int]] = {}
    hay = None
    counts = dict(records_new=0, records_skipped=0, jobs_left=0, records_failed=0)
    failures = _Failures(out)
    bar = tqdm(total=len(jobs), desc="quality", file=sys.stderr, disable=not progress, mininterval=5, unit="job")

    def todo_of(job):
        bar.update(1)
        todo = [m for m in modes if (*job, m.name) not in res.done]
        counts["records_skipped"] += len(modes) - len(todo)
        return todo

    def attempt(m, wheres, decode):
        if failures.skip(m):
            return None
        try:
            return decode()
        except Exception as e:          # noqa: BLE001 — one (job, mode) must not end a long run
            if _fatal(e):
                raise
            failures.log(e, m, wheres)
            return None
    for first, unit in _units(jobs, todo_of, batch):
        if time_limit is not None and time.time() - t0 > time_limit:
            counts["jobs_left"] = len(jobs) - first
            print(f"[quality] time limit {time_limit:g} s: {counts['jobs_left']} jobs left; run again to resume",
                  file=sys.stderr, flush=True)
            break
        (task, ctx, which), todo = unit[0]
        if task == PPL:
            if which not in texts:
                texts[which] = codec.encode(haystacks.load(which, cfg["text_dir"]))
            ids = texts[which]
            if len(ids) < ctx:
                raise VashistaInputError("--ppl-texts", f"{which} has {len(ids)} tokens, fewer than {ctx}")
            span = cfg["span"]
            (state,), pre = _prefill(decoder, [ids[:ctx - span]])
            for m in todo:
                bar.set_postfix_str(f"{task} {ctx} {which} {m.name}")
                r = attempt(m, [dict(task=PPL, ctx=ctx, text=which)],
                            lambda: decoder.run(state, m, ctx, ids[ctx - span:ctx], 0))
                if r is None:
                    continue
                nll = sum(r.nll)
                res.append(dict(task=PPL, ctx=ctx, text=which, **_mode_fields(m, r), n_scored=len(r.nll), nll_sum=nll,
                                ppl=math.exp(nll / len(r.nll)), seconds=round(r.seconds, 2), prefill_seconds=pre,
                                **stats_fields(r.stats, m, ctx, model_shape)))
                counts["records_new"] += 1
            continue
        if hay is None:
            hay = Haystack(codec, haystacks.load(cfg["haystack"], cfg["text_dir"]), cfg["haystack"])
        items = [make_item(t, c, w, codec, hay, seed=cfg["seed"]) for (t, c, w), _ in unit]
        states, pre = _prefill(decoder, [it.context for it in items])   # pre: each item's share, every mode's
        stops = [(lambda g, it=it: string_match_all(codec.decode(g), it.answers) == 1.0) for it in items]
        for m in modes:
            rows = [k for k, (_, todo) in enumerate(unit) if m in todo]
            if not rows:
                continue
            wheres = [dict(task=unit[k][0][0], ctx=ctx, item=unit[k][0][2]) for k in rows]
            bar.set_postfix_str(f"{wheres[0]['task']} {ctx} #{wheres[0]['item']}"
                                + (f" +{len(rows) - 1}" if len(rows) > 1 else "") + f" {m.name}")
            if batch == 1:
                (k,) = rows
                rs = attempt(m, wheres, lambda: [decoder.run(states[k], m, ctx, items[k].query, items[k].max_new,
                                                             stop=stops[k])])
            else:
                rs = attempt(m, wheres, lambda: decoder.run_batch([states[k] for k in rows], m, ctx,
                                                                  [items[k].query for k in rows],
                                                                  [items[k].max_new for k in rows],
                                                                  [stops[k] for k in rows]))
            if rs is None:
                continue
            for k, r in zip(rows, rs):
                item, pred = items[k], codec.decode(r.generated)
                # a batched record's seconds (and phases) are the batch's divided by its rows (run_batch)
                res.append(dict(task=unit[k][0][0], ctx=ctx, item=unit[k][0][2], **_mode_fields(m, r),
                                score=score(item, pred), prediction=pred, answers=item.answers,
                                depth=item.depths[0] if item.depths else None, generated=len(r.generated),
                                seconds=round(r.seconds, 2), prefill_seconds=pre,
                                **stats_fields(r.stats, m, ctx, model_shape)))
                counts["records_new"] += 1
    bar.close()
    counts["records_failed"] = failures.total()
    counts["seconds"] = round(time.time() - t0, 1)
    counts["complete"] = counts["jobs_left"] == 0 and counts["records_failed"] == 0
    return counts


# ----------------------------------------------------------------------------------------- CLI entry

def main_from_args(args, cfg: dict, loaded: tuple) -> int:
    """``vashista quality --tasks ...`` after ``cli.parse`` and ``cli.load``: run, write the report."""
    from .decoder import HFDecoder
    from .engine_decoder import EngineDecoder, pick_decoder

    model, tok, env = loaded
    mc = model.config
    shape = dict(head_dim=getattr(mc, "head_dim", None) or mc.hidden_size // mc.num_attention_heads,
                 n_layers=mc.num_hidden_layers, dense_layers=len(set(cfg["dense_layers"])))
    pinned = dict(seed=cfg["seed"], haystack=cfg["haystack"], model_sha256=env["model_sha256"],
                  dense_layers=cfg["dense_layers"], span=cfg["span"], tol=cfg["tol"],
                  generator_version=GENERATOR_VERSION)
    which = pick_decoder(args.decoder, env["device"])
    make = EngineDecoder if which == "engine" else HFDecoder
    decoder = make(model, tok, dense_layers=cfg["dense_layers"], backend=env["backend"], tol=cfg["tol"])
    env = dict(env, decoder=which)
    counts = run(cfg, decoder, HFCodec(tok), args.out, model_shape=shape, pinned=pinned, fresh=args.fresh,
                 time_limit=args.time_limit)
    texts = {t: haystacks.describe(t, cfg["text_dir"]) for t in [cfg["haystack"], *cfg["ppl_texts"]]}
    summary = longctx_report.write_report(args.out, figures=not args.no_figures,
                                          meta=dict(env=env, model=args.model or "smollm2-135m", texts=texts,
                                                    **counts))
    if args.json:
        print(json.dumps(summary))
    else:
        failed = f", {counts['records_failed']} failed (errors.jsonl; a rerun retries them)" \
            if counts["records_failed"] else ""
        print(f"wrote {args.out}/summary.md ({counts['records_new']} new records, "
              f"{counts['records_skipped']} already done{failed})")
    return 1 if counts["records_failed"] else 0
