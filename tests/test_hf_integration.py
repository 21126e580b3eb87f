"""Issue 6, the transformers integration on a tiny random Llama (fast; no model file needed).

The tiny model has the real model's structure (Llama, GQA with 2 query heads per KV head, RoPE), so
the mask handling, the paged mirror and the dispatch are exercised exactly as on SmolLM2; the real
model's checks are in test_hf_model.py.
"""
import os

import pytest
import torch

from helpers import REL_TOL, assert_rel_close, rel_error
from vashista_core.errors import VashistaInputError
from vashista_core.policies import DenseFallback

transformers = pytest.importorskip("transformers")

from vashista_gpu.hf import disable_vashista, enable_vashista  # noqa: E402
from vashista_gpu.hf.model import verify_sha256  # noqa: E402
from vashista_app.quality.decode_loop import cache_kwarg   # noqa: E402  ('cache' or 'past_key_values' by version)

VOCAB = 97


@pytest.fixture(scope="module")
def tiny():
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=3,
                      num_attention_heads=4, num_key_value_heads=2, head_dim=16, max_position_embeddings=1024,
                      pad_token_id=0, bos_token_id=1, eos_token_id=VOCAB + 5)   # never emitted: fixed-length generation
    m = LlamaForCausalLM(cfg).eval()
    # sharpen attention so that sparse selection matters (random init attends almost uniformly)
    with torch.no_grad():
        for layer in m.model.layers:
            layer.self_attn.q_proj.weight.mul_(6.0)
    return m


