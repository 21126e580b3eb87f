"""``vashista quality``: dense vs Vashista decode quality of the embedded model (issue 6).

Measures, after a dense prefill and with token-by-token decode of the evaluated part: perplexity on real
code and prose (or ``--text FILE``), passkey retrieval over a depth x context grid, a RULER-style
multi-key retrieval, and a sweep of the budget (Kc + pages·S)/context. Every sparse decode step of every
sparse layer and head is checked against a float64 dense shadow: certified error ≥ true error (a
violation is a bug and is counted). Writes CSV tables, figures and ``summary.md`` to ``--out``; ``--json``
prints the summary object (ppl_dense, ppl_sparse, passkey_dense, passkey_sparse, certificate_violations,
fallback_rate, ...). ``--quick`` is the CI configuration (short contexts, a few needles).

``--device auto`` (the default) runs on CUDA when it is available, else on the CPU; the model runs in
float32 and sparse decode uses the Triton kernels on CUDA and the PyTorch path on the CPU — the
device, its name, the backend and the torch/triton/transformers versions are in the summary
(``env``). ``--model FILE.gguf`` loads another copy of a GGUF model file (default: the embedded
SmolLM2 file, sha256-checked). The CSV tables and ``progress.json`` are rewritten after every task,
so an interrupted run still leaves the finished rows.

Example::

    vashista quality --quick --out /tmp/q --json
    vashista quality --contexts 2048 8192 --span 64 --out results/quality
    vashista quality --text README.md --contexts 1024 --out /tmp/q_readme
    vashista quality --device cuda --model /tmp/m/SmolLM2-135M-Instruct.Q4_1.gguf --contexts 8192 --no-passkey
"""
from __future__ import annotations

import argparse
import json
import math
import os
import random
import sys
import time

from vashista_core.errors import VashistaInputError
from vashista_core.policies import DenseFallback, ReportOnly

