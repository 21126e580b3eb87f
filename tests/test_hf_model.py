"""Issue 6 on the embedded SmolLM2-135M (Llama, GQA 9 query / 3 KV heads): the model is loaded once
per session (``load_default_model(shared=True)``) and contexts are kept short for CI."""
import pytest
import torch

from helpers import REL_TOL, assert_rel_close, rel_error

pytest.importorskip("transformers")
pytest.importorskip("gguf")

from vashista_gpu.hf import disable_vashista, enable_vashista, load_default_model  # noqa: E402
from vashista_app.quality.decode_loop import cache_kwarg   # noqa: E402  ('cache' or 'past_key_values' by version)

pytestmark = pytest.mark.model


@pytest.fixture(scope="module")
def smol():
    try:
        model, tok = load_default_model(shared=True)
    except Exception as e:  # the package is an optional extra
        pytest.skip(f"embedded model unavailable: {e}")
    yield model, tok
    if getattr(model, "_vashista_handle", None) is not None:
        disable_vashista(model)


def _prompt(tok, n, offset=0):
    from vashista_app.quality.texts import load_text
    return tok(load_text("prose"), return_tensors="pt").input_ids[0, offset:offset + n]


@torch.no_grad()
def _decode(model, ids, n_prefill):
    from transformers import DynamicCache
    cache = DynamicCache()
    out = model(ids[None, :n_prefill], use_cache=True, **{cache_kwarg(model): cache})
    logits = [out.logits[0, -1]]
    for t in range(n_prefill, ids.numel()):
        logits.append(model(ids[None, t:t + 1], use_cache=True, **{cache_kwarg(model): cache}).logits[0, -1])
    return torch.stack(logits)


@torch.no_grad()
def test_sdpa_only_wrapper_reproduces_logits_exactly(smol):
    from transformers import AttentionInterface
    from transformers.integrations.sdpa_attention import sdpa_attention_forward
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    model, tok = smol
    ids = _prompt(tok, 48)
    batch = torch.stack([ids, torch.cat([torch.full((12,), tok.pad_token_id or 0), ids[:36]])])
    am = torch.ones_like(batch)
    am[1, :12] = 0
    ref = model(batch, attention_mask=am).logits
    AttentionInterface.register("sdpa_wrap_test", lambda *a, **k: sdpa_attention_forward(*a, **k))
    AttentionMaskInterface.register("sdpa_wrap_test", sdpa_mask)
    model.set_attn_implementation("sdpa_wrap_test")
    try:
        got = model(batch, attention_mask=am).logits
    finally:
        model.set_attn_implementation("sdpa")
    assert torch.equal(got, ref)


@torch.no_grad()
def test_full_coverage_reproduces_dense_logits_gqa(smol):
    model, tok = smol
    ids = _prompt(tok, 72, offset=1000)
    ref = _decode(model, ids, 64)
    h = enable_vashista(model, P=64, Kc=1024, page_size=16, dense_layers=(0, 1), collect_stats=True)
    try:
        got = _decode(model, ids, 64)
    finally:
        disable_vashista(model)
    assert_rel_close(got, ref, torch.float32, "SmolLM2 decode logits, P/Kc covering the context")
    s = h.stats.summary()
    assert s["steps"] == 28 * 8 * 9          # sparse layers x decode steps x query heads (GQA 9/3)


@torch.no_grad()
def test_sparse_budget_is_certified_on_real_model(smol):
    """Every layer, head and step: certified error >= float64 dense-shadow error (a violation is a bug)."""
    model, tok = smol
    ids = _prompt(tok, 200, offset=3000)
    ref = _decode(model, ids, 190)
    h = enable_vashista(model, P=2, Kc=16, page_size=8, dense_layers=(0, 1), collect_stats=True,
                        shadow_dense=True)
    try:
        got = _decode(model, ids, 190)
    finally:
        disable_vashista(model)
    assert rel_error(got, ref) > REL_TOL["float32"]        # the budget really is sparse
    s = h.stats.summary()
    assert s["steps"] == 28 * 10 * 9 and s["shadow"]
    assert s["certificate_violations"] == 0, h.stats.per_layer()
    assert s["max_true_error"] > 0


@torch.no_grad()
def test_padded_batch_generate_full_coverage_equals_dense(smol):
    model, tok = smol
    tok.padding_side = "left"
    enc = tok(["The Python language reference says that", "A list comprehension"], return_tensors="pt",
              padding=True)
    dense = model.generate(**enc, max_new_tokens=10, do_sample=False)
    enable_vashista(model, P=64, Kc=1024, page_size=8, dense_layers=(0,))
    try:
        sparse = model.generate(**enc, max_new_tokens=10, do_sample=False)
        lens = model._vashista_handle.layers[5].mirror.lengths()
    finally:
        disable_vashista(model)
    assert torch.equal(sparse, dense)
    real = enc["attention_mask"].sum(-1).tolist()
    assert lens == [n + 9 for n in real]          # padding never paged
