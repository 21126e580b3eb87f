"""Issue 6, the ``vashista quality`` suite: argument checks, budget arithmetic, texts, and one small
end-to-end run on the embedded model (the ``--quick`` CI configuration is the same code with larger
contexts)."""
import json
import os

import pytest

from vashista_core.errors import VashistaInputError
from vashista_app.quality.cli import main
from vashista_app.quality.tasks import budget_setting, budget_tokens
from vashista_app.quality.texts import load_text


@pytest.mark.parametrize("ctx", [512, 1024, 2048, 4096, 8192])
@pytest.mark.parametrize("frac", [1 / 16, 1 / 8, 1 / 4])
def test_budget_setting_respects_the_budget(ctx, frac):
    if frac * ctx < 4 * 16 + 1:          # sink + newest + P >= 2 pages of 16, and a candidate
        with pytest.raises(VashistaInputError, match="budget"):
            budget_setting(ctx, frac)
        return
    s = budget_setting(ctx, frac)
    assert budget_tokens(s) <= frac * ctx
    assert s["P"] >= s["sink_pages"] + 1 and 1 <= s["Kc"] <= frac * ctx
    # and uses most of it (within a page and the rounding of Kc)
    assert budget_tokens(s) > frac * ctx - 2 * s["page_size"]


def test_texts_are_real_and_long():
    code, prose = load_text("code"), load_text("prose")
    assert "def " in code and "class " in code and len(code) > 400_000
    assert "the" in prose and "def " not in prose[:2000] and len(prose) > 400_000


@pytest.mark.parametrize("argv, arg", [
    (["--text", "/nonexistent/file.txt"], "text"),
    (["--contexts", "100000"], "--contexts"),
    (["--span", "1"], "--span"),
    (["--depths", "1.5"], "--depths"),
    (["--budget", "0"], "--budget"),
    (["--contexts", "256", "--budget", "0.125"], "--budget"),
])
def test_bad_arguments_exit_2_naming_the_argument(argv, arg, capsys, tmp_path):
    assert main(argv + ["--out", str(tmp_path)]) == 2
    assert capsys.readouterr().err.startswith(f"vashista quality: {arg}:")


def test_non_utf8_text_is_refused(tmp_path, capsys):
    f = tmp_path / "bin.txt"
    f.write_bytes(b"\xff\xfe\x00abc\xff")
    assert main(["--text", str(f), "--out", str(tmp_path)]) == 2
    assert "not UTF-8" in capsys.readouterr().err


@pytest.mark.model
def test_small_end_to_end_run_writes_every_output(tmp_path, capsys):
    pytest.importorskip("gguf")
    text = tmp_path / "t.txt"
    text.write_text(load_text("prose")[:20000], encoding="utf-8")
    out = tmp_path / "q"
    rc = main(["--text", str(text), "--contexts", "256", "--span", "6", "--pass-contexts", "256",
               "--depths", "0.5", "--budget", "0.375", "--sweep", "0.75", "--out", str(out), "--json",
               # three sparse layers keep this CI test short; the suite's default is dense_layers 0 1
               "--dense-layers", *map(str, range(27)), "--device", "cpu"])
    assert rc == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    for k in ("ppl_dense", "ppl_sparse", "passkey_dense", "passkey_sparse", "certificate_violations",
              "fallback_rate"):
        assert k in summary
    assert 1.0 < summary["ppl_dense"] < 1e4 and 1.0 < summary["ppl_sparse"] < 1e4
    assert 0.0 <= summary["passkey_dense"] <= 1.0 and 0.0 <= summary["passkey_sparse"] <= 1.0
    assert summary["certificate_violations"] == 0
    assert summary["steps_checked"] > 0
    layers = {int(line.split(",")[0]) for line in open(out / "per_layer.csv").read().split()[1:]}
    assert layers == {27, 28, 29}
    for f in ("perplexity.csv", "passkey.csv", "multikey.csv", "sweep.csv", "per_layer.csv", "per_head.csv",
              "summary.md", "summary.json", "budget_sweep.png", "certified_vs_true.png", "fallback_per_layer.png"):
        assert os.path.getsize(out / f) > 0, f
    assert "user file" in summary["texts"]
    env = summary["env"]
    assert env["device"] == "cpu" and env["backend"] == "torch" and env["dtype"] == "float32"
    assert env["torch"] and env["transformers"] and len(env["model_sha256"]) == 64
    assert summary["complete"] and summary["jobs_done"] == summary["jobs_total"] == 3   # ppl, passkey, multi-key
    progress = json.loads((out / "progress.json").read_text())
    assert progress["done"] == progress["jobs"] == summary["jobs_total"]
    timing = open(out / "timings.csv").read().splitlines()
    assert timing[0] == "task,text,ctx,extra,setting,tokens,seconds,ms_per_token"
    assert sum(line.split(",")[4] == "dense" for line in timing[1:]) == summary["jobs_total"]


