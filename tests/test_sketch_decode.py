"""Certified mode inside the reference decode: the paged cache's sketch, ``router="sketch"``, the
policies and ``vashista certify --decode --router sketch``."""
from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from helpers import assert_rel_close
from vashista_app import cmd_decode
from vashista_core.errors import VashistaInputError
from vashista_ref.paged_cache import PagedKVCache
from vashista_core.policies import Capped, DenseFallback
from vashista_ref.sketch import attach_sketch, certified_step, dense_leakage, quantize_keys
from vashista_ref.sparse_decode import sparse_decode

# expensive properties run at half the profile's example count (ci: 12, thorough: 500)
FEW = max(5, settings.default.max_examples // 2)


def _arrays(seed, T, H=2, D=16, Dv=8, q_scale=3.0, Hq=None):
    rng = np.random.default_rng(seed)
    K = rng.standard_normal((T, H, D))
    K[:, :, 0] *= 20                                     # an outlier channel
    q = rng.standard_normal((1, Hq or H, D)) * q_scale
    return K, rng.standard_normal((T, H, Dv)), q


@settings(max_examples=FEW)
@given(st.integers(0, 2**32 - 1), st.integers(1, 90), st.sampled_from([1, 5, None]),
       st.sampled_from([4, 8]), st.booleans())
def test_cache_sketch_matches_quantizing_the_sequence(seed, T, chunk, bits, attach_first):
    """However the tokens arrive (prefill, chunks, one by one; shuffled physical pages), the cache's
    quantized pages equal quantize_keys of the whole sequence with group = page size."""
    K, V, _ = _arrays(seed, T)
    if attach_first:                                      # attached before any token: kept current on append
        cache = PagedKVCache(page_size=8, n_kv_heads=2, head_dim=16, value_dim=8)
        attach_sketch(cache, bits)
        sid = cache.add_sequence()
        step = T if chunk is None else chunk
        for t in range(0, T, step):
            cache.append(sid, K[t:t + step], V[t:t + step])
    else:                                                 # attached to an existing cache
        cache, (sid,) = PagedKVCache.from_dense(K, V, 8, shuffle_seed=seed % 7, chunk=chunk)
        attach_sketch(cache, bits)
    store = cache.sketches[bits]
    for h in range(2):
        got, ref = store.sequence_sketch(cache, sid, h), quantize_keys(K[:, h], bits=bits, group=8)
        np.testing.assert_array_equal(got.codes, ref.codes)
        np.testing.assert_array_equal(got.offset, ref.offset)
        np.testing.assert_array_equal(got.step, ref.step)


@settings(max_examples=FEW)
@given(st.integers(0, 2**32 - 1), st.integers(20, 120), st.sampled_from([(2, 2), (2, 6), (1, 3)]),
       st.sampled_from([4, 8]))
def test_router_sketch_equals_certified_step_and_is_sound(seed, T, heads, bits):
    Hkv, Hq = heads
    K, V, q = _arrays(seed, T, H=Hkv, Hq=Hq)
    cache, seqs = PagedKVCache.from_dense(K, V, 16, shuffle_seed=seed % 5)
    Kc = min(12, T)
    res = sparse_decode(q, cache, seqs, 2, Kc, router="sketch", bits=bits)
    dense = res.dense_out()
    G = Hq // Hkv
    for h in range(Hq):
        kvh = h // G
        ref = certified_step(q[0, h], K[:, kvh], V[:, kvh], quantize_keys(K[:, kvh], bits=bits, group=16), Kc,
                             with_dense=True)
        np.testing.assert_array_equal(np.sort(res.candidates[0][h]), ref.candidates)
        assert_rel_close(res.out[0, h], ref.out, "float64")
        assert res.certified_leakage[0, h] == ref.certified_leakage
        assert res.certified_error[0, h] == ref.error
        assert res.certified_leakage[0, h] >= ref.true_leakage
        assert res.certified_error[0, h] >= np.linalg.norm(res.out[0, h] - dense[0, h])
        assert res.error_middle[0, h] <= res.error_2lv[0, h]


def test_dense_fallback_and_capped_widening():
    K, V, q = _arrays(3, 160, H=1, Hq=4, q_scale=1.0)
    cache, seqs = PagedKVCache.from_dense(K, V, 16)
    free = sparse_decode(q, cache, seqs, 1, 8, router="sketch", bits=4)
    tol = float(np.median(free.certified_error))
    fb = sparse_decode(q, cache, seqs, 1, 8, router="sketch", bits=4, policy=DenseFallback(tol))
    np.testing.assert_array_equal(fb.fell_back, free.certified_error > tol)
    dense = fb.dense_out()
    for h in np.flatnonzero(fb.fell_back[0]):
        np.testing.assert_array_equal(fb.out[0, h], dense[0, h])
    cap = sparse_decode(q, cache, seqs, 1, 8, router="sketch", bits=4, policy=Capped(tol / 4, 1, 64))
    assert np.all((cap.Kc_used[0] > 8) | ~(free.certified_error[0] > tol / 4))
    assert np.all(cap.Kc_used <= 64)
    assert np.all(cap.certified[0] | cap.fell_back[0])
    # widening never hurts: a larger candidate set is certified at least as tightly
    wide = sparse_decode(q, cache, seqs, 1, 64, router="sketch", bits=4)
    assert np.all(wide.certified_leakage <= free.certified_leakage + 1e-12)


@pytest.mark.parametrize("kwargs, argument", [
    (dict(router="bound", bits=4), "bits"),
    (dict(router="sketch", bits=3), "bits"),
    (dict(router="sketch", bits=4, solver="eg"), "solver"),
    (dict(router="sketch", share_selection_in_group=True), "share_selection_in_group"),
    (dict(router="sketch", hierarchical=True), "hierarchical"),
    (dict(router="sketchy"), "router"),
])
def test_bad_options_name_the_argument(kwargs, argument):
    K, V, q = _arrays(0, 40)
    cache, seqs = PagedKVCache.from_dense(K, V, 8)
    with pytest.raises(VashistaInputError) as e:
        sparse_decode(q, cache, seqs, 2, 8, **kwargs)
    assert e.value.argument == argument


@pytest.mark.parametrize("router, extra", [("bound", []), ("mean", []), ("sketch", ["--bits", "8"]),
                                           ("sketch", [])])
def test_cli_json_reports_both_leakages(router, extra, capsys):
    rc = cmd_decode.main(["--seed", "1", "--context", "256", "--kv-heads", "2", "--group", "2", "--P", "2",
                          "--Kc", "32", "--router", router, "--q-scale", "3", "--json"] + extra)
    assert rc == 0
    d = json.loads(capsys.readouterr().out)
    assert d["router"] == router and d["sound"]
    assert d["bits"] == ((int(extra[1]) if extra else 4) if router == "sketch" else None)
    assert d["certified_leakage"] >= d["true_leakage"] > 0
    for r in d["per_query"]:
        assert r["certified_leakage"] >= r["true_leakage"]


def test_cli_rejects_bits_without_sketch(capsys):
    assert cmd_decode.main(["--router", "bound", "--bits", "8", "--context", "64"]) == 2
    assert "bits" in capsys.readouterr().err


def test_dense_leakage_helper():
    s_q = np.array([1.0, 0.0])
    K = np.array([[1.0, 0.0], [0.0, 1.0], [2.0, 0.0]])
    leak, out = dense_leakage(s_q, K, np.eye(3), [2], 1.0)
    p = np.exp([1.0, 0.0, 2.0])
    assert abs(leak - (p[0] + p[1]) / p.sum()) < 1e-15
    assert_rel_close(out, p / p.sum(), "float64")


# ------------------------------------------------------------------------------------------ PyTorch path
torch = pytest.importorskip("torch")
from vashista_gpu import sketch as gpu_sketch  # noqa: E402
from vashista_ref.sketch import certified_step as ref_step  # noqa: E402

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def _torch_case(seed, M, Hkv, G, D=16, Dv=8):
    rng = np.random.default_rng(seed)
    K = rng.standard_normal((Hkv, M, D)) * rng.choice([1e-3, 1.0, 30.0], size=D)
    n = min(5, M - M // 3)
    K[:, M // 3: M // 3 + n] = K[:, :n].copy()            # repeated keys: exact sketch-score ties
    return rng.standard_normal((Hkv * G, D)) * 3, K, rng.standard_normal((Hkv, M, Dv))


@settings(max_examples=FEW)
@given(st.integers(0, 2**32 - 1), st.integers(1, 150), st.sampled_from([(1, 1), (2, 3), (3, 2)]),
       st.sampled_from([2, 4, 8]), st.sampled_from([1, 16]), st.sampled_from(["float16", "float32"]),
       st.sampled_from(DEVICES))
def test_torch_path_matches_reference(seed, M, heads, bits, group, meta, device):
    """float64 compute: bit-identical sketch, identical candidate sets (tie rule), certificates and
    outputs equal to float64 rounding; float32 compute: same candidates here, still sound."""
    Hkv, G = heads
    Q, K, V = _torch_case(seed, M, Hkv, G)
    t = lambda a: torch.as_tensor(a, device=device)  # noqa: E731
    sk = gpu_sketch.quantize_keys(t(K), bits=bits, group=group, meta_dtype=meta)
    Kc = max(1, M // 4)
    r64 = gpu_sketch.certified_decode(t(Q), t(K), t(V), sk, Kc, scale=0.5, compute_dtype=torch.float64)
    r32 = gpu_sketch.certified_decode(t(Q), t(K), t(V), sk, Kc, scale=0.5)
    for h in range(Hkv * G):
        kvh = h // G
        rk = quantize_keys(K[kvh], bits=bits, group=group, meta_dtype=meta)
        np.testing.assert_array_equal(sk.codes[kvh].cpu().numpy(), rk.codes)
        np.testing.assert_array_equal(sk.offset[kvh].cpu().numpy(), rk.offset)
        np.testing.assert_array_equal(sk.step[kvh].cpu().numpy(), rk.step)
        ref = ref_step(Q[h], K[kvh], V[kvh], rk, Kc, scale=0.5, with_dense=True)
        np.testing.assert_array_equal(r64.candidates[h].cpu().numpy(), ref.candidates)
        assert_rel_close(r64.out[h].cpu(), ref.out, "float64")
        for name in ("certified_leakage", "error", "error_middle", "error_estar", "error_ball", "error_token"):
            assert_rel_close(getattr(r64, name)[h].cpu().reshape(1), np.array([getattr(ref, name)]), "float64", name)
        np.testing.assert_array_equal(r32.candidates[h].cpu().numpy(), ref.candidates)
        assert float(r32.certified_leakage[h]) >= ref.true_leakage
        assert float(r32.error[h]) >= ref.true_error


@pytest.mark.parametrize("bits,heads", [(4, (2, 3)), (8, (1, 1))])
def test_torch_path_two_sided_matches_reference(bits, heads):
    """one_sided=False (SPEC 3b's per-group e_g for every token) in both tiers: same candidates,
    certificates equal to float64 rounding."""
    Hkv, G = heads
    Q, K, V = _torch_case(bits, 70, Hkv, G)
    sk = gpu_sketch.quantize_keys(torch.as_tensor(K), bits=bits, group=16)
    r64 = gpu_sketch.certified_decode(torch.as_tensor(Q), torch.as_tensor(K), torch.as_tensor(V), sk, 9, scale=0.5,
                                      compute_dtype=torch.float64, one_sided=False)
    for h in range(Hkv * G):
        rk = quantize_keys(K[h // G], bits=bits, group=16)
        ref = ref_step(Q[h], K[h // G], V[h // G], rk, 9, scale=0.5, with_dense=True, one_sided=False)
        np.testing.assert_array_equal(r64.candidates[h].numpy(), ref.candidates)
        assert_rel_close(r64.certified_leakage[h].reshape(1), np.array([ref.certified_leakage]), "float64")
        assert ref.certified_leakage >= ref.true_leakage


@pytest.mark.parametrize("call, argument", [
    (lambda Q, K, V, sk: gpu_sketch.certified_decode(Q[:5], K, V, sk, 4), "Q"),
    (lambda Q, K, V, sk: gpu_sketch.certified_decode(Q, K, V[:, :7], sk, 4), "V"),
    (lambda Q, K, V, sk: gpu_sketch.certified_decode(Q, K[:, :9], V[:, :9], sk, 4), "sketch"),
    (lambda Q, K, V, sk: gpu_sketch.certified_decode(Q, K, V, sk, 0), "Kc"),
    (lambda Q, K, V, sk: gpu_sketch.certified_decode(Q, K, V, sk, 4, compute_dtype=torch.float16), "compute_dtype"),
    (lambda Q, K, V, sk: gpu_sketch.quantize_keys(K, bits=5), "bits"),
    (lambda Q, K, V, sk: gpu_sketch.quantize_keys(K * 1e6), "K"),
    (lambda Q, K, V, sk: gpu_sketch.quantize_keys(K.to(torch.int64)), "K"),
])
def test_torch_bad_input_names_the_argument(call, argument):
    Q, K, V = (torch.as_tensor(a) for a in _torch_case(0, 20, 2, 3))
    sk = gpu_sketch.quantize_keys(K)
    with pytest.raises(VashistaInputError) as e:
        call(Q, K, V, sk)
    assert e.value.argument == argument


@pytest.mark.parametrize("bits, D, M, heads", [(4, 16, 70, (2, 2)), (8, 12, 33, (1, 3)), (2, 5, 20, (3, 1))])
def test_triton_scan_matches_torch_path(bits, D, M, heads):
    """The Triton sketch scan (interpreted on CPU) gives the torch path's float32 sketch scores up to
    summation order, hence the same candidate sets (tie rule) and certificates to float32 rounding."""
    pytest.importorskip("triton")
    from vashista_gpu.kernels.sketch_scan import sketch_scores
    rng = np.random.default_rng(bits)
    Hkv, G = heads
    K, V = rng.standard_normal((Hkv, M, D)), rng.standard_normal((Hkv, M, 4))
    Q = rng.standard_normal((Hkv * G, D)) * 3
    K[:, 10:13] = K[:, :3]                                     # exact ties
    t = lambda a: torch.as_tensor(a, dtype=torch.float32, device=DEVICES[-1])  # noqa: E731
    sk = gpu_sketch.quantize_keys(t(K), bits=bits, group=16)
    s_tr = sketch_scores(t(Q), sk.codes, sk.offset, sk.step, bits=sk.bits, group=sk.group).double().cpu()
    s_ref = torch.einsum("hmd,hd->hm", sk.dequantize(torch.float64).cpu()[torch.arange(Hkv * G) // G], t(Q).double().cpu())
    assert float((s_tr - s_ref).abs().max()) <= 1e-5 * float(s_ref.abs().max())
    a = gpu_sketch.certified_decode(t(Q), t(K), t(V), sk, 8)
    b = gpu_sketch.certified_decode(t(Q), t(K), t(V), sk, 8, backend="triton")
    assert torch.equal(a.candidates, b.candidates)
    assert_rel_close(b.certified_leakage.cpu(), a.certified_leakage.cpu(), "float32", "leakage")
    assert_rel_close(b.error.cpu(), a.error.cpu(), "float32", "error")


# ------------------------------------------------------------------------------------------ GPU-tier cache
from vashista_gpu.paged_cache import TorchPagedKVCache  # noqa: E402


def _f32(a):
    """The cache stores float32: the reference gets the same (rounded) numbers."""
    return np.asarray(a, dtype=np.float32).astype(np.float64)


@settings(max_examples=FEW)
@given(st.integers(0, 2**32 - 1), st.integers(1, 80), st.sampled_from([1, 6, None]), st.sampled_from([4, 8]),
       st.booleans())
def test_torch_cache_sketch_is_kept_current(seed, T, chunk, bits, attach_first):
    K, V, _ = _arrays(seed, T)
    K, V = _f32(K), _f32(V)
    extra = 3
    tc, (sid,) = TorchPagedKVCache.from_dense(torch.tensor(K[:T - min(extra, T - 1)]),
                                              torch.tensor(V[:T - min(extra, T - 1)]), 8,
                                              shuffle_seed=seed % 5, chunk=chunk, spare_pages=2)
    if attach_first:
        gpu_sketch.attach_sketch(tc, bits)
    for t in range(T - min(extra, T - 1), T):                # decode steps after the prefill
        tc.append(sid, torch.tensor(K[t:t + 1]), torch.tensor(V[t:t + 1]))
    store = gpu_sketch.attach_sketch(tc, bits)
    got = store.sequence_sketch(tc, sid)
    ref = gpu_sketch.quantize_keys(torch.tensor(K).permute(1, 0, 2), bits=bits, group=8)
    assert torch.equal(got.codes, ref.codes) and torch.equal(got.offset, ref.offset) and torch.equal(got.step, ref.step)


@pytest.mark.parametrize("policy", [None, DenseFallback(0.05), Capped(0.01, 1, 128)])
@pytest.mark.parametrize("bits", [4, 8])
def test_torch_sketch_decode_matches_reference_decode(policy, bits):
    rng = np.random.default_rng(bits)
    K, V = _f32(rng.standard_normal((150, 2, 16))), _f32(rng.standard_normal((150, 2, 8)))
    q = rng.standard_normal((2, 4, 16)) * 3
    tc, tids = TorchPagedKVCache.from_dense([torch.tensor(K), torch.tensor(K[:120])],
                                            [torch.tensor(V), torch.tensor(V[:120])], 16, shuffle_seed=1)
    rc, rids = PagedKVCache.from_dense([K, K[:120]], [V, V[:120]], 16)
    a = gpu_sketch.sketch_decode(torch.tensor(q), tc, tids, 16, bits=bits, compute_dtype=torch.float64, policy=policy)
    b = sparse_decode(q, rc, rids, 1, 16, router="sketch", bits=bits, policy=policy)
    np.testing.assert_array_equal(a.fell_back.numpy(), b.fell_back)
    np.testing.assert_array_equal(a.Kc_used.numpy(), b.Kc_used)
    assert_rel_close(a.out, b.out, "float64")
    assert_rel_close(a.certified_error, b.certified_error, "float64", "certified_error")
    assert_rel_close(a.certified_leakage, b.certified_leakage, "float64", "certified_leakage")
    for i in range(2):
        for h in range(4):
            got = a.candidates[i, h]                # −1 padded to the widest attempt's Kc
            np.testing.assert_array_equal(got[got >= 0].numpy(), np.sort(b.candidates[i][h]))
    c = gpu_sketch.sketch_decode(torch.tensor(q, dtype=torch.float32), tc, tids, 16, bits=bits, policy=policy)
    dense = sparse_decode(q, rc, rids, 1, 16, router="sketch", bits=bits).dense_out()
    assert np.all(np.linalg.norm(c.out.double().numpy() - dense, axis=-1) <= c.certified_error.numpy() + 1e-6)


def test_torch_sketch_decode_bad_input():
    K = torch.randn(40, 1, 8)
    tc, tids = TorchPagedKVCache.from_dense(K, K, 8)
    with pytest.raises(VashistaInputError) as e:
        gpu_sketch.sketch_decode(torch.randn(1, 2, 8), tc, tids, 41)
    assert e.value.argument == "Kc"
    with pytest.raises(VashistaInputError) as e:
        gpu_sketch.sketch_decode(torch.randn(1, 2, 8), tc, tids, 4, policy="dense")
    assert e.value.argument == "policy"
    with pytest.raises(VashistaInputError) as e:
        gpu_sketch.sketch_decode(torch.randn(1, 2, 8), tc, tids, 4, bits=5)
    assert e.value.argument == "bits"


@settings(max_examples=FEW)
@given(st.integers(0, 2**32 - 1), st.integers(1, 150), st.sampled_from([(1, 1), (2, 3), (3, 2)]),
       st.sampled_from([2, 4, 8]), st.sampled_from([1, 5, 16]))
def test_torch_sketch_bounds_equal_the_reference_per_token(seed, M, heads, bits, group):
    """The torch path forms the one-sided bounds per group (products a_g·q once per group, one masked
    matmul per code class) and the scan's rounding term once per group: each token's e⁺/e⁻ equals the
    reference's per-token sums to float64 rounding (a partial last group included), and both sides
    bound the exact score."""
    from vashista_ref.sketch import sketch_bounds as ref_bounds
    Hkv, G = heads
    Q, K, _ = _torch_case(seed, M, Hkv, G)
    sk = gpu_sketch.quantize_keys(torch.as_tensor(K), bits=bits, group=group)
    shat, e_up, e_dn = gpu_sketch.sketch_bounds(torch.as_tensor(Q), sk, compute_dtype=torch.float64)
    for h in range(Hkv * G):
        rk = quantize_keys(K[h // G], bits=bits, group=group)
        r_shat, r_up, r_dn = ref_bounds(Q[h], rk)
        assert_rel_close(e_up[h].numpy(), r_up, "float64", "e_up")
        assert_rel_close(e_dn[h].numpy(), r_dn, "float64", "e_dn")
        s = K[h // G] @ Q[h]
        assert np.all(shat[h].numpy() - e_dn[h].numpy() <= s) and np.all(s <= shat[h].numpy() + e_up[h].numpy())


def test_torch_sketch_decode_refuses_a_stale_store_and_checks_a_sample():
    """The cache's own sketch: sketch_decode refuses a store that missed an append (its version lags
    the cache's), and compares a strided sample of the keys with the sketch every step (the fused
    path's check): keys changed behind the store's back at a sampled token are refused, naming the sketch."""
    g = torch.Generator().manual_seed(5)
    K = torch.randn(300, 1, 8, generator=g)
    tc, tids = TorchPagedKVCache.from_dense(K, torch.randn(300, 1, 4, generator=g), 16)
    q = torch.randn(1, 2, 8, generator=g)
    gpu_sketch.sketch_decode(q, tc, tids, 32)                           # attaches the 4-bit store
    store = gpu_sketch.attach_sketch(tc, 4)
    store.version -= 1                                                  # as if an append had bypassed it
    with pytest.raises(VashistaInputError, match="stale") as e:
        gpu_sketch.sketch_decode(q, tc, tids, 32)
    assert e.value.argument == "cache"
    store.version += 1
    page = tc.page_table(int(tids[0]))[0]
    tc.k_pages[page, 0, 0] += 5.0                                       # token 0: always in the sample
    with pytest.raises(VashistaInputError, match="stale or foreign") as e:
        gpu_sketch.sketch_decode(q, tc, tids, 32)
    assert e.value.argument == "sketch"


@pytest.mark.parametrize("check_keys", [0, -3, 21, 2.5])
def test_certified_decode_check_keys_is_validated(check_keys):
    Q, K, V = (torch.as_tensor(a) for a in _torch_case(0, 20, 2, 3))
    with pytest.raises(VashistaInputError) as e:
        gpu_sketch.certified_decode(Q, K, V, gpu_sketch.quantize_keys(K), 4, check_keys=check_keys)
    assert e.value.argument == "check_keys"


def test_certified_decode_sampled_check_still_refuses_a_foreign_sketch():
    Q, K, V = (torch.as_tensor(a) for a in _torch_case(1, 90, 1, 2))
    foreign = gpu_sketch.quantize_keys(K + 1.0)
    with pytest.raises(VashistaInputError, match="stale or foreign"):
        gpu_sketch.certified_decode(Q, K, V, foreign, 8, check_keys=16)
    a = gpu_sketch.certified_decode(Q, K, V, gpu_sketch.quantize_keys(K), 8, check_keys=16)
    b = gpu_sketch.certified_decode(Q, K, V, gpu_sketch.quantize_keys(K), 8)
    assert torch.equal(a.error, b.error) and torch.equal(a.out, b.out)      # the check changes nothing else


@pytest.mark.parametrize("precision", ["highest", "high", "medium"])
def test_torch_scan_bound_follows_matmul_precision(precision):
    """A process that allows TF32/bf16 matmuls must not make the float32 scan's bound unsound."""
    rng = np.random.default_rng(7)
    K, V = rng.standard_normal((1, 300, 64)) * 5, rng.standard_normal((1, 300, 8))
    Q = rng.standard_normal((2, 64)) * 4
    t = lambda a: torch.as_tensor(a, dtype=torch.float32)  # noqa: E731
    old = torch.get_float32_matmul_precision()
    try:
        torch.set_float32_matmul_precision(precision)
        sk = gpu_sketch.quantize_keys(t(K), bits=8)
        r = gpu_sketch.certified_decode(t(Q), t(K), t(V), sk, 16)
    finally:
        torch.set_float32_matmul_precision(old)
    for h in range(2):
        ref = ref_step(_f32(Q[h]), _f32(K[0]), _f32(V[0]), quantize_keys(_f32(K[0]), bits=8), 16, with_dense=True)
        assert float(r.certified_leakage[h]) >= ref.true_leakage and float(r.error[h]) >= ref.true_error
        if precision == "highest":       # the float32 scan's wider γ term costs ~0.6 % here
            assert float(r.certified_leakage[h]) <= ref.certified_leakage * 1.02


def test_torch_regression_uncertain_group_far_above_candidates():
    """The reference's regression (tests/test_sketch.py) on the torch path: bounds in the log domain."""
    K = np.array([[0.0], [0.0], [-1.0], [-1.0], [-3.0], [-1e4], [-1e4], [-1e4]])
    V = np.zeros((8, 2))
    V[1], V[4] = [100.0, 0.0], [0.0, 1.0]
    t = lambda a: torch.as_tensor(a, dtype=torch.float64)  # noqa: E731
    sk = gpu_sketch.quantize_keys(t(K[None]), bits=2, group=4, meta_dtype="float32")
    r = gpu_sketch.certified_decode(t([[1.0]]), t(K[None]), t(V[None]), sk, 1, scale=1.0, compute_dtype=torch.float64)
    ref = ref_step(np.array([1.0]), K, V, quantize_keys(K, bits=2, group=4, meta_dtype="float32"), 1, scale=1.0,
                   with_dense=True)
    assert float(r.error[0]) >= ref.true_error > 35
    assert_rel_close(r.error, np.array([ref.error]), "float64")
