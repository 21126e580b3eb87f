"""The paged certified step as an engine uses it (``vashista_gpu.sketch_plan``): plan once, run many
times while the sequences grow; the policies; the model integration's fused path.

Triton runs under TRITON_INTERPRET=1 on CPU (tests/conftest.py), so sizes are tiny. The CUDA-graph
capture and replay are in test_gpu_sketch_plan.py (CUDA only)."""
from __future__ import annotations

import math
import os

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("triton")

from test_gpu_sketch_paged import DEV, _cache  # noqa: E402  (the same interleaved, shuffled-page cache)

from vashista_gpu.decode import sparse_decode  # noqa: E402
from vashista_gpu.dense import dense_decode  # noqa: E402
from vashista_gpu.sketch_plan import (candidate_weights, fused_paged_sketch_step, paged_certified_decode,  # noqa: E402
                                      plan_sketch_step, run_sketch_plan)
from vashista_core.errors import VashistaInputError  # noqa: E402
from vashista_core.policies import Capped, DenseFallback  # noqa: E402

FIELDS = ("out", "candidates", "certified_leakage", "certified_error", "overflow", "gap")


def _equal(a, b):
    for f in FIELDS:
        assert torch.equal(getattr(a, f), getattr(b, f)), f


def _q(B, Hq, D, seed, s=3.0):
    return (s * torch.randn(B, Hq, D, generator=torch.Generator().manual_seed(seed))).to(DEV)


def _append(cache, ids, n, seed):
    g = torch.Generator().manual_seed(seed)
    H, D = cache.n_kv_heads, cache.head_dim
    for s, k in zip(ids, n):
        if k:
            cache.append(s, (2 * torch.randn(k, H, D, generator=g)).to(DEV),
                         torch.randn(k, H, D, generator=g).to(DEV))


def _dense_truth(cache, sid, q, scale):
    """(p (Hq, T), o (Hq, Dv)) in float64 on the CPU from the stored keys/values; q (Hq, D) on the CPU."""
    K, V = (x.double().cpu() for x in cache.gather(sid))
    G = q.shape[0] // cache.n_kv_heads
    K = K.repeat_interleave(G, 1).transpose(0, 1)
    V = V.repeat_interleave(G, 1).transpose(0, 1)
    p = torch.softmax(torch.einsum("htd,hd->ht", K, q.double()) * scale, -1)
    return p, torch.einsum("ht,htd->hd", p, V)


@pytest.mark.parametrize("bits,G,one_sided", [(4, 2, True), (8, 1, False)])
def test_plan_then_run_is_the_one_call_step(bits, G, one_sided):
    cache, ids, _ = _cache([70, 45], 2, 8, bits, grid=False, seed=bits)
    q = _q(2, 2 * G, 8, seed=G)
    plan = plan_sketch_step(cache, ids, 2 * G, 10, bits=bits, one_sided=one_sided)
    a = run_sketch_plan(plan, q, sync=True)
    _equal(a, fused_paged_sketch_step(q, cache, ids, 10, bits=bits, one_sided=one_sided))
    _equal(a, run_sketch_plan(plan, q))                 # sync=False: nothing overflowed, nothing differs


def test_replay_after_appends_equals_a_fresh_call_and_stays_sound():
    """One plan (max_tokens fixed), run before and after appends that cross page boundaries and
    allocate pages: identical to a fresh step with the same T, same candidates and certificates (to
    float32 rounding) as a fresh step with T = the longest sequence, and sound against dense."""
    lens, Hkv, G, D, Kc, bits = [60, 33], 1, 3, 16, 6, 8
    cache, ids, _ = _cache(lens, Hkv, D, bits, grid=False, seed=3)
    q = _q(2, Hkv * G, D, seed=4)
    plan = plan_sketch_step(cache, ids, Hkv * G, Kc, bits=bits, max_tokens=96)
    first = run_sketch_plan(plan, q)
    _equal(first, fused_paged_sketch_step(q, cache, ids, Kc, bits=bits, max_tokens=96, sync=False))
    for step, n in enumerate([[1, 1], [35, 62]]):
        _append(cache, ids, n, seed=10 + step)
        r = run_sketch_plan(plan, q)
        _equal(r, fused_paged_sketch_step(q, cache, ids, Kc, bits=bits, max_tokens=96, sync=False))
        fresh = fused_paged_sketch_step(q, cache, ids, Kc, bits=bits)
        assert torch.equal(r.candidates, fresh.candidates) and not bool(r.overflow.any())
        torch.testing.assert_close(r.out, fresh.out, rtol=0, atol=0)
        torch.testing.assert_close(r.certified_leakage, fresh.certified_leakage, rtol=1e-6, atol=0)
        for b, sid in enumerate(ids):
            p, o = _dense_truth(cache, sid, q[b].cpu(), plan.scale)
            true_leak = p.scatter(1, r.candidates[b].cpu(), 0.0).sum(-1)
            assert bool((r.certified_leakage[b].cpu().double() >= true_leak).all())
            err = torch.linalg.vector_norm(r.out[b].cpu().double() - o, dim=-1)
            assert bool((err <= r.certified_error[b].cpu().double()).all())
    assert [cache.length(s) for s in ids] == [96, 96]
    _append(cache, ids, [1, 0], seed=99)
    with pytest.raises(VashistaInputError, match="max_tokens"):
        run_sketch_plan(plan, q)


