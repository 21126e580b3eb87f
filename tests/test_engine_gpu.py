"""GPU tests of the engine (issue 14): the CUDA-graph replay of the whole model's decode step is
bit-identical to the same step run eagerly, in every mode; ragged batches on the planned path match
per-sequence runs; admission after a release reuses the freed pages. Random-weight Llama models
(decode does not depend on the weights). Skipped without CUDA."""
from __future__ import annotations

import pytest
import torch

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


def _model(dtype=torch.bfloat16, layers=2):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=512, hidden_size=256, intermediate_size=512, num_hidden_layers=layers,
                      num_attention_heads=4, num_key_value_heads=2, head_dim=64, max_position_embeddings=8192)
    return LlamaForCausalLM(cfg).to(device="cuda", dtype=dtype).eval()


def _prompts(lengths, seed=1):
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(0, 512, (n,), generator=g).tolist() for n in lengths]


def _run(model, prompts, graph, max_new=9, **kw):
    """(new tokens per prompt, last layer's K pool, certified sketch codes or None, stats tensor)."""
    from vashista_gpu.engine import Engine

    eng = Engine(model, max_seqs=len(prompts), max_tokens=1024, graph=graph, **kw)
    with eng:
        seqs = eng.add(prompts, max_new)
        eng.run()
        pool = eng.cache.pools[-1]
        k = pool.k_pages.clone()
        codes = next(iter(pool.sketches.values())).codes.clone() if pool.sketches else None
        stats = eng.runner.stats.t.clone()
        toks = [eng.finish(s) for s in seqs]
    return toks, k, codes, stats


@pytest.mark.parametrize("mode", ["certified", "paged", "dense"])
def test_graph_replay_matches_eager_bit_for_bit(mode):
    model = _model()
    prompts = _prompts([300, 203])
    kw = dict(mode=mode, bits=4, budget=1 / 8)
    eager = _run(model, prompts, graph=False, **kw)
    graphed = _run(model, prompts, graph=True, **kw)
    assert eager[0] == graphed[0]
    assert torch.equal(eager[1].view(torch.int16), graphed[1].view(torch.int16))   # NaN-safe bitwise
    if mode == "certified":
        assert torch.equal(eager[2], graphed[2])
    assert torch.equal(eager[3], graphed[3])
    if mode != "dense":
        assert eager[3][:, 0].sum() > 0                       # the statistics counted the queries


@pytest.mark.parametrize("mode", ["certified", "dense"])
def test_compiled_layers_replay_bit_for_bit_and_decode_as_uncompiled(mode):
    # compile=True (engine/compiled.py): the first two steps (the capture's warm-up) compile, the capture
    # records inductor's kernels; the replay must equal the same compiled step run eagerly, bit for bit
    model = _model(layers=3)
    prompts = _prompts([300, 203])
    kw = dict(mode=mode, bits=4, budget=1 / 8)
    eager = _run(model, prompts, graph=False, compile=True, **kw)
    graphed = _run(model, prompts, graph=True, compile=True, **kw)
    assert eager[0] == graphed[0]
    assert torch.equal(eager[1].view(torch.int16), graphed[1].view(torch.int16))
    assert torch.equal(eager[3], graphed[3])
    # inductor reorders bf16 arithmetic: greedy tokens of a random model agree with the uncompiled run
    # on most steps (not bit for bit), here at least the first token after prefill, which no compiled
    # step touched (prefill runs eagerly)
    plain = _run(model, prompts, graph=True, **kw)
    assert [t[0] for t in plain[0]] == [t[0] for t in graphed[0]]
    assert "forward" not in vars(model.model.layers[0])


def test_dense_fallback_in_graph_matches_eager():
    from vashista_core.policies import DenseFallback

    model = _model()
    prompts = _prompts([260])
    kw = dict(mode="certified", bits=8, budget=1 / 16, policy=DenseFallback(1e-3))
    eager = _run(model, prompts, graph=False, **kw)
    graphed = _run(model, prompts, graph=True, **kw)
    assert eager[0] == graphed[0] and torch.equal(eager[3], graphed[3])
    assert eager[3][:, 2].sum() > 0          # random weights: near-uniform attention, heads fall back


@pytest.mark.parametrize("bits", [4, 8])
def test_two_sided_bounds_select_the_same_and_certify_no_tighter(bits):
    # the selection reads only ŝ, which both bounds share: same tokens; each token's two-sided bound is
    # ≥ its one-sided one, so every certificate (sum and max over queries) is at least as large
    model = _model(dtype=torch.float32)
    prompts = _prompts([300, 203])
    kw = dict(mode="certified", bits=bits, budget=1 / 8)
    one = _run(model, prompts, graph=True, one_sided=True, **kw)     # (int8's default is two-sided on CUDA)
    two = _run(model, prompts, graph=True, one_sided=False, **kw)
    assert one[0] == two[0]
    from vashista_gpu.engine.step import STAT_FIELDS as STATS

    s1, s2 = one[3][1:], two[3][1:]
    assert torch.equal(s1[:, 0], s2[:, 0]) and s1[:, 0].sum() > 0
    assert torch.all(s2[:, STATS.index("error_sum")] >= s1[:, STATS.index("error_sum")])
    assert torch.all(s2[:, STATS.index("error_max")] >= s1[:, STATS.index("error_max")])


