"""``vashista certify --decode`` (vashista_app.cmd_decode.main): JSON fields, sound numbers, .npy input,
policies, and clear errors."""
import json

import numpy as np
import pytest

from vashista_app.cmd_decode import main


def _json(capsys, argv):
    assert main(argv + ["--json"]) == 0
    return json.loads(capsys.readouterr().out)


def test_json_has_the_promised_fields_and_is_sound(capsys):
    r = _json(capsys, ["--seed", "1", "--context", "300", "--page-size", "16", "--P", "3", "--Kc", "40",
                       "--kv-heads", "2", "--group", "2", "--dim", "16", "--router", "mean"])
    for key in ("certified_error", "true_error", "gap", "fell_back"):
        assert key in r
    assert r["certified_error"] >= r["true_error"] > 0 and r["sound"] and r["fell_back"] is False
    assert len(r["per_query"]) == 4
    assert all(q["certified_error"] >= q["true_error"] for q in r["per_query"])


def test_seed_is_reproducible_and_matters(capsys):
    argv = ["--context", "200", "--P", "2", "--Kc", "20", "--dim", "8"]
    a, b, c = (_json(capsys, argv + ["--seed", s]) for s in ("4", "4", "5"))
    assert a == b and a["true_error"] != c["true_error"]


def test_dense_fallback_policy_reports_fallback_and_zero_error(capsys):
    r = _json(capsys, ["--kind", "outlier", "--context", "256", "--page-size", "16", "--P", "1", "--Kc", "8",
                       "--router", "mean", "--dim", "16", "--q-scale", "3", "--policy", "dense_fallback",
                       "--tol", "1e-3"])
    assert r["fell_back"] is True and r["true_error"] == 0.0
    assert r["per_query"][0]["tokens_scored"] > 256


def test_npy_arrays_input(tmp_path, capsys):
    rng = np.random.default_rng(0)
    K, V, q = rng.normal(size=(70, 6)), rng.normal(size=(70, 3)), rng.normal(size=6) * 3
    for name, arr in (("K", K), ("V", V), ("q", q)):
        np.save(tmp_path / f"{name}.npy", arr)
    argv = ["--keys", str(tmp_path / "K.npy"), "--values", str(tmp_path / "V.npy"), "--query",
            str(tmp_path / "q.npy"), "--page-size", "8"]
    r = _json(capsys, argv + ["--P", "2", "--Kc", "10"])
    assert r["source"] == "arrays" and r["certified_error"] >= r["true_error"] > 0
    full = _json(capsys, argv + ["--P", "9", "--Kc", "70"])
    assert full["true_error"] < 1e-12 and full["gap"] == "inf"     # gap = +inf: every token read


def test_eg_fw_solver_runs(capsys):
    pytest.importorskip("vashista_ref.entropic")
    for solver in ("eg", "fw"):
        r = _json(capsys, ["--context", "64", "--page-size", "8", "--P", "2", "--Kc", "16", "--dim", "4",
                           "--solver", solver, "--iters", "30"])
        assert r["solver"] == solver and r["certified_error"] is None


def test_text_output(capsys):
    assert main(["--context", "64", "--page-size", "8", "--P", "2", "--Kc", "16", "--dim", "8"]) == 0
    out = capsys.readouterr().out
    assert "certified" in out and "true error" in out


@pytest.mark.parametrize("argv, arg", [
    (["--P", "0"], "argument --P"),
    (["--Kc", "0"], "argument --Kc"),
    (["--Kc", "5000", "--context", "100"], "Kc"),
    (["--page-size", "0"], "argument --page-size"),
    (["--policy", "dense_fallback"], "tol"),
    (["--keys", "nope.npy"], "--keys"),
])
def test_bad_arguments_exit_2_naming_the_argument(capsys, argv, arg):
    assert main(argv + ["--context", "64"] if "--context" not in argv else argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("vashista certify --decode: error: " + arg), err


def test_bad_npy_contents(tmp_path, capsys):
    K = np.ones((10, 4))
    K[3, 1] = np.nan
    np.save(tmp_path / "K.npy", K)
    np.save(tmp_path / "V.npy", np.ones((10, 4)))
    np.save(tmp_path / "q.npy", np.ones(5))
    argv = ["--keys", str(tmp_path / "K.npy"), "--values", str(tmp_path / "V.npy"), "--query", str(tmp_path / "q.npy")]
    assert main(argv) == 2
    assert "NaN" in capsys.readouterr().err
    np.save(tmp_path / "K.npy", np.ones((10, 4)))
    assert main(argv) == 2
    assert "dimension" in capsys.readouterr().err