def test_short_rows_of_a_padded_batch_keep_the_tie_rule_without_sync():
    """Rows with fewer than Kc 16-token blocks next to a long padded row length (threshold selection
    path, whose threshold is −inf on such rows): the tie rule's top-Kc, no overflow, no sync."""
    cache, ids, _ = _cache([120, 10, 16], 1, 8, 4, grid=False, seed=5)
    q = _q(3, 2, 8, seed=6)
    plan = plan_sketch_step(cache, ids, 2, 2, bits=4, max_tokens=256)   # 16 blocks ≥ 8·Kc: threshold path
    assert plan.short_window == 32
    r = run_sketch_plan(plan, q)
    assert not bool(r.overflow.any())
    fresh = fused_paged_sketch_step(q, cache, ids, 2, bits=4)           # T = 120: full top-k path
    assert torch.equal(r.candidates, fresh.candidates)
    torch.testing.assert_close(r.out, fresh.out, rtol=0, atol=0)
    assert bool((r.candidates[1] < 10).all() and (r.candidates[2] < 16).all())


def _policy_case():
    cache, ids, _ = _cache([90, 70, 64], 1, 16, 4, grid=False, seed=11)
    return cache, ids, _q(3, 4, 16, seed=12, s=2.0)


def test_dense_fallback_rows_equal_dense_and_the_rest_are_untouched():
    cache, ids, q = _policy_case()
    free = paged_certified_decode(q, cache, ids, 8, bits=4)
    tol = float(free.certified_error.median())
    fb = paged_certified_decode(q, cache, ids, 8, bits=4, policy=DenseFallback(tol))
    assert fb.path == "fused" and 0 < int(fb.fell_back.sum()) < fb.fell_back.numel()
    assert torch.equal(fb.fell_back, ~(free.certified_error <= tol))
    dense = dense_decode(q, cache, ids)
    torch.testing.assert_close(fb.out[fb.fell_back], dense[fb.fell_back], rtol=0, atol=0)
    torch.testing.assert_close(fb.out[~fb.fell_back], free.out[~fb.fell_back], rtol=0, atol=0)
    assert torch.equal(fb.candidates, free.candidates) and torch.equal(fb.Kc_used, free.Kc_used)


def test_capped_widens_kc_per_row_until_certified_or_capped():
    """Per batch row, Kc doubles (capped at Kc_max and the row's length) while a head of the row is
    uncertified; each head reports the first attempt that certified it (else the last, then dense)."""
    cache, ids, q = _policy_case()
    Kc, Kc_max = 8, 32
    sched = {b: [k for k in (8, 16, 32) if k <= min(Kc_max, cache.length(s))] for b, s in enumerate(ids)}
    # each row's attempts alone, batched per Kc (rows are independent: the batch only pads them)
    att = {k: fused_paged_sketch_step(q, cache, ids, k, bits=4) for k in (8, 16, 32)}
    tol = float(att[16].certified_error[0].max())
    res = paged_certified_decode(q, cache, ids, Kc, bits=4, policy=Capped(tol, 1, Kc_max))
    widened = 0
    for b in range(3):
        for h in range(4):
            ks = sched[b]
            ok = [k for k in ks if float(att[k].certified_error[b, h]) <= tol]
            want = ok[0] if ok else ks[-1]
            assert int(res.Kc_used[b, h]) == want, (b, h)
            widened += want > Kc
            a = att[want]
            assert res.candidates[b, h, :want].tolist() == a.candidates[b, h].tolist()
            assert bool((res.candidates[b, h, want:] == -1).all()) and float(res.weights[b, h, want:].abs().sum()) == 0
            assert bool(res.fell_back[b, h]) == (not ok)
            if ok:
                torch.testing.assert_close(res.out[b, h], a.out[b, h], rtol=1e-6, atol=1e-6)
                torch.testing.assert_close(res.certified_error[b, h], a.certified_error[b, h], rtol=1e-6, atol=0)
    assert widened > 0, "the tolerance must make some heads widen"
    with pytest.raises(VashistaInputError, match="Kc_max"):
        paged_certified_decode(q, cache, ids, 8, bits=4, policy=Capped(tol, 1, 4))   # Kc_max < Kc


