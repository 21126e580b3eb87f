"""Certified mode through the GPU tier's public API: ``vashista_gpu.decode.sparse_decode(...,
router="sketch", bits=b)`` against the reference ``vashista_ref.sparse_decode`` (same router), both
backends (the Triton scan under the interpreter on CPU).

Exact grids make the float32 scan exact, so candidate sets must be *identical* (ties included: keys
are small integers, so equal sketch scores are common and the lower index must win in both tiers).
Every quantization group holds both ends of the code range in every channel, so offset = 0 and
step = 1 exactly in float16 and the codes are the keys themselves.
"""
from __future__ import annotations

import math

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from helpers import assert_rel_close  # noqa: E402
from vashista_gpu.decode import sparse_decode as gpu_decode  # noqa: E402
from vashista_gpu.dense import dense_decode  # noqa: E402
from vashista_gpu.paged_cache import TorchPagedKVCache  # noqa: E402
from vashista_core.errors import VashistaInputError  # noqa: E402
from vashista_ref.paged_cache import PagedKVCache  # noqa: E402
from vashista_core.policies import Capped, DenseFallback  # noqa: E402
from vashista_ref.sparse_decode import sparse_decode as ref_decode  # noqa: E402

S = 16
# the triton backend runs on the GPU when there is one, else under the interpreter on CPU
DEV = {"torch": "cpu", "triton": "cuda" if torch.cuda.is_available() else "cpu"}


