"""The certified step's selection and certificate kernels: the threshold path (``select_candidates``:
``kernels/select_topk.py`` by default, ``kernels/select_above.py`` compaction for method="topk") must
give exactly the tie rule's top-Kc, overflowed rows must be reselected (or flagged), and
``kernels/row_lse.py`` must bound Σ e^x from above, tightly."""
from __future__ import annotations

import math

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("triton")

from vashista_gpu.kernels.row_lse import row_lse_upper  # noqa: E402
from vashista_gpu.kernels.select_above import select_above  # noqa: E402
from vashista_gpu.selection import INVALID_KEY, key_index, tie_keys, top_indices  # noqa: E402
from vashista_gpu.selection import select_candidates  # noqa: E402
from vashista_gpu.sketch import certified_decode, fused_sketch_step, quantize_keys  # noqa: E402

DEV = "cuda" if torch.cuda.is_available() else "cpu"


def _full_topk(s, Kc):
    return top_indices(tie_keys(s, torch.arange(s.shape[1], device=s.device)), Kc)


def _block_max(s, BM):
    R, T = s.shape
    pad = torch.full((R, -(-T // BM) * BM - T), -math.inf, device=s.device)
    return torch.cat([s, pad], 1).view(R, -1, BM).amax(-1)


@pytest.mark.parametrize("seed,T,BM,Kc", [(0, 333, 16, 2), (1, 3000, 16, 20), (2, 1100, 16, 3), (3, 257, 16, 7)])
def test_threshold_selection_is_the_tie_rule_top_k(seed, T, BM, Kc):
    g = torch.Generator().manual_seed(seed)
    s = torch.randn(5, T, generator=g)
    s[1] = torch.round(s[1] * 2) / 2          # heavy ties: the lower index must win
    s[2, 100:] = s[2, :T - 100].clone()       # repeated values across blocks
    s = s.to(DEV)
    cand, overflow = select_candidates(s, _block_max(s, BM), Kc, cap=T, sync=False)
    assert not bool(overflow.any())
    assert torch.equal(cand, _full_topk(s, Kc))


def test_select_above_counts_and_keys():
    g = torch.Generator().manual_seed(3)
    s = torch.randn(3, 500, generator=g).to(DEV)
    tau = torch.tensor([0.5, 2.0, -10.0], device=DEV)
    cap = 600
    keys = torch.full((3, cap), INVALID_KEY, dtype=torch.int64, device=DEV)
    count = torch.zeros(3, dtype=torch.int32, device=DEV)
    select_above(s, tau, keys, count, block=128)
    for r in range(3):
        want = set((s[r] >= tau[r]).nonzero()[:, 0].tolist())
        assert int(count[r]) == len(want)
        got = keys[r][keys[r] != INVALID_KEY]
        assert set(key_index(got).tolist()) == want and len(got) == len(want)


def test_overflow_is_reselected_or_flagged():
    s = torch.zeros(2, 320, device=DEV)       # a flat row: every token ties with τ
    s[1, ::3] = 1.0
    bm = _block_max(s, 16)
    cand, overflow = select_candidates(s, bm, 2, cap=4, sync=True)
    assert not bool(overflow.any())
    assert torch.equal(cand, _full_topk(s, 2))
    assert cand[0].tolist() == [0, 1]                    # ties: the lowest indices
    _, flagged = select_candidates(s, bm, 2, cap=4, sync=False)
    assert flagged.tolist() == [True, True]


def test_row_lse_upper_bounds_and_is_tight():
    g = torch.Generator().manual_seed(4)
    x = torch.randn(4, 3000, generator=g) * 30
    x[1, ::3] = -math.inf
    x[2] = -math.inf
    x[3, 5] = 80.0
    M, Z = row_lse_upper(x.to(DEV), block=512)
    M, Z = M.cpu().double(), Z.cpu().double()
    true = torch.logsumexp(x.double(), -1)
    assert math.isinf(M[2]) and float(Z[2]) == 0.0
    fin = torch.isfinite(true)
    got = M[fin] + torch.log(Z[fin])
    assert bool((got >= true[fin]).all())
    u, n = 2.0 ** -24, 512 + 2                       # the documented outward factors, nothing more
    slack = 34 * u + n * u / (1 - n * u) + 8 * u / (1 - 8 * u) + 1e-6
    assert bool((got - true[fin] <= slack).all()), got - true[fin]


@pytest.mark.parametrize("bits", [4, 8])
def test_fused_step_threshold_path_matches_torch_path(bits, monkeypatch):
    """Enough blocks for the threshold path (T = 400 → 25 blocks of 16 ≥ 8·Kc); integer keys make
    the float32 scan exact, so the candidate sets must be identical to the torch path's."""
    g = torch.Generator().manual_seed(bits)
    B, Hkv, G, T, D, Kc, L = 1, 2, 2, 400, 8, 3, (1 << bits) - 1
    K = torch.randint(0, L + 1, (B, Hkv, T, D), generator=g).float()
    K[:, :, ::16] = 0.0
    K[:, :, 15::16] = L
    q = torch.randint(-3, 4, (B, Hkv * G, D), generator=g).float()
    V = torch.randn(B, Hkv, T, D, generator=g)
    sk = quantize_keys(K.reshape(B * Hkv, T, D).double(), bits=bits, group=16)
    vmax = torch.linalg.vector_norm(V.double(), dim=-1).amax(-1) * (1 + 1e-6)
    d = lambda x: x.to(DEV)  # noqa: E731
    import vashista_gpu.kernels.select_topk as st
    calls = []
    real = st.select_topk
    monkeypatch.setattr(st, "select_topk", lambda *a, **k: calls.append(k.get("bmax") is not None) or real(*a, **k))
    r = fused_sketch_step(d(q), d(K), d(V), d(sk.codes), d(sk.offset), d(sk.step), d(vmax), bits=bits,
                          group=16, Kc=Kc, scale=1 / 16, cap=2 * Kc)
    t = certified_decode(q[0], K[0], V[0], sk, Kc, scale=1 / 16)
    assert calls == [True], "the threshold path must be the one taken"
    assert torch.equal(r.candidates[0].cpu(), t.candidates)
    assert bool((r.certified_leakage[0].cpu().double() >= t.certified_leakage).all())