def test_sparse_decode_takes_the_fused_path_on_the_triton_backend():
    cache, ids, _ = _cache([150, 97], 2, 8, 8, grid=True, seed=8)
    q = torch.randint(-3, 4, (2, 4, 8), generator=torch.Generator().manual_seed(2)).float().to(DEV)
    fused = sparse_decode(q, cache, ids, 1, 10, router="sketch", bits=8, backend="triton", scale=1 / 16)
    torch_ = sparse_decode(q, cache, ids, 1, 10, router="sketch", bits=8, backend="torch", scale=1 / 16)
    assert (fused.path, torch_.path) == ("fused", "torch")
    direct = fused_paged_sketch_step(q, cache, ids, 10, bits=8, scale=1 / 16)
    assert torch.equal(fused.candidates, direct.candidates) and torch.equal(fused.out, direct.out)
    # grid keys: the float32 scan is exact, so both paths pick the same tokens with the same weights
    assert torch.equal(fused.candidates, torch_.candidates)
    torch.testing.assert_close(fused.weights, torch_.weights, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(fused.weights.sum(-1), torch.ones(2, 4, device=DEV))
    assert bool((fused.certified_leakage.double() >= torch_.certified_leakage.double() * (1 - 1e-6)).all())
    assert bool((fused.gap > 0).eq(torch_.gap > 0).all())
    plan = plan_sketch_step(cache, ids, 4, 10, bits=8, scale=1 / 16)
    torch.testing.assert_close(candidate_weights(plan, q, direct.candidates), fused.weights, rtol=0, atol=0)
    odd, oids, _ = _cache([40], 2, 8, 4, grid=False, seed=0, page=8)       # page 8: the kernels' blocks are 16
    assert sparse_decode(q[:1], odd, oids, 1, 4, router="sketch", bits=4, backend="triton").path == "torch"


@pytest.mark.skipif(torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET") != "1",
                    reason="the examples use CPU tensors: they run under the Triton interpreter")
def test_module_example_runs():
    import doctest

    import vashista_gpu.sketch_plan as sp
    res = doctest.testmod(sp)
    assert res.failed == 0 and res.attempted >= 10


def _bad(call, argument):
    with pytest.raises(VashistaInputError) as e:
        call()
    assert e.value.argument == argument, (e.value.argument, argument)


def test_bad_input_names_the_argument():
    cache, ids, _ = _cache([40, 30], 2, 8, 4, grid=False, seed=0)
    q = torch.randn(2, 4, 8, device=DEV)
    plan = plan_sketch_step(cache, ids, 4, 4, bits=4)
    empty = cache.add_sequence()
    _bad(lambda: plan_sketch_step(cache, ids, 3, 4, bits=4), "q")
    _bad(lambda: plan_sketch_step(cache, ids, 4, 31, bits=4), "Kc")
    _bad(lambda: plan_sketch_step(cache, ids, 4, 0, bits=4), "Kc")
    _bad(lambda: plan_sketch_step(cache, ids, 4, 4, bits=4, max_tokens=39), "max_tokens")
    _bad(lambda: plan_sketch_step(cache, ids, 4, 4, bits=4, max_tokens=10 ** 9), "max_tokens")
    _bad(lambda: plan_sketch_step(cache, [ids[0], 57], 4, 4, bits=4), "seq_ids")
    _bad(lambda: plan_sketch_step(cache, [ids[0], empty], 4, 4, bits=4), "cache")     # as plan_decode
    _bad(lambda: plan_sketch_step(cache, [], 4, 4, bits=4), "seq_ids")
    _bad(lambda: plan_sketch_step(cache, ids, 4, 4, bits=2), "bits")
    _bad(lambda: plan_sketch_step(cache, ids, 4, 4, bits=5), "bits")
    _bad(lambda: plan_sketch_step(cache, ids, 4, 4, bits=4, cap=3), "cap")
    _bad(lambda: plan_sketch_step(cache, ids, 4, 4, bits=4, scale=-1.0), "scale")
    _bad(lambda: run_sketch_plan(plan, q[:, :2]), "q")
    _bad(lambda: run_sketch_plan(plan, q[:1]), "q")
    nan = q.clone()
    nan[1, 2, 3] = math.nan
    _bad(lambda: run_sketch_plan(plan, nan, sync=True), "q")
    _bad(lambda: fused_paged_sketch_step(nan, cache, ids, 4, bits=4), "q")
    _bad(lambda: fused_paged_sketch_step(q[:, :, :4], cache, ids, 4, bits=4), "q")
    _bad(lambda: fused_paged_sketch_step(q, cache, ids[:1], 4, bits=4), "seq_ids")
    _bad(lambda: paged_certified_decode(q, cache, ids, 4, bits=4, policy="dense"), "policy")
    from vashista_gpu.sketch import attach_sketch
    attach_sketch(cache, 4, meta_dtype="float32")          # replaces the store the plan reads
    _bad(lambda: run_sketch_plan(plan, q), "cache")
    plan = plan_sketch_step(cache, ids, 4, 4, bits=4)
    cache.free_sequence(ids[1])
    _bad(lambda: run_sketch_plan(plan, q), "seq_ids")


# ------------------------------------------------------------------------------------ the HF integration
@pytest.fixture(scope="module")
def tiny_llama():
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(vocab_size=97, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                   num_attention_heads=4, num_key_value_heads=2, head_dim=16,
                                   max_position_embeddings=256, pad_token_id=0, bos_token_id=1, eos_token_id=102)
    m = transformers.LlamaForCausalLM(cfg).eval().to(DEV)   # Triton needs CUDA tensors, or the interpreter
    with torch.no_grad():                              # sharpen attention, as test_hf_integration's model
        for layer in m.model.layers:
            layer.self_attn.q_proj.weight.mul_(6.0)
    return m


@torch.no_grad()
def test_hf_certified_mode_runs_the_fused_path(tiny_llama, monkeypatch):
    """router='sketch' with backend='triton' and 16-token pages: every decode call goes through
    ``paged_certified_decode``; Kc covering the context reproduces dense logits, a sparse Kc is sound."""
    from transformers import DynamicCache

    import vashista_gpu.sketch_plan as sp
    from vashista_gpu.hf import disable_vashista, enable_vashista
    from vashista_app.quality.decode_loop import cache_kwarg

    calls = []
    real = sp.paged_certified_decode
    monkeypatch.setattr(sp, "paged_certified_decode", lambda *a, **k: calls.append(1) or real(*a, **k))
    m = tiny_llama
    ids = torch.randint(2, 97, (1, 40), generator=torch.Generator().manual_seed(5)).to(DEV)

    ck = cache_kwarg(m)             # ``cache`` in recent transformers 5, ``past_key_values`` before

    def decode():
        cache = DynamicCache()
        out = m(ids[:, :34], use_cache=True, **{ck: cache})
        logits = [out.logits[:, -1]]
        for t in range(34, 40):
            logits.append(m(ids[:, t:t + 1], use_cache=True, **{ck: cache}).logits[:, -1])
        assert cache.get_seq_length() == 40             # the cache really was used
        return torch.stack(logits, 1)

    ref = decode()
    try:
        enable_vashista(m, P=2, Kc=4096, page_size=16, dense_layers=(), router="sketch", bits=8, backend="triton")
        torch.testing.assert_close(decode(), ref, rtol=1e-4, atol=1e-4)
        assert len(calls) == 2 * 6
        h = enable_vashista(m, P=2, Kc=8, page_size=16, dense_layers=(), router="sketch", bits=4, backend="triton",
                            collect_stats=True, shadow_dense=True)
        got = decode()
    finally:
        disable_vashista(m)
    assert len(calls) == 4 * 6
    assert float((got - ref).abs().max()) > 1e-4                  # sparsity changed the logits
    assert h.stats.summary()["certificate_violations"] == 0
    rows = h.stats.table()
    assert all(r["true_leakage"] <= r["certified_leakage"] + 1e-6 for r in rows)
    assert all(r["true_error"] <= r["certified_error"] + r["allowance"] for r in rows)