def _ids(n, b=1, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(2, VOCAB, (b, n), generator=g)


def _decode_logits(model, ids, n_prefill, attention_mask=None):
    """Dense prefill of ids[:, :n_prefill], then token-by-token; logits of every decoded position."""
    from transformers import DynamicCache

    cache = DynamicCache()
    am = attention_mask
    # positions count real tokens only, as generate() does: a left-padded row starts at position 0.
    # (Box-bound routing is not invariant under a RoPE shift, so shifted positions route differently.)
    pos = None if am is None else (am.cumsum(-1) - 1).clamp(min=0)
    kw = lambda a, b: {} if am is None else dict(attention_mask=am[:, :b], position_ids=pos[:, a:b])
    out = model(ids[:, :n_prefill], use_cache=True, **{cache_kwarg(model): cache}, **kw(0, n_prefill))
    assert cache.get_seq_length() == n_prefill, "the model ignored the cache argument"
    logits = [out.logits[:, -1]]
    for t in range(n_prefill, ids.shape[1]):
        out = model(ids[:, t:t + 1], use_cache=True, **{cache_kwarg(model): cache}, **kw(t, t + 1))
        logits.append(out.logits[:, -1])
    return torch.stack(logits, 1)


@pytest.fixture
def disabled_after(tiny):
    yield tiny
    if getattr(tiny, "_vashista_handle", None) is not None:
        disable_vashista(tiny)


@torch.no_grad()
def test_full_coverage_decode_reproduces_dense(disabled_after):
    m = disabled_after
    ids = _ids(70)
    ref = _decode_logits(m, ids, 30)
    h = enable_vashista(m, P=64, Kc=4096, page_size=8, dense_layers=(), collect_stats=True, shadow_dense=True)
    got = _decode_logits(m, ids, 30)
    assert_rel_close(got, ref, torch.float32, "decode logits, P/Kc covering the context")
    s = h.stats.summary()
    assert s["steps"] == 3 * 40 * 4            # layers x decode steps x query heads, all recorded
    rows = h.stats.table()
    # nothing is excluded, so no leakage; what the certificate still carries is the float32 step's
    # rounding against exact dense attention (docs/ROUNDING.md §4; it used to read exactly 0, which
    # the exact output does not satisfy), and it bounds the float64 shadow's distance
    assert max(r["certified_leakage"] for r in rows) == 0.0
    assert 0.0 < s["max_certified_error"] <= 1e-4
    assert s["certificate_violations"] == 0 and s["max_true_error"] <= s["max_certified_error"]


@torch.no_grad()
def test_sparse_prefill_full_coverage_reproduces_dense_forward(disabled_after):
    m = disabled_after
    ids = _ids(50, seed=1)
    ref = m(ids).logits
    enable_vashista(m, P=64, Kc=4096, page_size=4, dense_layers=(0,), prefill="sparse")
    assert_rel_close(m(ids).logits, ref, torch.float32, "sparse prefill logits")


@torch.no_grad()
def test_sparse_budget_changes_logits_and_certificate_bounds_true_error(disabled_after):
    """A genuinely sparse budget must change the output (the test can fail) and stay certified."""
    m = disabled_after
    ids = _ids(160, seed=2)
    ref = _decode_logits(m, ids, 100)
    h = enable_vashista(m, P=3, Kc=12, page_size=8, dense_layers=(0,), collect_stats=True, shadow_dense=True)
    got = _decode_logits(m, ids, 100)
    assert rel_error(got, ref) > REL_TOL["float32"]
    s = h.stats.summary()
    assert s["steps"] == 2 * 60 * 4
    assert s["certificate_violations"] == 0
    rows = h.stats.table()
    assert max(r["true_error"] for r in rows) > 1e-4          # sparsity really dropped mass
    assert all(r["true_error"] <= r["certified_error"] + r["allowance"] for r in rows)
    # the certificate bounds exact attention (issue 15): only the float64 shadow's own rounding is allowed
    assert all(r["true_leakage"] <= r["certified_leakage"] * (1 + 1e-12) + 1e-15 for r in rows)
    assert all(1 <= r["support90"] <= r["support99"] <= 160 for r in rows)


@torch.no_grad()
def test_dense_fallback_with_zero_tolerance_is_dense(disabled_after):
    m = disabled_after
    ids = _ids(90, seed=3)
    ref = _decode_logits(m, ids, 60)
    h = enable_vashista(m, P=2, Kc=8, page_size=8, dense_layers=(), policy=DenseFallback(tol=0.0),
                        collect_stats=True)
    got = _decode_logits(m, ids, 60)
    assert_rel_close(got, ref, torch.float32, "dense-fallback logits")
    assert h.stats.summary()["fallback_rate"] > 0.9      # every uncertified query fell back


@torch.no_grad()
def test_padded_batch_matches_rows_run_alone(disabled_after):
    """Left padding (batch of different lengths): padding must never be paged — the mask pitfall."""
    m = disabled_after
    a, b = _ids(90, seed=4)[0], _ids(57, seed=5)[0]
    L = a.numel()
    ids = torch.zeros((2, L), dtype=torch.long)
    am = torch.zeros((2, L), dtype=torch.long)
    ids[0], am[0] = a, 1
    ids[1, L - b.numel():], am[1, L - b.numel():] = b, 1
    n_dec = 25
    enable_vashista(m, P=3, Kc=16, page_size=8, dense_layers=(0,))
    batch = _decode_logits(m, ids, L - n_dec, attention_mask=am)
    # only real tokens were paged
    assert m._vashista_handle.layers[1].mirror.lengths() == [L, b.numel()]
    alone_a = _decode_logits(m, a[None], L - n_dec)
    alone_b = _decode_logits(m, b[None], b.numel() - n_dec)
    assert_rel_close(batch[0], alone_a[0], torch.float32, "padded batch row 0")
    assert_rel_close(batch[1], alone_b[0], torch.float32, "padded batch row 1 (left-padded)")


@torch.no_grad()
def test_generate_several_hundred_tokens_full_coverage_equals_dense(disabled_after):
    m = disabled_after
    ids = _ids(12, b=2, seed=6)
    dense = m.generate(ids, max_new_tokens=256, do_sample=False, attention_mask=torch.ones_like(ids))
    h = enable_vashista(m, P=1024, Kc=4096, page_size=16, dense_layers=(0, 1))
    sparse = m.generate(ids, max_new_tokens=256, do_sample=False, attention_mask=torch.ones_like(ids))
    assert sparse.shape == (2, 268)
    assert torch.equal(sparse, dense)
    # the mirror followed HF's cache through the whole generation (last token is not fed back)
    assert h.layers[2].mirror.lengths() == [267, 267]
    # a second generate starts from a fresh HF cache: the mirror is rebuilt, not appended to
    before = h.layers[2].mirror.rebuilds
    again = m.generate(ids[:, :5], max_new_tokens=20, do_sample=False, attention_mask=torch.ones_like(ids[:, :5]))
    assert h.layers[2].mirror.lengths() == [24, 24] and h.layers[2].mirror.rebuilds > before
    disable_vashista(m)
    assert torch.equal(again, m.generate(ids[:, :5], max_new_tokens=20, do_sample=False,
                                         attention_mask=torch.ones_like(ids[:, :5])))


@torch.no_grad()
def test_disable_restores_sdpa(disabled_after):
    m = disabled_after
    ids = _ids(40, seed=7)
    ref = _decode_logits(m, ids, 20)
    enable_vashista(m, P=2, Kc=4, page_size=4, dense_layers=())
    assert m.config._attn_implementation == "vashista"
    disable_vashista(m)
    assert m.config._attn_implementation == "sdpa"
    assert torch.equal(_decode_logits(m, ids, 20), ref)
    with pytest.raises(VashistaInputError, match="model"):
        disable_vashista(m)


def test_unsupported_model_is_refused():
    from transformers import GPT2Config, GPT2LMHeadModel, MistralConfig, MistralForCausalLM

    gpt2 = GPT2LMHeadModel(GPT2Config(n_layer=1, n_head=2, n_embd=16, vocab_size=50, n_positions=32))
    with pytest.raises(VashistaInputError, match="model: model_type 'gpt2' is not supported"):
        enable_vashista(gpt2, P=4, Kc=16)
    swa = MistralForCausalLM(MistralConfig(num_hidden_layers=1, hidden_size=32, intermediate_size=64,
                                           num_attention_heads=2, num_key_value_heads=1, vocab_size=50,
                                           sliding_window=16))
    with pytest.raises(VashistaInputError, match="sliding-window"):
        enable_vashista(swa, P=4, Kc=16)
    with pytest.raises(VashistaInputError, match="model"):
        enable_vashista(object(), P=4, Kc=16)


@pytest.mark.parametrize("kw, arg", [
    (dict(P=0, Kc=8), "P"), (dict(P=4, Kc=0), "Kc"), (dict(P=4, Kc=8, page_size=0), "page_size"),
    (dict(P=1, Kc=8, sink_pages=1), "P"), (dict(P=4, Kc=8, solver="newton"), "solver"),
    (dict(P=4, Kc=8, router="random"), "router"), (dict(P=4, Kc=8, policy="dense"), "policy"),
    (dict(P=4, Kc=8, dense_layers=(0, 3)), "dense_layers"), (dict(P=4, Kc=8, prefill="none"), "prefill"),
    (dict(P=4, Kc=8, shadow_dense=True), "shadow_dense"), (dict(P=4.5, Kc=8), "P"),
])
def test_bad_options_name_the_argument(tiny, kw, arg):
    with pytest.raises(VashistaInputError) as e:
        enable_vashista(tiny, **kw)
    assert e.value.argument == arg
    assert getattr(tiny, "_vashista_handle", None) is None and tiny.config._attn_implementation == "sdpa"


def test_sha256_mismatch_is_refused(tmp_path):
    f = tmp_path / "m.gguf"
    f.write_bytes(b"not a model")
    with pytest.raises(VashistaInputError, match="sha256"):
        verify_sha256(str(f), "0" * 64)
    import hashlib
    verify_sha256(str(f), hashlib.sha256(b"not a model").hexdigest())
    assert os.path.exists(f)


@torch.no_grad()
@pytest.mark.parametrize("bits", [4, 8])
def test_certified_mode_full_coverage_is_dense_and_sparse_is_sound(disabled_after, bits):
    """router='sketch' (certified mode) through the HF hook: Kc covering the context reproduces
    dense logits; a sparse Kc changes them and its certificate bounds the float64 true error."""
    m = disabled_after
    ids = _ids(70, seed=5)
    ref = _decode_logits(m, ids, 30)
    enable_vashista(m, P=2, Kc=4096, page_size=8, dense_layers=(), router="sketch", bits=bits)
    assert_rel_close(_decode_logits(m, ids, 30), ref, torch.float32, "certified mode, full coverage")
    h = enable_vashista(m, P=2, Kc=8, page_size=8, dense_layers=(), router="sketch", bits=bits,
                        collect_stats=True, shadow_dense=True)
    got = _decode_logits(m, ids, 30)
    assert rel_error(got, ref) > REL_TOL["float32"]
    assert h.stats.summary()["certificate_violations"] == 0
    rows = h.stats.table()
    assert max(r["true_error"] for r in rows) > 1e-4          # sparsity really dropped mass
    # the certificate bounds exact attention (issue 15): only the float64 shadow's own rounding is allowed
    assert all(r["true_leakage"] <= r["certified_leakage"] * (1 + 1e-12) + 1e-15 for r in rows)


def test_certified_mode_rejects_bad_bits(tiny):
    with pytest.raises(VashistaInputError, match="bits"):
        enable_vashista(tiny, P=2, Kc=8, router="sketch", bits=3)
    with pytest.raises(VashistaInputError, match="bits"):
        enable_vashista(tiny, P=2, Kc=8, router="bound", bits=4)


@pytest.mark.parametrize("name, words", [("missing.gguf", "is not a file"), ("weights.bin", "not a .gguf file")])
def test_load_model_file_refuses_a_missing_or_non_gguf_file(tmp_path, name, words):
    from vashista_gpu.hf import load_model_file
    if name.endswith(".bin"):
        (tmp_path / name).write_bytes(b"x")
    with pytest.raises(VashistaInputError, match=f"model.*{words}"):
        load_model_file(str(tmp_path / name))