# multi-key runs at the smallest and the largest passkey context
QUICK = dict(contexts=[1024], span=16, pass_contexts=[1024], depths=[0.2, 0.8], n_keys=3, sweep=[1 / 4])
FULL = dict(contexts=[2048, 4096, 8192], span=64, pass_contexts=[2048, 4096, 8192], depths=[0.1, 0.5, 0.9],
            n_keys=4, sweep=[1 / 32, 1 / 16, 1 / 8, 1 / 4])


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="vashista quality", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="CI configuration (short contexts, < 10 min on 2 cores)")
    p.add_argument("--out", default="quality_out", help="output directory (CSV, figures, summary.md)")
    p.add_argument("--json", action="store_true", help="print the summary as one JSON object")
    p.add_argument("--text", default=None, help="UTF-8 file for the perplexity part (default: code and prose)")
    p.add_argument("--contexts", type=int, nargs="+", help="perplexity context lengths")
    p.add_argument("--pass-contexts", type=int, nargs="+", help="passkey / multi-key context lengths")
    p.add_argument("--depths", type=float, nargs="+", help="passkey needle depths in [0, 1]")
    p.add_argument("--span", type=int, help="decoded tokens per perplexity window")
    p.add_argument("--budget", type=float, default=1 / 8, help="(Kc + pages·S)/context of the main setting")
    p.add_argument("--sweep", type=float, nargs="*", help="budget fractions of the sweep (at the largest context)")
    p.add_argument("--page-size", type=int, default=16)
    p.add_argument("--dense-layers", type=int, nargs="*", default=[0, 1])
    p.add_argument("--router", default="bound", choices=["bound", "mean", "sketch"],
                   help="sketch = certified mode: the whole budget goes to candidates, every other token "
                        "is bounded through its quantized key (reads bits/16 of all keys besides)")
    p.add_argument("--bits", type=int, default=None, choices=[4, 8], help="sketch bits (router sketch)")
    p.add_argument("--policy", default="none", choices=["none", "dense_fallback"])
    p.add_argument("--tol", type=float, default=1e-2,
                   help="certified-error tolerance of dense_fallback (long-context suite: of every fallback mode "
                        "without its own @t)")
    p.add_argument("--no-passkey", action="store_true")
    p.add_argument("--no-ppl", action="store_true", help="skip the perplexity part (passkey / multi-key only)")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"],
                   help="auto = cuda when available; cuda runs sparse decode on the Triton kernels")
    p.add_argument("--model", default=None, metavar="PRESET|FILE.gguf",
                   help="a preset (smollm2-135m, the embedded default; qwen2.5-coder-0.5b, the 32k model of "
                        "scripts/install_longctx_model.sh) or a local GGUF model file")
    # the long-context suite (longctx.py): RULER-style tasks and decoded perplexity, every mode in one run
    p.add_argument("--tasks", nargs="+", default=None,
                   help="run the long-context suite: niah_single niah_multikey niah_multivalue niah_multiquery "
                        "vt cwe ppl, or ruler (the six tasks) / all; --contexts then sizes every task")
    p.add_argument("--items", type=int, default=None, help="items per task and context (long-context suite; 50)")
    p.add_argument("--batch", type=int, default=None,
                   help="items of one context decoded together, one engine run per mode (long-context suite, "
                        "engine decoder; 1)")
    p.add_argument("--modes", nargs="+", default=None,
                   help="mode names or glob patterns (long-context suite; default: all 19 at 3 budgets); "
                        "NAME@t runs a fallback mode at tolerance t, e.g. 'cert-int8-*-fallback@0.3'")
    p.add_argument("--budgets", nargs="+", default=None, help="exact-read budgets, e.g. 1/32 1/16 1/8")
    p.add_argument("--haystack", default=None, help="haystack text of the tasks (default pydoc-topics)")
    p.add_argument("--ppl-texts", nargs="+", default=None,
                   help="perplexity texts (default: one prose, code and verse text among those present)")
    p.add_argument("--text-dir", default=None, help="optional texts (default $VASHISTA_TEXT_DIR)")
    p.add_argument("--decoder", default="auto", choices=["auto", "engine", "hf"],
                   help="long-context suite: engine = vashista_gpu.engine (CUDA-graph step on GPU), hf = "
                        "transformers' forward per token (CPU/debug, the differential check); auto = engine "
                        "on CUDA, hf on the CPU")
    p.add_argument("--fresh", action="store_true", help="start the long-context run over (default: resume)")
    p.add_argument("--no-figures", action="store_true")
    p.add_argument("--merge", nargs="+", default=None, metavar="FOLDER",
                   help="merge these long-context run folders' records into --out (a later folder's record "
                        "replaces an earlier one's of the same task, context, item and mode) and write its report")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--time-limit", type=float, default=None, metavar="SECONDS",
                   help="start no new task after this many seconds (the summary then says complete: false)")
    return p


def _check(args, cfg) -> None:
    for name in ("contexts", "pass_contexts"):
        for c in cfg[name]:
            if c < 128 or c > 8192:
                raise VashistaInputError(f"--{name.replace('_', '-')}", f"contexts must be in [128, 8192] "
                                                                       f"(the model's window), got {c}")
    if not 2 <= cfg["span"] < min(cfg["contexts"]) // 2:
        raise VashistaInputError("--span", f"must be in [2, context/2), got {cfg['span']}")
    if any(not 0.0 <= d <= 1.0 for d in cfg["depths"]):
        raise VashistaInputError("--depths", "must lie in [0, 1]")
    if not 0 < args.budget <= 1 or any(not 0 < f <= 1 for f in cfg["sweep"]):
        raise VashistaInputError("--budget", "budget fractions must lie in (0, 1]")
    if args.page_size < 1:
        raise VashistaInputError("--page-size", "must be >= 1")
    from .tasks import budget_setting
    for c in set(cfg["contexts"]) | set(cfg["pass_contexts"]):
        try:
            budget_setting(c, args.budget, args.page_size)
        except VashistaInputError as e:
            raise VashistaInputError("--budget", e.problem) from None
    if args.policy == "dense_fallback" and not (math.isfinite(args.tol) and args.tol >= 0):
        raise VashistaInputError("--tol", "must be finite and >= 0")
    if args.time_limit is not None and not (math.isfinite(args.time_limit) and args.time_limit > 0):
        raise VashistaInputError("--time-limit", f"must be a positive number of seconds, got {args.time_limit}")
    if args.no_ppl and args.no_passkey:
        raise VashistaInputError("--no-ppl", "with --no-passkey there is nothing to run")
    _check_model(args.model)
    resolve_device(args.device)


