"""Bad-input catalogue of the command line (issue 15): every class of bad input — NaN/inf, shapes,
dtypes, object arrays, empty arrays, out-of-range options, paths and sizes — ends in ONE line on stderr
naming the argument, exit status 2, and no traceback. Run in-process through the console script's
``main(argv)``; two cases also as a subprocess (what a user sees)."""
from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from vashista_app.cli import main

D = 4


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """Named .npy files: good ones, and one per class of bad content."""
    d = tmp_path_factory.mktemp("npy")
    rng = np.random.default_rng(0)
    arrays = {
        "q": rng.normal(size=D), "K": rng.normal(size=(12, D)), "V": rng.normal(size=(12, 3)),
        "q_nan": np.array([np.nan, 1.0, 0.0, 0.0]), "K_inf": np.where(np.eye(12, D) > 0, np.inf, 1.0),
        "q_2d": np.ones((1, D)), "K_1d": np.ones(D), "K_3d": np.ones((2, 12, D)), "K_dim": np.ones((12, D + 1)),
        "K_int": np.ones((12, D), dtype=np.int64), "K_complex": np.ones((12, D), dtype=complex),
        "K_bool": np.ones((12, D), dtype=bool), "K_str": np.full((12, D), "a"), "K_empty": np.zeros((0, D)),
        "V_rows": np.ones((11, 3)), "K_huge": np.full((12, D), 1e300), "q_huge": np.full(D, 1e300),
    }
    from vashista_ref.instances import draw
    face = draw("known_face", 0, M=32, D=8)          # issue 15: scaled by 1e-300, an instance read "in the hull"
    arrays.update(q_tiny=face.q * 1e-300, K_tiny=face.K * 1e-300)
    paths = {}
    for name, a in arrays.items():
        paths[name] = str(d / f"{name}.npy")
        np.save(paths[name], a)
    paths["K_object"] = str(d / "K_object.npy")
    np.save(paths["K_object"], np.array([{"a": 1}, None], dtype=object), allow_pickle=True)
    paths["empty_file"] = str(d / "empty.npy")
    open(paths["empty_file"], "wb").close()                     # 0 bytes (issue 15)
    paths["garbage"] = str(d / "garbage.npy")
    with open(paths["garbage"], "wb") as f:
        f.write(b"not a numpy file at all")
    paths["truncated"] = str(d / "truncated.npy")
    with open(paths["truncated"], "wb") as f:
        f.write(open(paths["K"], "rb").read()[:100])
    paths["missing"] = str(d / "missing.npy")
    paths["folder"] = str(d)
    paths["a_file"] = paths["q"]
    return paths


def _certify(q, K):
    return ["certify", "--query", q, "--keys", K]


def _decode(q, K, V):
    return ["certify", "--decode", "--query", q, "--keys", K, "--values", V, "--page-size", "4", "--P", "1",
            "--Kc", "4"]


