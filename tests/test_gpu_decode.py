"""Differential tests of the GPU tier's sparse decode against the float64 reference (vashista_ref).

Both backends: "torch" (vectorised torch) and "triton" (kernels; on CPU under TRITON_INTERPRET=1,
set by conftest.py). Inputs on a coarse grid (tests/gpu_cases.py) make every score exact in every
dtype, so routed pages and candidates must equal the reference's sets under the tie rule, and the
certificate (computed in float32 from exact scores) must match the reference's ``error_middle`` form
to float32 accuracy. Outputs are compared with the tolerance table of tests/helpers.py for the dtype
they are produced in. Triton outputs are poisoned (NaN / a plausible sentinel key) before launch.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from gpu_cases import as_sets, build, check_against_reference, poison_outputs, ref_sets  # noqa: F401 (autouse)
from helpers import REL_TOL, assert_rel_close
from vashista_gpu.decode import sparse_decode
from vashista_gpu.dense import dense_decode
from vashista_ref.dense import dense_decode as ref_dense
from vashista_core.policies import Capped, DenseFallback
from vashista_ref.sparse_decode import sparse_decode as ref_decode

CUDA = torch.cuda.is_available()
DEV = "cuda" if CUDA else "cpu"
BACKENDS = ["torch", "triton"]
F32 = REL_TOL["float32"]          # the certificate is computed in float32 from exact scores



# (lengths, Hkv, G, D, S, dtype, kwargs) — odd lengths, partial last pages, batches of different
# lengths, shuffled physical pages (always), chunked appends, GQA G ∈ {1, 2, 4, 8}, every dtype.
CASES = {
    "fp32-G1": ((37,), 1, 1, 16, 8, torch.float32, dict(P=2, Kc=9)),
    "fp16-G2-batch-mean-chunked": ((45, 29, 17), 2, 2, 16, 4, torch.float16,
                                   dict(P=3, Kc=10, sink_pages=2, router="mean", chunk=5)),
    "bf16-G4-hier": ((61, 50), 1, 4, 8, 8, torch.bfloat16, dict(P=2, Kc=12, hierarchical=True, fanout=2)),
    "fp32-G8-hier-mean-shared": ((33, 70), 2, 8, 16, 4, torch.float32,
                                 dict(P=3, Kc=16, sink_pages=0, router="mean", hierarchical=True, fanout=4,
                                      share_selection_in_group=True)),
    "fp32-single-token": ((1, 13), 1, 2, 8, 4, torch.float32, dict(P=1, Kc=1)),
    "bf16-G2-Dv": ((27, 40), 2, 2, 16, 8, torch.bfloat16, dict(P=2, Kc=7, Dv=8)),
}


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", list(CASES))
def test_matches_reference(name, backend):
    lengths, Hkv, G, D, S, dtype, kw = CASES[name]
    kw = dict(kw)
    fanout, chunk, Dv = kw.pop("fanout", None), kw.pop("chunk", None), kw.pop("Dv", None)
    ref, rids, gpu, gids, q64, q = build(lengths, Hkv, G, D, S, Dv=Dv, fanout=fanout, dtype=dtype,
                                         backend=backend, seed=len(name), chunk=chunk, device=DEV)
    P, Kc = kw.pop("P"), kw.pop("Kc")
    r = ref_decode(q64, ref, rids, P, Kc, scale=0.5, **kw)
    g = sparse_decode(q, gpu, gids, P, Kc, scale=0.5, backend=backend, **kw)
    assert g.out.dtype == dtype
    check_against_reference(g, r, dtype)


@pytest.mark.parametrize("backend", BACKENDS)
def test_decode_steps_match_reference(backend):
    """Prefill, then decode steps appending one token per sequence (append_step), page boundaries crossed."""
    gen = torch.Generator().manual_seed(7)
    lengths, Hkv, G, D, S = (9, 14), 2, 2, 8, 4
    ref, rids, gpu, gids, q64, q = build(lengths, Hkv, G, D, S, dtype=torch.float32, backend=backend, seed=3,
                                         fanout=2, device=DEV, spare_pages=4)
    for step in range(6):
        k = (torch.randint(-4, 5, (2, Hkv, D), generator=gen).double() / 8)
        v = (torch.randint(-4, 5, (2, Hkv, D), generator=gen).double() / 8)
        ref.append_step(rids, k.numpy(), v.numpy())
        gpu.append_step(gids, k.float().to(DEV), v.float().to(DEV))
    for hier in (False, True):
        r = ref_decode(q64, ref, rids, 2, 6, scale=0.5, hierarchical=hier)
        g = sparse_decode(q, gpu, gids, 2, 6, scale=0.5, hierarchical=hier, backend=backend)
        check_against_reference(g, r, torch.float32)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("kind", ["gaussian", "outlier", "huge_scale"])
def test_certificate_sound_against_dense(kind, backend):
    """Off the grid (random float64 data rounded to float32): the certificate bounds the true error and
    the true leakage of dense attention, and the outlier the mean router misses is caught."""
    from vashista_ref.synthetic import make_case
    case = make_case(kind, seed=11, context=150, page_size=8, n_kv_heads=2, group=2, batch=2, head_dim=16)
    from vashista_gpu.paged_cache import TorchPagedKVCache
    gpu, gids = TorchPagedKVCache.from_dense([torch.tensor(k, dtype=torch.float32) for k in case.keys],
                                             [torch.tensor(v, dtype=torch.float32) for v in case.values], 8,
                                             shuffle_seed=2, backend=backend, device=DEV)
    q = torch.tensor(case.q, dtype=torch.float32, device=DEV)
    for router in ("bound", "mean"):
        g = sparse_decode(q, gpu, gids, 2, 12, router=router, backend=backend)
        dense = ref_dense(case.q, case.cache, case.seq_ids)
        err = np.linalg.norm(g.out.cpu().double().numpy() - dense, axis=-1)
        slack = F32 * np.linalg.norm(dense, axis=-1) + 1e-6
        assert np.all(err <= g.certified_error.cpu().double().numpy() + slack), (err, g.certified_error)
        # true dense mass outside the candidates
        cand = g.candidates.cpu().numpy()
        scale = 1 / np.sqrt(16)
        for b in range(2):
            K = case.keys[b]
            for h in range(4):
                s = K[:, h // 2] @ case.q[b, h] * scale
                a = np.exp(s - s.max())
                a /= a.sum()
                inside = [int(j) for j in cand[b, h] if j >= 0]
                true_leak = 1 - a[inside].sum()
                assert g.certified_leakage[b, h].item() >= true_leak - 1e-6


@pytest.mark.parametrize("backend", BACKENDS)
def test_policies_match_reference(backend):
    ref, rids, gpu, gids, q64, q = build((70, 41), 1, 2, 16, 8, dtype=torch.float32, backend=backend, seed=5,
                                         device=DEV)
    for policy in (DenseFallback(0.05), Capped(0.05, P_max=8, Kc_max=40)):
        r = ref_decode(q64, ref, rids, 1, 5, scale=0.5, policy=policy)
        g = sparse_decode(q, gpu, gids, 1, 5, scale=0.5, policy=policy, backend=backend)
        assert np.array_equal(g.fell_back.cpu().numpy(), r.fell_back)
        assert np.array_equal(g.P_used.cpu().numpy(), r.P_used)
        assert np.array_equal(g.Kc_used.cpu().numpy(), r.Kc_used)
        assert_rel_close(g.out, r.out, torch.float32, f"out under {policy}")
    g = sparse_decode(q, gpu, gids, 1, 5, scale=0.5, policy=DenseFallback(0.0), backend=backend)
    assert bool(g.fell_back[g.certified_error > 0].all())
    assert_rel_close(g.out[g.fell_back], torch.tensor(ref_dense(q64, ref, rids, scale=0.5))[g.fell_back.cpu()],
                     torch.float32, "dense fallback")


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_dense_decode_matches_reference(dtype):
    ref, rids, gpu, gids, q64, q = build((23, 40), 2, 4, 16, 8, dtype=dtype, seed=9, device=DEV)
    assert_rel_close(dense_decode(q, gpu, gids, scale=0.5), ref_dense(q64, ref, rids, scale=0.5), dtype, "dense")


@settings(deadline=None)
@given(st.data())
def test_torch_path_matches_reference_property(data):
    """Random shapes and options on the grid: the torch path equals the reference (sets, certificate)."""
    B = data.draw(st.integers(1, 3))
    S = data.draw(st.sampled_from([2, 4, 8]))
    lengths = tuple(data.draw(st.lists(st.integers(1, 70), min_size=B, max_size=B)))
    Hkv, G = data.draw(st.integers(1, 2)), data.draw(st.sampled_from([1, 2, 4]))
    hier = data.draw(st.booleans())
    kw = dict(P=data.draw(st.integers(1, 4)), sink_pages=data.draw(st.integers(0, 2)),
              router=data.draw(st.sampled_from(["bound", "mean"])), hierarchical=hier,
              share_selection_in_group=data.draw(st.booleans()))
    Kc = data.draw(st.integers(1, min(lengths)))
    ref, rids, gpu, gids, q64, q = build(lengths, Hkv, G, 8, S, fanout=2 if hier else None,
                                         seed=data.draw(st.integers(0, 10 ** 6)), device=DEV)
    r = ref_decode(q64, ref, rids, Kc=Kc, scale=0.5, **kw)
    g = sparse_decode(q, gpu, gids, Kc=Kc, scale=0.5, backend="torch", **kw)
    check_against_reference(g, r, torch.float32)


@settings(max_examples=4, deadline=None)
@given(st.data())
def test_triton_path_matches_reference_property(data):
    B = data.draw(st.integers(1, 2))
    lengths = tuple(data.draw(st.lists(st.integers(1, 60), min_size=B, max_size=B)))
    G = data.draw(st.sampled_from([1, 2, 8]))
    dtype = data.draw(st.sampled_from([torch.float32, torch.float16, torch.bfloat16]))
    Kc = data.draw(st.integers(1, min(lengths)))
    ref, rids, gpu, gids, q64, q = build(lengths, 1, G, 8, 4, dtype=dtype, backend="triton",
                                         seed=data.draw(st.integers(0, 10 ** 6)), device=DEV)
    r = ref_decode(q64, ref, rids, 2, Kc, scale=0.5)
    g = sparse_decode(q, gpu, gids, 2, Kc, scale=0.5, backend="triton")
    check_against_reference(g, r, dtype)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("solver", ["eg", "fw"])
def test_projection_solvers_match_reference(solver, backend):
    """eg/fw weights on the candidates (float64 iterations) reproduce the reference's output; the GPU
    tier reports no certificate for them (NaN) and refuses fallback policies."""
    ref, rids, gpu, gids, q64, q = build((37, 20), 1, 2, 8, 4, seed=3, backend=backend, device=DEV)
    r = ref_decode(q64, ref, rids, 2, 9, scale=0.5, solver=solver)
    g = sparse_decode(q, gpu, gids, 2, 9, scale=0.5, solver=solver, backend=backend)
    assert_rel_close(g.out, r.out, torch.float32, f"{solver} out")
    assert as_sets(g.candidates) == ref_sets(r.candidates)
    assert torch.isnan(g.gap).all() and torch.isnan(g.certified_error).all() and not g.certified.any()
    from vashista_core.errors import VashistaInputError
    with pytest.raises(VashistaInputError, match="policy"):
        sparse_decode(q, gpu, gids, 2, 9, scale=0.5, solver=solver, backend=backend, policy=DenseFallback(0.1))