def _check_model(model) -> None:
    from .longctx_model import PRESETS

    if model is None or model in PRESETS:
        return
    if not os.path.isfile(model):
        raise VashistaInputError("--model", f"{model!r} is not a file nor a preset ({', '.join(PRESETS)})")
    if not model.endswith(".gguf"):
        raise VashistaInputError("--model", f"{model!r} is not a .gguf file")


def resolve_device(device: str) -> tuple[str, str]:
    """(torch device, decode backend): cuda + triton, or cpu + torch (``auto`` = cuda when available)."""
    import torch

    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda":
        if not torch.cuda.is_available():
            raise VashistaInputError("--device", "cuda was asked for but torch sees no CUDA device")
        try:
            import triton  # noqa: F401
        except ImportError:
            raise VashistaInputError("--device", "cuda needs triton for the sparse-decode kernels") from None
        return "cuda", "triton"
    return "cpu", "torch"


def environment(device: str, backend: str, model_path: str, model_sha256: str) -> dict:
    """What ran where: reported in summary.json so a number can be traced to its device and versions."""
    import platform

    import torch
    import transformers

    try:
        import triton
        triton_version = triton.__version__
    except ImportError:
        triton_version = None
    name = torch.cuda.get_device_name(0) if device == "cuda" else (platform.processor() or platform.machine())
    return dict(device=device, device_name=name, backend=backend, dtype="float32",
                torch=torch.__version__, triton=triton_version, transformers=transformers.__version__,
                python=platform.python_version(), model=os.path.basename(model_path), model_sha256=model_sha256)


def parse(argv=None):
    """(args, cfg) of one invocation, checked; raises VashistaInputError naming the bad argument."""
    args = build_parser().parse_args(argv)
    if args.merge is not None:
        if args.tasks is not None or args.quick:
            raise VashistaInputError("--merge", "merges finished runs: it takes --out, --json and --no-figures only")
        return args, None
    if args.tasks is not None:
        from .longctx import check_args
        resolve_device(args.device)
        _check_model(args.model)
        return args, check_args(args)
    base = dict(QUICK if args.quick else FULL)
    for k in ("contexts", "pass_contexts", "depths", "span", "sweep"):
        v = getattr(args, k)
        if v is not None:
            base[k] = v
    _check(args, base)
    if args.text is not None:
        from .texts import load_text
        load_text(args.text)
    return args, base


def main(argv=None) -> int:
    try:
        args, base = parse(argv)
    except VashistaInputError as e:
        print(f"vashista quality: {e}", file=sys.stderr)
        return 2
    if args.merge is not None:
        from .longctx_report import write_report
        from .results_file import merge_results
        try:
            n = merge_results(args.out, args.merge)
        except VashistaInputError as e:
            print(f"vashista quality: {e}", file=sys.stderr)
            return 2
        summary = write_report(args.out, figures=not args.no_figures)
        print(json.dumps(summary) if args.json else f"merged {n} records; wrote {args.out}/summary.md")
        return 0
    if args.tasks is not None:
        from .longctx import main_from_args
        try:
            return main_from_args(args, base, load(args))
        except VashistaInputError as e:
            print(f"vashista quality: {e}", file=sys.stderr)
            return 2
    summary = run_suite(args, base)
    if args.json:
        print(json.dumps(summary))
    else:
        print(f"wrote {args.out}/summary.md")
    return 0


