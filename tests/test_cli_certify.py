"""`vashista certify` as a user runs it: seeded instance, .npy files, --json, clear errors."""
import json
import subprocess
import sys

import numpy as np
import pytest

from vashista_ref import instances
from vashista_app.cli import main as vashista
from vashista_app.cmd_certify import main


def test_seeded_instance_json_has_the_contract_keys(capsys):
    assert main(["--seed", "3", "--json"]) == 0
    rep = json.loads(capsys.readouterr().out)
    for key in ("y_star", "active_set", "face", "gap", "kkt_residual", "softmax"):
        assert key in rep
    assert set(rep["softmax"]) >= {"face", "gap", "leakage"}
    inst = instances.draw("known_face", 3, M=32, D=8)
    assert rep["active_set"] == inst.face.tolist()
    assert rep["gap"] == pytest.approx(inst.gap, rel=1e-6)
    assert np.allclose(rep["y_star"], inst.y_star, atol=1e-8)


def test_npy_files_and_no_certificate_inside_the_hull(tmp_path, capsys):
    inst = instances.draw("inside_hull", 0, M=10, D=3)
    np.save(tmp_path / "q.npy", inst.q)
    np.save(tmp_path / "K.npy", inst.K)
    assert main(["--query", str(tmp_path / "q.npy"), "--keys", str(tmp_path / "K.npy"), "--json"]) == 0
    rep = json.loads(capsys.readouterr().out)
    assert rep["gap"] is None and "hull" in rep["gap_reason"]
    assert main(["--query", str(tmp_path / "q.npy"), "--keys", str(tmp_path / "K.npy")]) == 0
    assert "no certificate" in capsys.readouterr().out


def test_human_output_via_the_console_dispatcher(capsys):
    assert vashista(["certify", "--seed", "0"]) == 0
    out = capsys.readouterr().out
    assert "support gap Δ = 0.5" in out and "KKT residuals" in out and "Softmax model" in out


@pytest.mark.parametrize("argv, needle", [
    (["--eps", "0"], "eps"),
    (["--query", "missing.npy"], "--query/--keys"),
    (["--query", "nope.npy", "--keys", "nope.npy"], "--query"),
    (["--M", "0", "--family", "generic"], "M"),
])
def test_errors_are_clear(argv, needle, capsys):
    assert main(argv) == 2
    assert needle in capsys.readouterr().err


def test_wrong_shapes_in_files(tmp_path, capsys):
    np.save(tmp_path / "q.npy", np.ones(4))
    np.save(tmp_path / "K.npy", np.ones((5, 3)))
    assert main(["--query", str(tmp_path / "q.npy"), "--keys", str(tmp_path / "K.npy")]) == 2
    assert "q: has dimension 4" in capsys.readouterr().err


def test_console_script_entry_point_runs():
    out = subprocess.run([sys.executable, "-m", "vashista_app", "certify", "--seed", "1", "--json"],
                         capture_output=True, text=True, check=True).stdout
    assert json.loads(out)["gap"] is not None