def grid_case(seed, lens, Hkv, G, bits, D=8, Dv=8):
    """Integer keys in [0, 2^b − 1] with 0 and 2^b − 1 in every (page, channel); integer queries."""
    rng = np.random.default_rng(seed)
    L = (1 << bits) - 1
    Ks, Vs = [], []
    for T in lens:
        K = rng.integers(0, L + 1, size=(T, Hkv, D)).astype(np.float64)
        for p in range(-(-T // S)):
            rows = list(range(p * S, min(T, (p + 1) * S)))
            if len(rows) >= 2:
                K[rows[0]] = 0.0
                K[rows[-1]] = L
        Ks.append(K)
        Vs.append(rng.standard_normal((T, Hkv, Dv)).astype(np.float32).astype(np.float64))
    q = rng.integers(-3, 4, size=(len(lens), Hkv * G, D)).astype(np.float64)
    return q, Ks, Vs


def caches(Ks, Vs, backend):
    tc, tids = TorchPagedKVCache.from_dense([torch.tensor(k, dtype=torch.float32) for k in Ks],
                                            [torch.tensor(v, dtype=torch.float32) for v in Vs], S, shuffle_seed=3,
                                            device=DEV[backend])
    rc, rids = PagedKVCache.from_dense(Ks, Vs, S)
    return tc, tids, rc, rids


@pytest.mark.parametrize("backend", ["torch", "triton"])
@pytest.mark.parametrize("bits,G,policy", [(4, 1, None), (8, 2, None), (4, 3, DenseFallback(0.05)),
                                           (8, 1, Capped(0.02, 1, 64))])
def test_router_sketch_matches_reference(backend, bits, G, policy):
    if backend == "triton":
        pytest.importorskip("triton")
    q, Ks, Vs = grid_case(bits + G, [70, 53], Hkv=2, G=G, bits=bits)
    tc, tids, rc, rids = caches(Ks, Vs, backend)
    scale = 1.0 / 16          # scores up to ~100 units: keeps leakage away from 0 and 1
    Kc = 16
    qt = torch.tensor(q, dtype=torch.float32, device=DEV[backend])
    a = gpu_decode(qt, tc, tids, 1, Kc, router="sketch", bits=bits, scale=scale, policy=policy, backend=backend)
    dense = dense_decode(qt, tc, tids, scale=scale).double().cpu()
    a = type(a)(**{k: (v.cpu() if isinstance(v, torch.Tensor) else v) for k, v in vars(a).items()})
    b = ref_decode(q, rc, rids, 1, Kc, router="sketch", bits=bits, scale=scale, policy=policy)
    B, Hq = q.shape[:2]
    np.testing.assert_array_equal(a.Kc_used.numpy(), b.Kc_used)
    np.testing.assert_array_equal(a.fell_back.numpy(), b.fell_back)
    for i in range(B):
        for h in range(Hq):
            got = a.candidates[i, h]
            np.testing.assert_array_equal(got[got >= 0].numpy(), np.sort(b.candidates[i][h]))
    # the float32 tier's per-token error terms add the float32 rounding allowance
    # 4·γ_{D+2}(2⁻²⁴)·Σ_d |q_d| R_d (R_d = L here) to the reference's float64 ones; every bound moves
    # by at most that, so the certificate is never below the reference and exceeds it by at most the
    # factor exp(2·scale·allowance) (one allowance in Z_out, one in the candidates' lower bounds)
    D = q.shape[-1]
    u = 2.0 ** -24
    allow = 4 * (D + 2) * u / (1 - (D + 2) * u) * (np.abs(q).sum(-1) * ((1 << bits) - 1))
    factor = np.exp(2 * scale * allow) * (1 + 1e-9)
    if a.path == "fused":
        # the fused kernels (``sketch_plan``; the Triton backend on a supported cache) have their own
        # float32 certificate: within 0.1 % of the float64 one (the tolerance of
        # test_gpu_sketch_fused.py), and its error bound is SPEC 3's middle form, never below the
        # reference's smallest form
        factor = 1 + 1e-3
        assert np.all(a.certified_error.numpy() >= b.certified_error * (1 - 1e-9))
        checks = ((a.certified_leakage.numpy(), b.certified_leakage),)
    else:
        checks = ((a.certified_leakage.numpy(), b.certified_leakage), (a.certified_error.numpy(), b.certified_error))
    # the error bound also carries the candidates' score rounding R (docs/ROUNDING.md §2.3): float32
    # rescoring errs by up to the same allowance, so R ≤ (e^{2·scale·allowance} − 1)·max‖v‖, and R
    # enters the bound once directly and once through the excluded part's weights (× L̂ ≤ 1): the
    # bound may exceed the reference's by 2R on top of the factor (additive, not relative)
    vmax = max(float(np.linalg.norm(v, axis=-1).max()) for v in Vs)
    extras = (0.0, 2 * np.expm1(2 * scale * allow) * vmax * (1 + 1e-9))
    for (got, ref), extra in zip(checks, extras):
        assert np.all(got >= ref * (1 - 1e-9)), (got, ref)
        assert np.all(got <= ref * factor + extra + 1e-6), (got / ref, factor)
    assert_rel_close(a.out, b.out, "float32")
    # soundness against the dense output of the same cache
    err = torch.linalg.vector_norm(a.out.double() - dense, dim=-1)
    assert bool((err <= a.certified_error + 1e-5).all())
    np.testing.assert_allclose(a.weights.sum(-1).numpy(), 1.0, rtol=1e-6)
    assert a.pages.shape == (B, Hq, 5) and int(a.pages[1, 0, -1]) == -1


@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_router_sketch_sound_off_grid(backend):
    """Real-valued bf16 keys (no exact grid): certified leakage ≥ the dense mass outside the
    candidates and certified error ≥ the true error, for every head."""
    if backend == "triton":
        pytest.importorskip("triton")
    g = torch.Generator().manual_seed(5)
    T, Hkv, G, D = 90, 2, 2, 16
    tc, tids = TorchPagedKVCache.from_dense([torch.randn(T, Hkv, D, generator=g).bfloat16()],
                                            [torch.randn(T, Hkv, D, generator=g).bfloat16()], S,
                                            dtype=torch.bfloat16, device=DEV[backend])
    q = 4 * torch.randn(1, Hkv * G, D, generator=g).to(DEV[backend])
    r = gpu_decode(q, tc, tids, 1, 12, router="sketch", bits=4, backend=backend)
    r = type(r)(**{k: (v.cpu() if isinstance(v, torch.Tensor) else v) for k, v in vars(r).items()})
    dense = dense_decode(q, tc, tids).double().cpu()
    K, V = (x.double().cpu() for x in tc.gather(tids[0]))
    q = q.cpu()
    s = torch.einsum("hd,thd->ht", q[0].double(), K[:, torch.arange(Hkv * G) // G]) / math.sqrt(D)
    p = torch.softmax(s, -1)
    for h in range(Hkv * G):
        c = r.candidates[0, h]
        true_leak = 1 - float(p[h, c].sum())
        assert float(r.certified_leakage[0, h]) >= true_leak
    assert bool((torch.linalg.vector_norm(r.out.double() - dense, dim=-1) <= r.certified_error).all())


def _small_cache():
    g = torch.Generator().manual_seed(0)
    tc, tids = TorchPagedKVCache.from_dense([torch.randn(40, 2, 8, generator=g)], [torch.randn(40, 2, 8, generator=g)], S)
    return tc, tids


@pytest.mark.parametrize("kwargs,argument", [
    (dict(q=torch.full((1, 2, 8), math.nan)), "q"),
    (dict(q=torch.randn(1, 3, 8)), "Q"),
    (dict(bits=5), "bits"),
    (dict(bits=True), "bits"),
    (dict(router="bound", bits=4), "bits"),
    (dict(solver="eg"), "solver"),
    (dict(share_selection_in_group=True), "share_selection_in_group"),
    (dict(Kc=41), "Kc"),
    (dict(P=0), "P"),
    (dict(policy="dense"), "policy"),
])
def test_bad_input_names_the_argument(kwargs, argument):
    tc, tids = _small_cache()
    args = dict(q=torch.randn(1, 2, 8), P=1, Kc=8, router="sketch", bits=4)
    args.update(kwargs)
    q, P, Kc = args.pop("q"), args.pop("P"), args.pop("Kc")
    with pytest.raises(VashistaInputError) as e:
        gpu_decode(q, tc, tids, P, Kc, **args)
    assert e.value.argument == argument