def run_suite(args, cfg, loaded=None) -> dict:
    """Run the configured tasks; ``loaded`` = (model, tokenizer, env) reuses a model already on its
    device (``vashista_app.quality.batch`` runs several configurations on one load)."""
    import numpy as np
    import torch
    from tqdm import tqdm

    from vashista_gpu.hf.stats import DecodeStats
    from . import report, tasks
    from .tasks import budget_setting, budget_tokens, multikey, passkey, perplexity
    from .texts import describe, load_text

    t0 = time.time()
    torch.manual_seed(args.seed)
    os.makedirs(args.out, exist_ok=True)
    model, tok, env = loaded if loaded is not None else load(args)
    backend = env["backend"]
    policy = ReportOnly() if args.policy == "none" else DenseFallback(args.tol)
    router_label = args.router + (f" (int{args.bits or 4} sketch)" if args.router == "sketch" else "")

    def setting(ctx, frac):
        s = budget_setting(ctx, frac, args.page_size, router=args.router)
        s.update(dense_layers=tuple(args.dense_layers), router=args.router, policy=policy, backend=backend)
        if args.router == "sketch":
            s.update(bits=args.bits or 4)
        return s

    def settings_for(ctx, sweep):
        d = {"dense": None, "sparse": setting(ctx, args.budget)}
        if sweep:
            for f in cfg["sweep"]:
                if f != args.budget:
                    try:
                        d[f"sweep:{f:g}"] = setting(ctx, f)
                    except VashistaInputError:
                        pass            # a fraction too small for this context's pages: not run
        return d

    texts = [args.text] if args.text else ["code", "prose"]
    ids = {t: tok(load_text(t), return_tensors="pt").input_ids[0] for t in texts}
    filler = tok(load_text("prose"), return_tensors="pt").input_ids[0] if not args.no_passkey else None
    sweep_ctx = max(cfg["contexts"])
    sweep_pass_ctx = max(cfg["pass_contexts"])
    jobs = [] if args.no_ppl else [("ppl", t, c, None) for t in texts for c in cfg["contexts"]]
    if not args.no_passkey:
        jobs += [("passkey", None, c, d) for c in cfg["pass_contexts"] for d in cfg["depths"]]
        multi = sorted({min(cfg["pass_contexts"]), max(cfg["pass_contexts"])})
        jobs += [("multikey", None, c, cfg["n_keys"]) for c in multi]
    merged, main_stats = DecodeStats(), DecodeStats()
    ppl_rows, pass_rows, multi_rows, sweep_rows = [], [], [], []
    violations = 0

    def absorb(st, main):
        nonlocal violations
        violations += st.violations()
        for L, recs in st.records.items():
            merged.records[L].extend(recs)
            if main:
                main_stats.records[L].extend(recs)

    timing_rows = []
    done = 0
    for kind, text, ctx, extra in tqdm(jobs, desc="quality", file=sys.stderr, mininterval=30):
        if args.time_limit is not None and time.time() - t0 > args.time_limit:
            print(f"[quality] time limit {args.time_limit:g} s reached: {len(jobs) - done} of {len(jobs)} tasks "
                  f"not run", file=sys.stderr, flush=True)
            break
        tj = time.time()
        tasks.TIMINGS.clear()
        sweep = (kind == "ppl" and ctx == sweep_ctx and text == texts[0]) or \
                (kind == "passkey" and ctx == sweep_pass_ctx and extra == cfg["depths"][len(cfg["depths"]) // 2])
        st = settings_for(ctx, sweep)
        if kind == "ppl":
            res = perplexity(model, ids[text], ctx, cfg["span"], st)
            d = res["dense"]["ppl"]
            for name, r in res.items():
                if name == "dense":
                    continue
                absorb(r["stats"], name == "sparse")
                row = dict(text=text, ctx=ctx, span=cfg["span"], P=st[name]["P"], Kc=st[name]["Kc"],
                           budget_fraction=budget_tokens(st[name]) / ctx, ppl_dense=d, ppl_sparse=r["ppl"],
                           ppl_change_pct=100 * (r["ppl"] - d) / d, violations=r["stats"].violations(),
                           fallback_rate=r["stats"].summary()["fallback_rate"])
                (ppl_rows if name == "sparse" else []).append(row)
                if sweep:
                    sweep_rows.append(dict(task="ppl", ctx=ctx, P=row["P"], Kc=row["Kc"],
                                           budget_fraction=row["budget_fraction"], ppl_change_pct=row["ppl_change_pct"],
                                           violations=row["violations"]))
        elif kind == "passkey":
            res = passkey(model, tok, filler, ctx, extra, st, seed=args.seed)
            for name, r in res.items():
                if name == "dense":
                    continue
                absorb(r["stats"], name == "sparse")
                if name == "sparse":
                    pass_rows.append(dict(ctx=ctx, depth=extra, key=r["key"], answer_dense=res["dense"]["answer"],
                                          answer_sparse=r["answer"], dense=res["dense"]["correct"],
                                          sparse=r["correct"], violations=r["stats"].violations()))
                if sweep:
                    sweep_rows.append(dict(task="passkey", ctx=ctx, P=st[name]["P"], Kc=st[name]["Kc"],
                                           budget_fraction=budget_tokens(st[name]) / ctx, accuracy=r["correct"],
                                           violations=r["stats"].violations()))
        else:
            res = multikey(model, tok, filler, ctx, extra, st, seed=args.seed)
            r = res["sparse"]
            absorb(r["stats"], True)
            multi_rows.append(dict(ctx=ctx, n_keys=extra, key=r["key"], answer_dense=res["dense"]["answer"],
                                   answer_sparse=r["answer"], dense=res["dense"]["correct"], sparse=r["correct"],
                                   violations=r["stats"].violations()))
        for name, n_tok, sec in tasks.TIMINGS:
            timing_rows.append(dict(task=kind, text=text or "", ctx=ctx, extra=extra, setting=name, tokens=n_tok,
                                    seconds=round(sec, 3), ms_per_token=round(1000 * sec / max(n_tok, 1), 2)))
        # rewritten after every task: a run stopped by a time limit keeps its finished rows
        tables = dict(perplexity=ppl_rows, passkey=pass_rows, multikey=multi_rows, sweep=sweep_rows,
                      timings=timing_rows)
        for fname, rows in tables.items():
            report.write_csv(os.path.join(args.out, f"{fname}.csv"), rows)
        with open(os.path.join(args.out, "progress.json"), "w") as f:
            json.dump(dict(done=done + 1, jobs=len(jobs),
                           seconds=round(time.time() - t0, 1), env=env), f, indent=1)
        done += 1
        tags = ", ".join(f"{n} {k} tok {1000 * s_ / max(k, 1):.0f} ms/tok" for n, k, s_ in tasks.TIMINGS)
        print(f"[quality] {kind} {text or ''} ctx={ctx} {extra if extra is not None else ''}: "
              f"{time.time() - tj:.1f} s ({tags}); total {time.time() - t0:.0f} s", file=sys.stderr, flush=True)

    layer_rows = merged.per_layer()
    for r in layer_rows:
        r["fallback_rate"] = next((m["fallback_rate"] for m in main_stats.per_layer() if m["layer"] == r["layer"]), 0.0)
    stat_rows = merged.table()
    head_rows = _per_head(stat_rows)
    report.write_csv(os.path.join(args.out, "perplexity.csv"), ppl_rows)
    report.write_csv(os.path.join(args.out, "passkey.csv"), pass_rows)
    report.write_csv(os.path.join(args.out, "multikey.csv"), multi_rows)
    report.write_csv(os.path.join(args.out, "sweep.csv"), sweep_rows)
    report.write_csv(os.path.join(args.out, "per_layer.csv"), layer_rows)
    report.write_csv(os.path.join(args.out, "per_head.csv"), head_rows)
    largest = [r for r in ppl_rows if r["ctx"] == max(cfg["contexts"])]
    mean = lambda xs: float(np.mean(xs)) if xs else float("nan")  # noqa: E731
    ms = main_stats.summary()
    summary = dict(
        ppl_dense=mean([r["ppl_dense"] for r in largest]), ppl_sparse=mean([r["ppl_sparse"] for r in largest]),
        ppl_change_pct=mean([r["ppl_change_pct"] for r in largest]),
        max_abs_ppl_change_pct=max((abs(r["ppl_change_pct"]) for r in ppl_rows), default=float("nan")),
        ppl_context=max(cfg["contexts"]),
        passkey_dense=mean([r["dense"] for r in pass_rows]), passkey_sparse=mean([r["sparse"] for r in pass_rows]),
        multikey_dense=mean([r["dense"] for r in multi_rows]), multikey_sparse=mean([r["sparse"] for r in multi_rows]),
        certificate_violations=int(violations), steps_checked=int(merged.summary()["steps"]),
        fallback_rate=ms["fallback_rate"], budget_fraction=args.budget,
        complete=done == len(jobs), jobs_done=done, jobs_total=len(jobs),
        texts=", ".join(describe(t) for t in texts) if not args.no_ppl else "", seconds=round(time.time() - t0, 1),
        settings=(f"page_size={args.page_size}, dense_layers={args.dense_layers}, router={router_label}, "
                  f"policy={args.policy}, budget={args.budget:g} of the context, span={cfg['span']}, "
                  f"quick={args.quick}"),
        env=env)
    if not args.no_figures:
        rng = random.Random(args.seed)
        sample = stat_rows if len(stat_rows) <= 20000 else rng.sample(stat_rows, 20000)
        report.figures(args.out, sweep_rows, sample, layer_rows)
    with open(os.path.join(args.out, "summary.md"), "w") as f:
        f.write(report.markdown(summary, ppl_rows, pass_rows, multi_rows, sweep_rows, layer_rows))
    with open(os.path.join(args.out, "summary.json"), "w") as f:
        json.dump(summary, f, indent=1)
    return summary


def load(args) -> tuple:
    """(model, tokenizer, env) for ``--device`` / ``--model``: float32 on the resolved device."""
    import torch

    from vashista_gpu.hf import load_default_model, load_model_file
    from vashista_gpu.hf.model import DEFAULT_SHA256, default_model_path, sha256_file

    from .longctx_model import PRESETS, load_model_preset

    t0 = time.time()
    device, backend = resolve_device(args.device)
    if device == "cuda":
        # float32 means float32: no TF32 in the dense matmuls the sparse ones are compared with
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
    if args.model is None:
        model, tok = load_default_model(shared=True, device=device)
        model_path, model_sha = default_model_path(), DEFAULT_SHA256
    elif args.model in PRESETS:
        model, tok, info = load_model_preset(args.model, device=device)
        model_path, model_sha = info["path"], info["sha256"]
    else:
        model, tok = load_model_file(args.model, device=device)
        model_path, model_sha = args.model, sha256_file(args.model)
    if next(model.parameters()).dtype != torch.float32:
        model.float()
    env = environment(device, backend, model_path, model_sha)
    print(f"[quality] {json.dumps(env)}; model loaded in {time.time() - t0:.1f} s", file=sys.stderr, flush=True)
    return model, tok, env


def _per_head(stat_rows: list[dict]) -> list[dict]:
    import numpy as np
    groups: dict = {}
    for r in stat_rows:
        groups.setdefault((r["layer"], r["head"]), []).append(r)
    out = []
    for (L, h), rs in sorted(groups.items()):
        row = dict(layer=L, head=h, steps=len(rs),
                   certified_error_mean=float(np.mean([r["certified_error"] for r in rs])),
                   fallback_rate=float(np.mean([r["fell_back"] for r in rs])),
                   gap_median=float(np.median([r["gap"] for r in rs])))
        if "true_error" in rs[0]:
            row.update(true_error_mean=float(np.mean([r["true_error"] for r in rs])),
                       true_leakage_mean=float(np.mean([r["true_leakage"] for r in rs])),
                       violations=int(sum(r["true_error"] > r["certified_error"] + r["allowance"] for r in rs)),
                       delta_lin_median=float(np.median([r["delta_lin"] for r in rs])),
                       support90_median=float(np.median([r["support90"] for r in rs])),
                       support99_median=float(np.median([r["support99"] for r in rs])))
        out.append(row)
    return out


if __name__ == "__main__":
    sys.exit(main())
