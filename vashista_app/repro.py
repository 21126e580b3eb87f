"""``vashista repro``: regenerate the paper's tables and figures from this library's own code.

Nothing here is an algorithm: every number comes from ``vashista_gpu.decode.sparse_decode`` /
``vashista_gpu.dense.dense_decode`` (decode), ``vashista_app.notebook_baseline`` (the
paper notebook's step), ``vashista_ref.softmax_model.softmax_certificate`` (leakage),
``vashista_ref.entropic.entropic_projection`` and ``vashista_ref.projection.project_onto_hull``
(Wolfe, no cvxpy) for the face error and the support gap. This module only chooses sizes, times,
tabulates and draws.

Artifacts under ``--out`` (default ``./artifacts``)::

    tables/scaling_decode.csv            T, dense/notebook/sparse ms, speedup, P, Kc, solver, card
                                         (sparse_ms: the whole sparse_decode call, host planning
                                         included; sparse_planned_ms: run_plan, the device part of a
                                         step planned once; speedup = dense_ms / sparse_planned_ms.
                                         benchmarks/decode_scaling.py adds CUDA-graph replay)
    tables/ablation_P_Kc_solver.csv      P x Kc x solver: latency, certified error, true error, fallback rate
    tables/leakage_vs_eps.csv, tables/face_error_vs_eps.csv, tables/support_gap.csv
    plots/figure_decode_scaling.{pdf,png}, plots/heatmap_sparse_ms_{softmax,eg,fw}.{pdf,png},
    plots/leakage_vs_eps.{pdf,png}, plots/face_error_vs_eps.{pdf,png}, plots/support_gap_hist.{pdf,png}
    manifest.json                        versions, device, seed, command line, sizes, wall time, notes
    vashista_repro.zip                   all of the above

Sizes: on a GPU the paper's shapes (batch 16, 32 heads, head dim 128, bf16, T up to 128k); on a CPU
reduced sizes in float32 through the PyTorch path (``--quick`` smaller still, for CI). The manifest
and every decode figure say which. Queries are "needle" queries (a multiple of one outlier key
plus noise; see ``needle_problem``) so the support gap is positive and the certificate has something
to certify. ``true_error_max`` is ‖sparse − dense softmax attention‖ (max over rows and heads); for
eg/fw it also contains the model difference (projection model vs softmax), not only sparsification.

Timing: ``vashista_app.timing.bench`` (CUDA-event medians on a GPU, the harness the benchmarks use;
wall-clock medians of the mode's ``reps`` calls on a CPU).

Determinism: under one ``--seed`` two runs write identical tables except the ``*_ms`` and
``speedup`` columns (timings).

Example
-------
>>> from vashista_app.repro import main
>>> main(["--quick", "--out", "/tmp/vashista_artifacts"])     # doctest: +SKIP
0
"""
from __future__ import annotations

import csv
import gc
import json
import math
import platform
import sys
import time
import zipfile
from pathlib import Path

import numpy as np
import torch

from vashista_core.cli_args import Parser, nonneg_int, output_dir, report
from vashista_core.errors import VashistaInputError
from vashista_core.options import SOLVERS

from .notebook_baseline import notebook_baseline
from .timing import bench

__all__ = ["ABLATION_KC", "ABLATION_P", "EPS_GRID", "SOLVERS", "TIMING_COLUMNS", "ablation_rows",
           "face_error_rows", "leakage_rows", "main", "run", "scaling_rows", "sizes", "support_gap_rows"]

TIMING_COLUMNS = ("dense_ms", "notebook_ms", "sparse_ms", "sparse_planned_ms", "speedup", "latency_ms")
ABLATION_P = (32, 64, 96)
ABLATION_KC = (64, 128, 192)
EPS_GRID = tuple(float(e) for e in np.geomspace(3e-3, 3.0, 10))


def sizes(*, cuda: bool, quick: bool) -> dict:
    """Shapes for this run: the paper's on a GPU, reduced on a CPU (smaller still with ``quick``)."""
    if cuda and not quick:
        return dict(mode="paper shapes (GPU)", B=16, H=32, D=128, S=16, dtype="bfloat16",
                    Ts=[8192, 16384, 32768, 65536, 131072], T_ablation=32768, reps=20, n_gap=64)
    if quick:
        return dict(mode="CPU reduced sizes (quick)" if not cuda else "GPU reduced sizes (quick)",
                    B=1, H=2, D=32, S=16, dtype="float32", Ts=[2048, 4096], T_ablation=2048, reps=2,
                    n_gap=16)
    return dict(mode="CPU reduced sizes", B=2, H=4, D=64, S=16, dtype="float32",
                Ts=[2048, 4096, 8192, 16384], T_ablation=4096, reps=3, n_gap=32)