def test_certified_mode_budget_is_all_candidates():
    from vashista_app.quality.tasks import budget_setting, budget_tokens
    s = budget_setting(2048, 1 / 8, 16, router="sketch")
    assert s["Kc"] == 256 and s["router"] == "sketch" and budget_tokens(s) == 256
    b = budget_setting(2048, 1 / 8, 16)
    assert budget_tokens(b) <= 256 and b["P"] >= 2


# ------------------------------------------------------------------ device / model file / batch (GPU runs)

@pytest.mark.parametrize("argv, arg, words", [
    (["--model", "/nonexistent/model.gguf"], "--model", "is not a file"),
    (["--model", __file__], "--model", "not a .gguf file"),
    (["--no-ppl", "--no-passkey"], "--no-ppl", "nothing to run"),
    (["--time-limit", "0"], "--time-limit", "positive"),
    (["--time-limit", "nan"], "--time-limit", "positive"),
])
def test_device_run_arguments_are_checked(argv, arg, words, capsys, tmp_path):
    assert main(argv + ["--out", str(tmp_path / "q")]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"vashista quality: {arg}:") and words in err
    assert not (tmp_path / "q").exists()          # refused before anything is written


def test_cuda_without_a_cuda_device_is_refused(capsys, tmp_path):
    import torch
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    assert main(["--device", "cuda", "--out", str(tmp_path)]) == 2
    assert capsys.readouterr().err.startswith("vashista quality: --device:")


def test_device_resolution():
    import torch
    from vashista_app.quality.cli import resolve_device
    assert resolve_device("cpu") == ("cpu", "torch")
    assert resolve_device("auto") == (("cuda", "triton") if torch.cuda.is_available() else ("cpu", "torch"))


def test_decode_loop_refuses_a_model_that_ignores_the_cache():
    """transformers 4.x takes ``past_key_values``, 5.x ``cache``; an unknown name is swallowed by
    **kwargs and every step would see only itself — the loop must notice, not measure garbage."""
    import torch
    from vashista_app.quality.decode_loop import cache_kwarg, prefill

    class Out:
        def __init__(self, n):
            self.logits = torch.zeros(1, n, 5)

    class Forgetful(torch.nn.Module):       # takes the cache under its 4.x name and never fills it
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(1))

        def forward(self, input_ids, past_key_values=None, use_cache=None):
            return Out(input_ids.shape[1])

    m = Forgetful()
    assert cache_kwarg(m) == "past_key_values"
    with pytest.raises(RuntimeError, match="did not grow"):
        prefill(m, torch.zeros(1, 4, dtype=torch.long))


def test_batch_runs_steps_in_order_within_the_budget(tmp_path, monkeypatch, capsys):
    """Scheduling only (no model): steps run in plan order with min(cap, what is left) as their time
    limit, a failing step is recorded and the next one still runs, steps past the budget are skipped."""
    import time as _time
    from vashista_app.quality import batch, cli

    calls = []

    def fake_run(args, cfg, loaded=None):
        calls.append((os.path.basename(args.out), args.time_limit, cfg["contexts"], args.router))
        if args.router == "mean":
            raise RuntimeError("boom")
        _time.sleep(0.8)
        return dict(complete=True, out=args.out)

    monkeypatch.setattr(cli, "load", lambda args: ("model", "tok", dict(device=args.device)))
    monkeypatch.setattr(cli, "run_suite", fake_run)
    plan = tmp_path / "plan.txt"
    plan.write_text("# comment\nfirst 100 --contexts 2048\n\nbad 1.5 --router mean  # fails\n"
                    "late 100 --contexts 4096\nnever 100\n")
    summ = tmp_path / "s.json"
    rc = batch.main(["--plan", str(plan), "--out-root", str(tmp_path / "o"), "--budget-s", "3.0",
                     "--min-step-s", "1.5", "--summaries", str(summ), "--common", "--device cpu --span 8"])
    assert rc == 1                                   # one step failed
    names = [c[0] for c in calls]
    assert names == ["first", "bad", "late"]
    assert calls[0][1] == pytest.approx(3.0, abs=0.3) and calls[1][1] == pytest.approx(1.5)
    assert calls[0][2] == [2048] and calls[2][2] == [4096]
    res = json.loads(summ.read_text())
    assert res["first"]["complete"] and "boom" in res["bad"]["error"] and "skipped" in res["never"]
    assert res["_env"] == {"device": "cpu"}


@pytest.mark.parametrize("text, words", [("only_a_name\n", "NAME CAP_S"), ("x 12s --quick\n", "not a number"),
                                         ("a/b 10\n", "must be"), ("# nothing\n", "no steps")])
def test_batch_plan_errors(tmp_path, text, words, capsys):
    from vashista_app.quality import batch
    plan = tmp_path / "plan.txt"
    plan.write_text(text)
    assert batch.main(["--plan", str(plan), "--out-root", str(tmp_path / "o"), "--budget-s", "10"]) == 2
    assert words in capsys.readouterr().err
