"""`vashista repro --quick`: every artifact is written, the run is deterministic except timings, the
numbers it tabulates are the library's (certificates sound), and it runs without cvxpy."""
from __future__ import annotations

import csv
import json
import math
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from vashista_app import repro

ROOT = Path(__file__).resolve().parents[1]
TABLES = ("scaling_decode", "ablation_P_Kc_solver", "leakage_vs_eps", "face_error_vs_eps", "support_gap")
PLOTS = ["figure_decode_scaling", "leakage_vs_eps", "face_error_vs_eps", "support_gap_hist"] + [
    f"heatmap_sparse_ms_{s}" for s in repro.SOLVERS]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Two quick runs under seed 0: one through the console script in a subprocess where importing
    cvxpy fails (the GPU machine has no cvxpy), one in-process."""
    a, b = tmp_path_factory.mktemp("repro_a"), tmp_path_factory.mktemp("repro_b")
    code = ("import sys; sys.modules['cvxpy'] = None; from vashista_app.cli import main; "
            f"sys.exit(main(['repro', '--quick', '--no-progress', '--out', {str(a)!r}]))")
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    p = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True)
    assert p.returncode == 0, p.stderr[-3000:]
    assert repro.main(["--quick", "--no-progress", "--out", str(b)]) == 0
    return a, b


def read(path: Path) -> list[dict]:
    with open(path) as f:
        return list(csv.DictReader(f))


def test_every_artifact_written(runs):
    out = runs[0]
    for t in TABLES:
        assert read(out / "tables" / f"{t}.csv"), t
    for p in PLOTS:
        for ext in ("pdf", "png"):
            assert (out / "plots" / f"{p}.{ext}").stat().st_size > 1000, p
    m = json.loads((out / "manifest.json").read_text())
    assert m["seed"] == 0 and m["quick"] is True and m["command"][:2] == ["vashista", "repro"]
    assert m["versions"]["torch"] and m["versions"]["numpy"] and m["wall_time_s"] > 0
    if m["device"] == "cpu":
        assert "CPU" in m["mode"] and any("NOT the paper's shapes" in n for n in m["notes"])
    with zipfile.ZipFile(out / "vashista_repro.zip") as z:
        names = z.namelist()
    assert sorted(names) == sorted(set(names)) == sorted(m["artifacts"])
    assert {f"tables/{t}.csv" for t in TABLES} | {"manifest.json"} <= set(names)


def test_tables_deterministic_except_timings(runs):
    a, b = runs
    for t in TABLES:
        ra, rb = read(a / "tables" / f"{t}.csv"), read(b / "tables" / f"{t}.csv")
        assert len(ra) == len(rb) and ra[0].keys() == rb[0].keys()
        for x, y in zip(ra, rb):
            for k in x:
                if k not in repro.TIMING_COLUMNS:
                    assert x[k] == y[k], (t, k, x[k], y[k])


def test_tabulated_numbers_are_sound(runs):
    """The softmax certificate bounds the true error (sparse vs dense) in every ablation cell and at
    every context length, and the scaling table covers the sizes the manifest announces."""
    out = runs[0]
    m = json.loads((out / "manifest.json").read_text())
    sc = read(out / "tables" / "scaling_decode.csv")
    assert [int(r["T"]) for r in sc] == m["sizes"]["Ts"]
    for r in sc + [r for r in read(out / "tables" / "ablation_P_Kc_solver.csv") if r["solver"] == "softmax"]:
        assert float(r["true_error_max"]) <= float(r["certified_error_max"]) * (1 + 1e-5) + 1e-6, r
    ab = read(out / "tables" / "ablation_P_Kc_solver.csv")
    assert {(r["solver"], int(r["P"]), int(r["Kc"])) for r in ab} == {
        (s, p, k) for s in repro.SOLVERS for p in repro.ABLATION_P for k in repro.ABLATION_KC}
    for r in read(out / "tables" / "leakage_vs_eps.csv"):       # SPEC 1b bound holds on every point
        assert float(r["leakage"]) <= float(r["bound"]) * (1 + 1e-12)
    gaps = [float(r["gap"]) for r in read(out / "tables" / "support_gap.csv") if r["family"] == "inside_hull"]
    assert all(math.isnan(g) for g in gaps)                   # inside the hull: no gap, no certificate


@pytest.mark.parametrize("args", [["--seed", "x"], ["--Ts", "2048,abc"], ["--Ts", "512"]])
def test_bad_arguments_rejected(tmp_path, args):
    assert repro.main(args + ["--out", str(tmp_path)]) == 2       # one-line error, exit status 2
    assert not (tmp_path / "manifest.json").exists()


@pytest.mark.model
def test_quality_table_joins_the_artifacts(tmp_path):
    """--quality runs the model integration's own suite (here at a tiny size) into OUT/quality, and
    its tables are listed in the manifest and zipped with the rest."""
    pytest.importorskip("gguf")
    from vashista_app.quality.texts import load_text
    text = tmp_path / "t.txt"
    text.write_text(load_text("prose")[:20000], encoding="utf-8")
    small = ("--text", str(text), "--contexts", "256", "--span", "4", "--pass-contexts", "256", "--depths", "0.5",
             "--budget", "0.375", "--sweep", "--no-figures", "--dense-layers", *map(str, range(28)))
    m = repro.run(tmp_path / "art", quick=True, show_progress=False, quality=True, quality_argv=small)
    assert "quality/summary.json" in m["artifacts"] and "quality/perplexity.csv" in m["artifacts"]
    summary = json.loads((tmp_path / "art" / "quality" / "summary.json").read_text())
    assert summary["certificate_violations"] == 0
    with zipfile.ZipFile(tmp_path / "art" / "vashista_repro.zip") as z:
        assert "quality/summary.json" in z.namelist()


def test_installed_packages_do_not_import_from_the_source_tree():
    """The console script runs from an installed package: benchmarks/ and scripts/ are not on its
    path (an import of benchmarks.decode_scaling once broke `vashista repro` outside the repo)."""
    offenders = []
    for pkg in ("vashista_core", "vashista_ref", "vashista_gpu", "proofs_checks", "vashista_app"):
        for f in (ROOT / pkg).rglob("*.py"):
            for line in f.read_text().splitlines():
                s = line.strip()
                if s.startswith(("from benchmarks", "import benchmarks", "from scripts", "import scripts",
                                 "from tests", "import tests")):
                    offenders.append(f"{f.relative_to(ROOT)}: {s}")
    assert not offenders, offenders