def needle_row(b: int, H: int, T: int, D: int, *, seed: int, device, dtype):
    """Batch row ``b`` of the needle problem: q (H, D), keys and values (H, T, D).

    Keys/values ~ N(0, 1) except one random token t per head whose key is scaled by 4 (an outlier,
    like the large-norm keys of real heads); q = 2·k_t^orig + N(0, 1): the needle wins by ~8√D in score
    and its page's min/max box stands out. Seeded per row, so the same row can be regenerated (the
    paper shapes do not fit twice in GPU memory: dense tensors, then the paged cache).

    Why the outlier: with an isotropic needle (k_t ~ N(0, 1) like the rest) every page's box bound
    is about Σ_i |q_i|·max|k_i|, so the bound router cannot tell the needle's page apart and the
    certificate (correctly) certifies nothing -- measured at D = 32, T = 4096: true error 5.1,
    certified 12, fallback rate 1.0 everywhere. That is the support-gap story of notebook 03.
    """
    g = torch.Generator(device=device).manual_seed(seed * 100_003 + b)
    K = torch.randn(H, T, D, generator=g, device=device)
    V = torch.randn(H, T, D, generator=g, device=device)
    t = torch.randint(0, T, (H,), generator=g, device=device)
    hi = torch.arange(H, device=device)
    q = 2.0 * K[hi, t] + torch.randn(H, D, generator=g, device=device)
    K[hi, t] *= 4.0
    return q.to(dtype), K.to(dtype), V.to(dtype)


def needle_dense(B, H, T, D, *, seed, device, dtype):
    """The whole needle problem as contiguous q (B, H, D), K, V (B, H, T, D)."""
    q = torch.empty(B, H, D, device=device, dtype=dtype)
    K = torch.empty(B, H, T, D, device=device, dtype=dtype)
    V = torch.empty(B, H, T, D, device=device, dtype=dtype)
    for b in range(B):
        q[b], K[b], V[b] = needle_row(b, H, T, D, seed=seed, device=device, dtype=dtype)
    return q, K, V