def test_bounds_default_is_two_sided_for_int8_only_on_gpu():
    from vashista_gpu.engine import generate

    model = _model()
    for bits, one_sided in ((8, False), (4, True)):
        r = generate(model, _prompts([200])[0], mode="certified", bits=bits, max_new_tokens=2)
        assert r.config["one_sided"] is one_sided


@pytest.mark.parametrize("mode", ["certified", "dense"])
def test_graph_replay_stops_at_the_stop_token_on_a_check(mode):
    """The replay loop tests for the stop token every check_every replays: it stops at the first
    check after every row produced it, and its tokens are the full run's prefix."""
    from vashista_gpu.engine import Engine, generate

    model = _model(dtype=torch.float32)
    kw = dict(mode=mode, bits=8, budget=1 / 4)
    for seed in range(5, 25):     # a random model often repeats a cycle: take a prompt whose run does not
        (p,) = _prompts([230], seed=seed)
        ref = _run(model, [p], graph=True, max_new=40, **kw)[0][0]
        i = next((j for j in range(7, 40) if ref[j] not in ref[:j]), None)
        if i is not None:
            break
    assert i is not None, "no prompt gives a token that first appears after step 6"
    eng = Engine(model, max_seqs=1, max_tokens=1024, graph=True, **kw)
    with eng:
        (s,) = eng.add([p], 40)
        ran = eng.run(stop_tokens=ref[i], check_every=4)
        assert ran == min(40 - 1, 2 + 4 * -(-(i - 2) // 4))   # 2 capture steps, then checks every 4
        assert eng.finish(s) == ref[:ran + 1]
    r = generate(model, p, max_new_tokens=40, eos_token_id=ref[i], **kw)
    assert r.tokens == [ref[:i + 1]]


def test_full_budget_matches_dense_tokens_on_gpu():
    model = _model(dtype=torch.float32)
    prompts = _prompts([150, 97])
    dense = _run(model, prompts, graph=True, mode="dense")[0]
    for mode in ("certified", "paged"):
        assert _run(model, prompts, graph=True, mode=mode, budget=1.0, max_new=2)[0] == [t[:2] for t in dense]


def test_ragged_batch_matches_single_runs_on_gpu():
    # dense mode: exact attention, so the rows' tokens cannot depend on the batch. (The selecting modes
    # can: the batch's projections differ from a single row's in the last bits — 6e-7 in K here — and
    # a random model's near-uniform scores let that flip a candidate; the CPU test covers them.)
    model = _model(dtype=torch.float32)
    prompts = _prompts([180, 64, 131])
    batch = _run(model, prompts, graph=True, mode="dense")[0]
    for p, toks in zip(prompts, batch):
        assert _run(model, [p], graph=True, mode="dense")[0][0] == toks


def test_release_and_admit_reuses_pages_on_gpu():
    from vashista_gpu.engine import Engine

    model = _model()
    a, b, c = _prompts([100, 70, 90])
    eng = Engine(model, mode="certified", bits=4, budget=1 / 4, max_seqs=2, max_tokens=256, num_pages=16)
    with eng:
        sa, sb = eng.add([a, b], 6)
        eng.run()
        pages_a = set(eng.cache.pools[0].page_table(sa))
        eng.finish(sa)
        (sc,) = eng.add([c], 6)
        assert set(eng.cache.pools[0].page_table(sc)) <= pages_a | set(range(16))
        assert set(eng.cache.pools[0].page_table(sc)) & pages_a
        eng.run()
        tc = eng.finish(sc)
        eng.finish(sb)
    alone = _run(model, [c], graph=True, max_new=6, mode="certified", bits=4, budget=1 / 4)[0][0]
    assert tc == alone


@pytest.mark.parametrize("meta", ["float16", "float32"])
def test_device_append_on_cuda_equals_host_append_on_cpu(meta):
    """The captured step's append (Triton page summaries without key boxes, sketch requantized with no
    checks) stores on the GPU exactly what the checked host append stores on the CPU."""
    from vashista_gpu.paged_cache import TorchPagedKVCache
    from vashista_gpu.sketch import attach_sketch

    g = torch.Generator().manual_seed(3)
    k = (torch.randn(90, 2, 64, generator=g) * 3).to(torch.bfloat16)
    v = torch.randn(90, 2, 64, generator=g).to(torch.bfloat16)
    if meta == "float32":
        k[32:48] = -2.0 ** -100
        k[40] = 15 * 2.0 ** 36
    out = []
    for dev, ks in (("cpu", True), ("cuda", False)):
        c = TorchPagedKVCache(16, 2, 64, num_pages=8, max_seqs=1, dtype=torch.bfloat16, device=dev, key_summaries=ks)
        attach_sketch(c, 4, meta_dtype=meta)
        s = c.add_sequence()
        if dev == "cpu":
            c.append(s, k, v)
        else:
            c.reserve(s, 90)
            idx = torch.tensor([s], dtype=torch.int32, device=dev)
            for t in range(90):
                c.append_step_device(idx, k[t:t + 1].to(dev), v[t:t + 1].to(dev))
            c.sync_lengths()
        st = c.sketches[4]
        out.append([x.cpu() for x in (c.k_pages.view(torch.int16), st.codes, st.offset, st.step, c.vnorm, c.seq_lens)])
    for name, a, b in zip(("k_pages", "codes", "offset", "step", "vnorm", "seq_lens"), out[0], out[1]):
        if name == "vnorm":      # the Triton summary sums squares in another order than torch's norm
            torch.testing.assert_close(a, b, rtol=2e-7, atol=0)
        else:
            assert torch.equal(a, b), name