# (case, argv builder from the files fixture, the argument the one line must name)
CASES = [
    # arrays: NaN / inf, shapes, dtypes, object arrays, empty, values that overflow
    ("nan query", lambda f: _certify(f["q_nan"], f["K"]), "--query"),
    ("inf keys", lambda f: _certify(f["q"], f["K_inf"]), "--keys"),
    ("2-D query", lambda f: _certify(f["q_2d"], f["K"]), "--query"),
    ("1-D keys", lambda f: _certify(f["q"], f["K_1d"]), "--keys"),
    ("3-D keys", lambda f: _certify(f["q"], f["K_3d"]), "--keys"),
    ("dimension mismatch", lambda f: _certify(f["q"], f["K_dim"]), "--query"),
    ("integer keys", lambda f: _certify(f["q"], f["K_int"]), "--keys"),
    ("complex keys", lambda f: _certify(f["q"], f["K_complex"]), "--keys"),
    ("bool keys", lambda f: _certify(f["q"], f["K_bool"]), "--keys"),
    ("string keys", lambda f: _certify(f["q"], f["K_str"]), "--keys"),
    ("object keys", lambda f: _certify(f["q"], f["K_object"]), "--keys"),
    ("no keys", lambda f: _certify(f["q"], f["K_empty"]), "--keys"),
    ("decode: nan query", lambda f: _decode(f["q_nan"], f["K"], f["V"]), "--query"),
    ("decode: integer keys", lambda f: _decode(f["q"], f["K_int"], f["V"]), "--keys"),
    ("decode: object values", lambda f: _decode(f["q"], f["K"], f["K_object"]), "--values"),
    ("decode: values rows", lambda f: _decode(f["q"], f["K"], f["V_rows"]), "--values"),
    ("decode: no keys", lambda f: _decode(f["q"], f["K_empty"], f["V"]), "--keys"),
    ("decode: scores overflow", lambda f: _decode(f["q_huge"], f["K_huge"], f["V"]), "--query"),
    ("q and K scaled by 1e-300", lambda f: _certify(f["q_tiny"], f["K_tiny"]), "--query"),
    ("q and K scaled by 1e-300, wolfe", lambda f: _certify(f["q_tiny"], f["K_tiny"]) + ["--solver", "wolfe"],
     "--query"),
    # paths
    ("0-byte .npy", lambda f: _certify(f["q"], f["empty_file"]), "--keys"),
    ("not a .npy", lambda f: _certify(f["garbage"], f["K"]), "--query"),
    ("truncated .npy", lambda f: _certify(f["q"], f["truncated"]), "--keys"),
    ("missing file", lambda f: _certify(f["q"], f["missing"]), "--keys"),
    ("a folder", lambda f: _certify(f["folder"], f["K"]), "--query"),
    ("decode: 0-byte values", lambda f: _decode(f["q"], f["K"], f["empty_file"]), "--values"),
    ("only one file", lambda f: ["certify", "--query", f["q"]], "--query/--keys"),
    ("check --out a file", lambda f: ["check", "--quick", "--out", f["a_file"]], "--out"),
    ("repro --out a file", lambda f: ["repro", "--quick", "--out", f["a_file"]], "--out"),
    # out-of-range and malformed options
    ("certify --seed -1", lambda f: ["certify", "--seed", "-1"], "--seed"),
    ("certify --seed x", lambda f: ["certify", "--seed", "x"], "--seed"),
    ("certify --M 0", lambda f: ["certify", "--M", "0"], "--M"),
    ("certify --M 1", lambda f: ["certify", "--M", "1"], "--M"),
    ("certify --D 1", lambda f: ["certify", "--D", "1"], "--D"),
    ("certify --eps 0", lambda f: ["certify", "--eps", "0"], "--eps"),
    ("certify --eps nan", lambda f: ["certify", "--eps", "nan"], "--eps"),
    ("certify --scale -1", lambda f: ["certify", "--scale", "-1"], "--scale"),
    ("certify --face-tol -1", lambda f: ["certify", "--face-tol", "-1"], "--face-tol"),
    ("certify --solver x", lambda f: ["certify", "--solver", "gurobi"], "--solver"),
    ("certify --family x", lambda f: ["certify", "--family", "nope"], "--family"),
    ("certify --seed with files", lambda f: _certify(f["q"], f["K"]) + ["--seed", "1"], "--seed"),
    ("decode --seed -1", lambda f: ["certify", "--decode", "--seed", "-1"], "--seed"),
    ("decode --context 0", lambda f: ["certify", "--decode", "--context", "0"], "--context"),
    ("decode --P -3", lambda f: ["certify", "--decode", "--P", "-3"], "--P"),
    ("decode --Kc 1.5", lambda f: ["certify", "--decode", "--Kc", "1.5"], "--Kc"),
    ("decode --Kc > tokens", lambda f: ["certify", "--decode", "--context", "64", "--Kc", "65"], "Kc"),
    ("decode --bits 3", lambda f: ["certify", "--decode", "--router", "sketch", "--bits", "3"], "--bits"),
    ("decode --bits without sketch", lambda f: ["certify", "--decode", "--context", "64", "--Kc", "8",
                                                "--bits", "8"], "bits"),
    ("decode --q-scale inf", lambda f: ["certify", "--decode", "--q-scale", "inf"], "--q-scale"),
    ("decode --hierarchical 1", lambda f: ["certify", "--decode", "--context", "64", "--Kc", "8",
                                           "--hierarchical", "1"], "fanout"),
    ("decode policy without tol", lambda f: ["certify", "--decode", "--context", "64", "--Kc", "8",
                                             "--policy", "capped"], "tol"),
    ("decode --router x", lambda f: ["certify", "--decode", "--router", "nope"], "--router"),
    ("check --seed -1", lambda f: ["check", "--seed", "-1"], "--seed"),
    ("check --only 9", lambda f: ["check", "--only", "9"], "--only"),
    ("check --only x", lambda f: ["check", "--only", "x"], "--only"),
    ("repro --seed -1", lambda f: ["repro", "--seed", "-1"], "--seed"),
    ("repro --Ts 512", lambda f: ["repro", "--Ts", "512"], "--Ts"),
    ("repro --Ts x", lambda f: ["repro", "--Ts", "2048,x"], "--Ts"),
    ("repro --device bogus", lambda f: ["repro", "--device", "bogus"], "--device"),
    ("repro --device cuda:99", lambda f: ["repro", "--device", "cuda:99"], "--device"),
    # sizes: refused before anything is allocated (issue 15: 24 GiB attempted)
    ("decode --context 5e7", lambda f: ["certify", "--decode", "--context", "50000000"], "--context"),
    ("decode --batch huge", lambda f: ["certify", "--decode", "--batch", "100000"], "--context"),
]