def needle_cache(B, H, T, D, S, *, seed, device, dtype):
    """The same problem in a paged cache, one row generated at a time (peak memory: the cache)."""
    from vashista_gpu.paged_cache import TorchPagedKVCache
    NP = -(-T // S)
    cache = TorchPagedKVCache(S, H, D, num_pages=B * NP, max_seqs=B, max_pages_per_seq=NP,
                              dtype=dtype, device=device)
    ids = []
    for b in range(B):
        _, K, V = needle_row(b, H, T, D, seed=seed, device=device, dtype=dtype)
        ids.append(cache.add_sequence())
        cache.append(ids[-1], K.transpose(0, 1).contiguous(), V.transpose(0, 1).contiguous())
        del K, V
    return cache, ids


def _free(cuda: bool) -> None:
    gc.collect()
    if cuda:
        torch.cuda.empty_cache()


def scaling_rows(sz: dict, *, seed: int, device, cuda: bool, card: str, P: int = 64, Kc: int = 128,
                 progress=None) -> list[dict]:
    """One row per context length: dense SDPA, the notebook baseline and Vashista sparse decode."""
    from vashista_gpu.decode import run_plan, sparse_decode
    from vashista_gpu.dense import sdpa_decode
    from vashista_gpu.plan import plan_decode
    dtype = getattr(torch, sz["dtype"])
    B, H, D, S = sz["B"], sz["H"], sz["D"], sz["S"]
    scale = D ** -0.5
    rows = []
    for T in sz["Ts"]:
        # phase 1: contiguous tensors for dense SDPA (flash on a GPU) and the paper-notebook step
        q, K, V = needle_dense(B, H, T, D, seed=seed + T, device=device, dtype=dtype)
        NP = T // S
        Kp, Vp = K.view(B, H, NP, S, D), V.view(B, H, NP, S, D)
        means = Kp.float().mean(3).to(dtype)
        dense_ms = bench(lambda: sdpa_decode(q, K, V, scale), cuda=cuda, reps=sz["reps"])
        nb_ms = bench(lambda: notebook_baseline(q, Kp, Vp, means, min(P, NP), Kc, scale), cuda=cuda,
                        reps=sz["reps"])
        dn = sdpa_decode(q, K, V, scale).float()
        del K, V, Kp, Vp, means
        _free(cuda)
        # phase 2: the same rows regenerated into the paged cache
        cache, ids = needle_cache(B, H, T, D, S, seed=seed + T, device=device, dtype=dtype)
        sp_ms = bench(lambda: sparse_decode(q, cache, ids, P, Kc, scale=scale), cuda=cuda, reps=sz["reps"])
        # the device part alone (planned once on the host, as a serving loop would; no CUDA graph)
        plan = plan_decode(cache, ids, H, P, Kc, scale=scale)
        planned_ms = bench(lambda: run_plan(plan, q, cache), cuda=cuda, reps=sz["reps"])
        r = sparse_decode(q, cache, ids, P, Kc, scale=scale)
        rows.append(dict(T=T, dense_ms=dense_ms, notebook_ms=nb_ms, sparse_ms=sp_ms,
                         sparse_planned_ms=planned_ms, speedup=dense_ms / planned_ms, P=P, Kc=Kc, solver="softmax", card=card,
                         true_error_max=float((r.out.float() - dn).norm(dim=-1).max()),
                         certified_error_max=float(r.certified_error.max()),
                         gap_min=float(r.gap.min())))
        del cache, r, plan
        _free(cuda)
        if progress is not None:
            progress.update(1)
    return rows


def ablation_rows(sz: dict, *, seed: int, device, cuda: bool, tol: float = 1e-3, progress=None) -> list[dict]:
    """P x Kc x solver at one context length: latency, certified and true error, fallback rate.

    Fallback rate is the fraction of (row, head) pairs that ``DenseFallback(tol)`` recomputes densely;
    the GPU tier has no residual certificate for eg/fw (NaN there, and fallback policies refuse them),
    so those cells are NaN by construction, not by omission.
    """
    from vashista_gpu.decode import sparse_decode
    from vashista_gpu.dense import dense_decode
    from vashista_core.policies import DenseFallback
    dtype = getattr(torch, sz["dtype"])
    B, H, D, S, T = sz["B"], sz["H"], sz["D"], sz["S"], sz["T_ablation"]
    q = torch.stack([needle_row(b, H, T, D, seed=seed, device=device, dtype=dtype)[0] for b in range(B)])
    cache, ids = needle_cache(B, H, T, D, S, seed=seed, device=device, dtype=dtype)
    scale = D ** -0.5
    dn = dense_decode(q, cache, ids, scale=scale).float()
    rows = []
    for solver in SOLVERS:
        for P in ABLATION_P:
            for Kc in ABLATION_KC:
                kw = dict(scale=scale, solver=solver)
                ms = bench(lambda: sparse_decode(q, cache, ids, P, Kc, **kw), cuda=cuda, reps=sz["reps"])
                r = sparse_decode(q, cache, ids, P, Kc, **kw)
                true = (r.out.float() - dn).norm(dim=-1)
                if solver == "softmax":
                    fb = sparse_decode(q, cache, ids, P, Kc, policy=DenseFallback(tol), **kw)
                    rate = float(fb.fell_back.float().mean())
                else:
                    rate = math.nan
                rows.append(dict(solver=solver, P=P, Kc=Kc, T=T, latency_ms=ms,
                                 certified_error_max=float(r.certified_error.max()),
                                 true_error_max=float(true.max()), fallback_rate=rate, tol=tol))
                if progress is not None:
                    progress.update(1)
    return rows


def leakage_rows(seed: int, n: int = 3, M: int = 64) -> list[dict]:
    """Exact softmax leakage off the face vs its bound (M−|F|)e^{−Δ/ε}/|F| over ε (SPEC 1b)."""
    from vashista_ref.softmax_model import softmax_certificate
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        s = rng.normal(size=M)
        s[rng.integers(M)] += 2.0 + i          # a clear winner: gap grows with i
        for eps in EPS_GRID:
            c = softmax_certificate(s, eps)
            rows.append(dict(instance=i, eps=eps, gap=c.gap, leakage=c.leakage, bound=c.leakage_bound))
    return rows


def face_error_rows(seed: int, n: int = 3) -> list[dict]:
    """‖y_ε − y*‖ (entropic Newton vs Wolfe's exact projection) over ε on known-face instances: the
    face error the paper states is linear in ε for small ε (SPEC 2)."""
    from vashista_ref.entropic import entropic_projection
    from vashista_ref.instances import draw
    from vashista_ref.projection import project_onto_hull
    rows = []
    for i in range(n):
        inst = draw("known_face", seed + i, M=12, D=3)
        star = project_onto_hull(inst.q, inst.K, solver="wolfe")
        for eps in EPS_GRID:
            sol = entropic_projection(inst.q, inst.K, eps)
            rows.append(dict(instance=i, eps=eps, gap=star.gap,
                             face_error=float(np.linalg.norm(sol.y - star.y)),
                             leakage=float(np.delete(sol.alpha, star.face).sum())))
    return rows


def support_gap_rows(seed: int, n: int) -> list[dict]:
    """Δ of the exact hull projection (Wolfe) on generic and inside-hull random instances; inside the
    hull there is no gap (recorded as NaN: the certificate is uninformative there)."""
    from vashista_ref.instances import draw
    from vashista_ref.projection import project_onto_hull
    rows = []
    for fam in ("generic", "known_face", "inside_hull"):
        for i in range(n):
            inst = draw(fam, seed + i)
            p = project_onto_hull(inst.q, inst.K, solver="wolfe")
            rows.append(dict(family=fam, seed=seed + i, gap=math.nan if p.gap is None else p.gap,
                             face_size=len(p.face)))
    return rows


def write_csv(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        for r in rows:
            w.writerow({k: (repr(v) if isinstance(v, float) else v) for k, v in r.items()})


def _save(fig, plots: Path, name: str) -> list[Path]:
    plots.mkdir(parents=True, exist_ok=True)
    out = []
    for ext in ("pdf", "png"):
        p = plots / f"{name}.{ext}"
        fig.savefig(p, dpi=120, metadata={"CreationDate": None} if ext == "pdf" else None)
        out.append(p)
    import matplotlib.pyplot as plt
    plt.close(fig)
    return out


def figures(out: Path, tabs: dict, mode: str) -> list[Path]:
    """Draw every figure from the tables (so a notebook can redraw them from the CSVs)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    plots = out / "plots"
    made = []
    sc = tabs["scaling_decode"]
    fig, ax = plt.subplots(figsize=(6, 4))
    Ts = [r["T"] for r in sc]
    for key, lab in (("dense_ms", "dense SDPA"), ("notebook_ms", "paper notebook"), ("sparse_ms", "Vashista sparse_decode"),
                     ("sparse_planned_ms", "Vashista, planned step")):
        ax.loglog(Ts, [r[key] for r in sc], "o-", label=lab)
    ax.set_xlabel("context length T")
    ax.set_ylabel("decode step (ms)")
    ax.set_title(f"Decode step vs context — {mode}", fontsize=9)
    ax.legend()
    made += _save(fig, plots, "figure_decode_scaling")
    ab = tabs["ablation_P_Kc_solver"]
    for solver in SOLVERS:
        grid = np.array([[next(r["latency_ms"] for r in ab if r["solver"] == solver and r["P"] == P and r["Kc"] == Kc)
                          for Kc in ABLATION_KC] for P in ABLATION_P])
        fig, ax = plt.subplots(figsize=(4.5, 3.6))
        im = ax.imshow(grid, cmap="viridis")
        ax.set_xticks(range(len(ABLATION_KC)), [str(k) for k in ABLATION_KC])
        ax.set_yticks(range(len(ABLATION_P)), [str(p) for p in ABLATION_P])
        ax.set_xlabel("Kc")
        ax.set_ylabel("P")
        for i in range(len(ABLATION_P)):
            for j in range(len(ABLATION_KC)):
                ax.text(j, i, f"{grid[i, j]:.2f}", ha="center", va="center", color="w", fontsize=8)
        fig.colorbar(im, label="sparse step (ms)")
        ax.set_title(f"{solver}: latency — {mode}", fontsize=8)
        made += _save(fig, plots, f"heatmap_sparse_ms_{solver}")
    lk = tabs["leakage_vs_eps"]
    fig, ax = plt.subplots(figsize=(6, 4))
    for i in sorted({r["instance"] for r in lk}):
        rs = [r for r in lk if r["instance"] == i]
        line, = ax.loglog([r["eps"] for r in rs], [max(r["leakage"], 1e-300) for r in rs], "o-",
                          label=f"Δ={rs[0]['gap']:.2f} exact")
        ax.loglog([r["eps"] for r in rs], [max(r["bound"], 1e-300) for r in rs], "--", color=line.get_color())
    ax.set_ylim(1e-30, 2)
    ax.set_xlabel("ε")
    ax.set_ylabel("mass off the face")
    ax.set_title("Softmax leakage (solid) vs (M−|F|)e^{−Δ/ε}/|F| (dashed)", fontsize=9)
    ax.legend(fontsize=7)
    made += _save(fig, plots, "leakage_vs_eps")
    fe = tabs["face_error_vs_eps"]
    fig, ax = plt.subplots(figsize=(6, 4))
    for i in sorted({r["instance"] for r in fe}):
        rs = [r for r in fe if r["instance"] == i]
        ax.loglog([r["eps"] for r in rs], [max(r["face_error"], 1e-300) for r in rs], "o-",
                  label=f"Δ={rs[0]['gap']:.2f}")
    e = np.array(EPS_GRID)
    ax.loglog(e, e, "k:", label="slope 1 (linear in ε)")
    ax.set_xlabel("ε")
    ax.set_ylabel("‖y_ε − y*‖")
    ax.set_title("Entropic face error vs ε (Newton vs Wolfe)", fontsize=9)
    ax.legend(fontsize=7)
    made += _save(fig, plots, "face_error_vs_eps")
    sg = tabs["support_gap"]
    fig, ax = plt.subplots(figsize=(6, 4))
    for fam in sorted({r["family"] for r in sg}):
        g = [r["gap"] for r in sg if r["family"] == fam and not math.isnan(r["gap"])]
        n_none = sum(1 for r in sg if r["family"] == fam and math.isnan(r["gap"]))
        if g:
            ax.hist(np.log10(np.maximum(g, 1e-300)), bins=12, alpha=0.6, label=f"{fam} ({n_none} without gap)")
        else:
            ax.plot([], [], label=f"{fam}: no gap on any of {n_none}")
    ax.set_xlabel("log10 Δ (hull projection)")
    ax.set_ylabel("instances")
    ax.set_title("Support gap on synthetic families", fontsize=9)
    ax.legend(fontsize=7)
    made += _save(fig, plots, "support_gap_hist")
    return made


def versions() -> dict:
    v = dict(python=platform.python_version(), numpy=np.__version__, torch=torch.__version__)
    for mod in ("scipy", "matplotlib", "triton"):
        try:
            v[mod] = __import__(mod).__version__
        except ImportError:
            v[mod] = None
    return v


def run(out: str | Path = "artifacts", *, quick: bool = False, seed: int = 0, device: str | None = None,
        argv: list[str] | None = None, show_progress: bool = True, Ts: list[int] | None = None,
        quality: bool = False, quality_argv: tuple[str, ...] = ("--quick",)) -> dict:
    """Regenerate every artifact into ``out``; returns the manifest. ``quality`` also runs
    ``vashista quality`` (``quality_argv``, default ``--quick``: several minutes on a CPU) on the
    embedded model into ``out/quality``."""
    from tqdm import tqdm
    t0 = time.time()
    out = Path(out)
    cuda = torch.cuda.is_available() if device is None else device.startswith("cuda")
    dev = torch.device(device or ("cuda" if cuda else "cpu"))
    card = torch.cuda.get_device_name(dev) if cuda else f"cpu ({platform.processor() or platform.machine()})"
    sz = sizes(cuda=cuda, quick=quick)
    if Ts:
        sz["Ts"] = list(Ts)
    torch.manual_seed(seed)
    n_steps = len(sz["Ts"]) + len(SOLVERS) * len(ABLATION_P) * len(ABLATION_KC)
    with tqdm(total=n_steps, desc="vashista repro", file=sys.stderr, disable=not show_progress) as bar:
        tabs = dict(scaling_decode=scaling_rows(sz, seed=seed, device=dev, cuda=cuda, card=card, progress=bar),
                    ablation_P_Kc_solver=ablation_rows(sz, seed=seed, device=dev, cuda=cuda, progress=bar))
    tabs["leakage_vs_eps"] = leakage_rows(seed)
    tabs["face_error_vs_eps"] = face_error_rows(seed)
    tabs["support_gap"] = support_gap_rows(seed, sz["n_gap"])
    for name, rows in tabs.items():
        write_csv(out / "tables" / f"{name}.csv", rows)
    figures(out, tabs, sz["mode"])
    notes = ["eg/fw on the GPU tier have no residual certificate: certified_error and fallback_rate NaN"]
    if quality:
        from .quality.cli import main as quality_main   # the model integration's own suite, unchanged
        if quality_main([*quality_argv, "--seed", str(seed), "--out", str(out / "quality")]) != 0:
            raise RuntimeError("vashista quality --quick failed; see its output above")
        notes.append(f"quality/: `vashista quality {' '.join(quality_argv)}` on the embedded SmolLM2-135M "
                     "(dense vs Vashista decode)")
    else:
        notes.append("quality table not produced (pass --quality, or run `vashista quality`)")
    if not cuda:
        notes.insert(0, "CPU run: reduced sizes, float32, PyTorch path; NOT the paper's shapes")
    manifest = dict(command=["vashista", "repro"] + list(argv if argv is not None else []), seed=seed,
                    quick=quick, mode=sz["mode"], sizes=sz, device=str(dev), card=card,
                    versions=versions(), wall_time_s=round(time.time() - t0, 3), notes=notes,
                    artifacts=sorted(str(p.relative_to(out)) for p in out.rglob("*")
                                     if p.is_file() and p.suffix != ".zip" and p.name != "manifest.json") + ["manifest.json"])
    (out / "manifest.json").write_text(json.dumps(manifest, indent=1))
    with zipfile.ZipFile(out / "vashista_repro.zip", "w", zipfile.ZIP_DEFLATED) as z:
        for rel in manifest["artifacts"]:
            z.write(out / rel, rel)
    return manifest


def check_device(device: str | None) -> str | None:
    """``--device``: None (cuda if available), cpu, or a cuda device this machine has."""
    if device is None:
        return None
    try:
        dev = torch.device(device)
    except (RuntimeError, ValueError):
        raise VashistaInputError("--device", f"{device!r} is not a torch device; use cpu or cuda[:N]") from None
    if dev.type not in ("cpu", "cuda"):
        raise VashistaInputError("--device", f"repro runs on cpu or cuda, got {device!r}")
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise VashistaInputError("--device", f"{device!r} requested but CUDA is not available here; use --device cpu")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise VashistaInputError("--device", f"{device!r}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    return device


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    ap = Parser(prog="vashista repro", description="regenerate the paper's tables and figures")
    ap.add_argument("--out", default="artifacts", help="output folder (default ./artifacts)")
    ap.add_argument("--quick", action="store_true", help="smallest sizes (CI, ~1 min on CPU)")
    ap.add_argument("--seed", type=nonneg_int, default=0)
    ap.add_argument("--device", default=None, help="torch device (default: cuda if available)")
    ap.add_argument("--Ts", default=None, help="comma-separated context lengths for the scaling table "
                    "(default: the mode's; e.g. 8192,32768 to fit a time limit)")
    ap.add_argument("--no-progress", action="store_true")
    ap.add_argument("--quality", action="store_true",
                    help="also run `vashista quality --quick` on the embedded model into OUT/quality (minutes)")
    try:
        a = ap.parse_args(argv)
    except SystemExit as exc:                      # --help (0) or a one-line argument error (2)
        return int(exc.code or 0)
    try:
        try:
            Ts = [int(t) for t in a.Ts.split(",") if t] if a.Ts else None
        except ValueError:
            raise VashistaInputError("--Ts", f"must be comma-separated integers, got {a.Ts!r}") from None
        if Ts and min(Ts) < 16 * 128:
            raise VashistaInputError("--Ts", "values must be at least 2048 (Kc = 128 candidates from P = 64 pages of 16)")
        output_dir(a.out, "--out")                  # checked before minutes of work, not after
        check_device(a.device)
    except VashistaInputError as exc:
        return report("vashista repro", exc)
    m = run(a.out, quick=a.quick, seed=a.seed, device=a.device, argv=argv, show_progress=not a.no_progress, Ts=Ts,
          quality=a.quality)
    print(f"vashista repro: {m['mode']}; {len(m['artifacts'])} artifacts in {a.out} ({m['wall_time_s']:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