@pytest.mark.filterwarnings("error::RuntimeWarning")         # a NumPy warning would be a second line
@pytest.mark.parametrize("case, argv, arg", CASES, ids=[c[0] for c in CASES])
def test_one_line_naming_the_argument(files, capsys, case, argv, arg):
    rc = main(argv(files))
    err = capsys.readouterr().err
    assert rc == 2, (case, err)
    assert err.count("\n") == 1 and err.startswith("vashista "), (case, err)
    said = err.split(" error: ", 1)[1]            # "argument --seed: …" (parser) or "--keys: …" / "Kc: …"
    assert said.startswith((f"argument {arg}:", f"{arg}:", f"argument {arg} ")), (case, err)


def test_repro_cuda_without_cuda(capsys):
    torch = pytest.importorskip("torch")
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    assert main(["repro", "--device", "cuda"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--device" in err and "CUDA is not available" in err


@pytest.mark.parametrize("argv, arg", [(["certify", "--seed", "-1"], "--seed"),
                                       (["certify", "--decode", "--context", "50000000"], "--context")])
def test_as_a_user_sees_it(argv, arg):
    """As a subprocess: one line on stderr, exit status 2, no traceback."""
    p = subprocess.run([sys.executable, "-m", "vashista_app", *argv], capture_output=True, text=True, timeout=120)
    assert p.returncode == 2 and "Traceback" not in p.stderr
    assert p.stderr.count("\n") == 1 and arg in p.stderr


def test_infinite_and_absent_certificates_read_differently(capsys):
    """An infinite certificate (nothing can be bounded) prints 'inf', an absent one (eg/fw) 'none'."""
    from vashista_core.cli_args import cert_json, cert_text
    assert (cert_text(float("inf")), cert_text(float("nan"))) == ("inf", "none")
    assert (cert_json(float("inf")), cert_json(float("nan"))) == ("inf", None)
    import json
    assert main(["certify", "--decode", "--context", "64", "--Kc", "8", "--solver", "eg", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["certified_error"] is None


@pytest.mark.filterwarnings("error::RuntimeWarning")
def test_infinite_certificate_end_to_end(files, tmp_path, capsys):
    """Issue 15: "an infinite certificate prints like 'no certificate'". Values of 1e300 make the error
    bound +inf (softmax solver, a certificate that says nothing); the command prints ``inf`` in the table
    and ``"inf"`` in JSON — not ``none``/null, which is the eg/fw solvers' absent certificate — with
    nothing on stderr (no NumPy overflow warning next to the answer)."""
    import json
    big = str(tmp_path / "V_big.npy")
    np.save(big, np.random.default_rng(1).normal(size=(12, 3)) * 1e300)
    argv = _decode(files["q"], files["K"], big)
    assert main(argv) == 0
    out, err = capsys.readouterr()
    row = out.strip().splitlines()[-1].split()
    assert row[2] == "inf" and "none" not in row and err == "", (out, err)
    assert main(argv + ["--json"]) == 0
    rep = json.loads(capsys.readouterr().out)
    assert rep["certified_error"] == "inf" and rep["per_query"][0]["certified_error"] == "inf"


def test_certify_is_scale_invariant_on_the_command_line(tmp_path, capsys):
    """Issue 15: `certify --solver wolfe` at scale 1e4 or 1e30 returned a wrong projection (dual residual
    0.85) without a ConvergenceError. Through the command line: the same face and active set at every
    scale, the gap × s² (ε × s² too, so that the entropic part is the same problem; the refusal at
    1e-300 is a CASES entry above; cvxpy and more scales: test_projection.py)."""
    import json
    from vashista_ref.instances import draw
    inst = draw("known_face", 0, M=32, D=8)
    reps = {}
    for s in (1.0, 1e4, 1e30):
        np.save(tmp_path / "q.npy", inst.q * s)
        np.save(tmp_path / "K.npy", inst.K * s)
        assert main(_certify(str(tmp_path / "q.npy"), str(tmp_path / "K.npy")) + ["--solver", "wolfe", "--json",
                                                                                   "--eps", repr(0.1 * s * s)]) == 0
        reps[s] = json.loads(capsys.readouterr().out)
    for s in (1e4, 1e30):
        assert reps[s]["face"] == reps[1.0]["face"] and reps[s]["active_set"] == reps[1.0]["active_set"]
        assert reps[s]["gap"] == pytest.approx(reps[1.0]["gap"] * s * s, rel=1e-6)
        assert reps[s]["kkt_residual"]["dual_feasibility"] <= 1e-7 * s * s
        assert reps[s]["entropic"]["converged"] and reps[s]["softmax"]["face"] == reps[1.0]["softmax"]["face"]
