"""Device policies for the graph-replayed certified step (``vashista_gpu.engine.policy``): the
device compaction of flagged (row, head) pairs, DenseFallback patching exactly the flagged pairs
with exact attention and leaving the rest bit-identical, non-finite certificates flagged, overflow
marked and counted and resolved by the eager second path, and Capped widening before falling back.
CPU: Triton kernels under the interpreter; the certified step is the real planned step."""
from __future__ import annotations

import math

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("triton")

from vashista_gpu.dense import dense_decode  # noqa: E402
from vashista_gpu.engine.policy import (FELL_BACK, FLAGGED, OVERFLOW, DeviceCapped,  # noqa: E402
                                        DeviceDenseFallback, resolve_overflow)
from vashista_gpu.paged_cache import TorchPagedKVCache  # noqa: E402
from vashista_gpu.sketch_plan import plan_sketch_step, run_sketch_plan  # noqa: E402
from vashista_core.errors import VashistaInputError  # noqa: E402

DEV = "cuda" if torch.cuda.is_available() else "cpu"


def test_flag_and_compaction_order_padding_overflow_and_counts():
    """One launch (kernels/flag_pairs.py): flagged = not (err <= tol) compared in err's dtype (NaN and
    +inf flagged, −inf certified), pairs in row-major order then −1, the count, the three masks, the
    counters accumulated, any_overflow; capacities below, at and above B·Hq (past one 1024 block)."""
    err = torch.tensor([[0.1, math.nan, 3.0], [0.0, math.inf, 0.2], [-math.inf, 0.7, 0.5]], device=DEV)
    flag = ~(err <= 0.5)
    pol = DeviceDenseFallback(0.5, device=DEV)
    pairs, n, f, listed, over, anyo = pol.flag(err, 5)
    assert pairs.dtype == torch.int32 and pairs.is_contiguous() and n.dtype == torch.int32
    assert pairs.tolist() == [[0, 1], [0, 2], [1, 1], [2, 1], [-1, -1]]
    assert int(n) == 4 and torch.equal(f, flag) and torch.equal(listed, flag) and not bool(over.any())
    assert not bool(anyo) and pol.counts.tolist() == [4, 4, 0]
    pairs, n, f, listed, over, anyo = pol.flag(err, 2)
    assert pairs.tolist() == [[0, 1], [0, 2]] and int(n) == 4 and bool(anyo)
    assert listed.nonzero().tolist() == [[0, 1], [0, 2]] and over.nonzero().tolist() == [[1, 1], [2, 1]]
    assert pol.counts.tolist() == [8, 6, 2]                              # accumulated in place
    pairs, n, *_ = pol.flag(err, 1500)
    assert pairs[:4].tolist() == [[0, 1], [0, 2], [1, 1], [2, 1]] and bool((pairs[4:] == -1).all())
    # tol compared in err's dtype, as torch's err <= tol: 0.1 in float32 is above the float64 0.1
    e32 = torch.tensor([[0.1]], dtype=torch.float32, device=DEV)
    assert int(DeviceDenseFallback(0.1, device=DEV).flag(e32, 1)[1]) == int((~(e32 <= 0.1)).sum()) == 0
    e64 = e32.double()
    assert int(DeviceDenseFallback(0.1, device=DEV).flag(e64, 1)[1]) == int((~(e64 <= 0.1)).sum()) == 1
    big = torch.rand(40, 37, generator=torch.Generator().manual_seed(0)).to(DEV)
    pairs, n, f, *_ = DeviceDenseFallback(0.3, device=DEV).flag(big, 40 * 37)
    assert pairs[:int(n)].tolist() == (~(big <= 0.3)).nonzero().tolist() and torch.equal(f, ~(big <= 0.3))


def _setup(lens=(150, 97), Hkv=2, G=2, D=16, Kc=16, bits=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    ks = [torch.randn(T, Hkv, D, generator=g) for T in lens]
    vs = [torch.randn(T, Hkv, D, generator=g) for T in lens]
    cache, ids = TorchPagedKVCache.from_dense(ks, vs, 16, shuffle_seed=seed, dtype=torch.float32, device=DEV,
                                             backend="torch")
    q = (torch.randn(len(lens), Hkv * G, D, generator=g) * 2).to(DEV)
    T = cache.max_pages_per_seq * 16
    plan = plan_sketch_step(cache, ids, Hkv * G, Kc, bits=bits, max_tokens=T)
    r = run_sketch_plan(plan, q)
    row_idx = torch.tensor(ids, dtype=torch.int32, device=DEV)
    exact = dense_decode(q, cache, ids, scale=plan.scale).double()
    return cache, ids, q, plan, r, row_idx, exact, T


def _check_patched(out, before, exact, mask):
    for b in range(out.shape[0]):
        for h in range(out.shape[1]):
            if mask[b, h]:
                torch.testing.assert_close(out[b, h].double(), exact[b, h], rtol=1e-5, atol=1e-5)
            else:
                assert torch.equal(out[b, h], before[b, h]), "an unflagged head must be left bit-identical"


def test_dense_fallback_patches_flagged_pairs_only():
    cache, ids, q, plan, r, row_idx, exact, T = _setup()
    err = r.certified_error.clone()
    err[0, 3] = math.nan                                         # a non-finite certificate
    tol = float(err[torch.isfinite(err)].median())
    out, before = r.out.clone(), r.out.clone()
    pol = DeviceDenseFallback(tol, device=DEV)
    res = pol(out, err, q, cache, row_idx, max_tokens=T, scale=plan.scale)
    flag = ~(err <= tol)
    assert bool(flag[0, 3]) and 0 < int(flag.sum()) < flag.numel()
    assert torch.equal(res.flagged, flag) and torch.equal(res.fell_back, flag)
    assert not bool(res.any_overflow) and not bool(res.overflowed.any())
    _check_patched(out, before, exact, flag)
    assert pol.counts.tolist() == [int(flag.sum()), int(flag.sum()), 0]
    pol(out, err, q, cache, row_idx, max_tokens=T, scale=plan.scale)         # counters accumulate
    assert pol.counts[FLAGGED] == 2 * int(flag.sum())


def test_overflow_is_flagged_counted_and_resolved_by_the_eager_path():
    cache, ids, q, plan, r, row_idx, exact, T = _setup(seed=1)
    err = torch.zeros_like(r.certified_error)
    err[0, 1] = err[1, 0] = err[1, 2] = 1.0                     # three flagged pairs
    out, before = r.out.clone(), r.out.clone()
    pol = DeviceDenseFallback(0.5, capacity=2, num_splits=3, device=DEV)
    res = pol(out, err, q, cache, row_idx, max_tokens=T, scale=plan.scale)
    assert bool(res.any_overflow)
    assert res.overflowed.nonzero().tolist() == [[1, 2]]
    assert pol.counts[FLAGGED] == 3 and pol.counts[FELL_BACK] == 2 and pol.counts[OVERFLOW] == 1
    _check_patched(out, before, exact, res.fell_back)
    assert torch.equal(out[1, 2], before[1, 2])                  # overflowed: still the certified output
    assert resolve_overflow(res, out, q, cache, row_idx, max_tokens=T, scale=plan.scale) == 1
    _check_patched(out, before, exact, res.flagged)


def test_capped_widens_then_falls_back():
    cache, ids, q, plan, r, row_idx, exact, T = _setup(seed=2)
    wide = plan_sketch_step(cache, ids, q.shape[1], 64, bits=4, max_tokens=T)
    w = run_sketch_plan(wide, q)
    tol = float(r.certified_error.median())
    flag0 = ~(r.certified_error <= tol)
    still = flag0 & ~(w.certified_error <= tol)
    assert bool(flag0.any())

    def widen(qq):
        x = run_sketch_plan(wide, qq)
        return x.out, x.certified_error

    out = r.out.clone()
    pol = DeviceCapped(tol, widen, device=DEV)
    res = pol(out, r.certified_error, q, cache, row_idx, max_tokens=T, scale=plan.scale)
    assert torch.equal(res.flagged, still) and int(pol.widened) == int(flag0.sum())
    expect = torch.where(flag0[..., None], w.out, r.out)
    _check_patched(out, expect, exact, still)
    assert pol.counts[FELL_BACK] == int(still.sum())


def test_bad_input_named():
    with pytest.raises(VashistaInputError, match="tol"):
        DeviceDenseFallback(-1.0)
    with pytest.raises(VashistaInputError, match="capacity"):
        DeviceDenseFallback(0.1, capacity=0)
    with pytest.raises(VashistaInputError, match="widen"):
        DeviceCapped(0.1, widen=3)
    pol = DeviceDenseFallback(0.1)
    with pytest.raises(VashistaInputError, match="certified_error"):
        pol(torch.zeros(1, 2, 16), torch.zeros(1, 3), torch.zeros(1, 2, 16), None, None, max_tokens=16, scale=1.0)


def test_pairs_grid_is_persistent_and_counted(monkeypatch):
    """The pairs launch is a fixed grid of at most 4 programs per SM (not capacity × splits) looping
    over the listed pairs only, their count read on the device: with the count, without it, and with
    extra capacity, the patched heads are the same bits; a count of 0 leaves ``out`` untouched."""
    import vashista_gpu.kernels.paged_dense as pd

    cache, ids, q, plan, r, row_idx, exact, T = _setup(seed=3)
    flag = torch.zeros(r.out.shape[:2], dtype=torch.bool, device=DEV)
    flag[0, 2] = flag[1, 0] = flag[1, 3] = True
    grids = []

    class Recorder:
        def __getitem__(self, grid):
            grids.append(grid)
            return real[grid]

    real = pd._pairs_split_kernel
    monkeypatch.setattr(pd, "_pairs_split_kernel", Recorder())
    outs = []
    err = torch.where(flag, 1.0, 0.0)
    for cap, counted in ((8, True), (8, False), (3, True), (40, True)):
        pairs, n, *_ = DeviceDenseFallback(0.5, device=DEV).flag(err, cap)
        out = r.out.clone()
        pd.cache_dense_decode(q, cache, row_idx, max_tokens=T, scale=plan.scale, out=out, pairs=pairs,
                              pair_count=n if counted else None, num_splits=5)
        _check_patched(out, r.out, exact, flag)
        outs.append(out)
        ns = -(-T // (-(-(-(-T // 5)) // 64) * 64))
        assert grids[-1] == (min(cap * ns, pd._card_programs(q.device)),)
    assert all(torch.equal(o, outs[0]) for o in outs)
    pairs, n, *_ = DeviceDenseFallback(0.5, device=DEV).flag(torch.zeros_like(err), 8)
    out = r.out.clone()
    pd.cache_dense_decode(q, cache, row_idx, max_tokens=T, scale=plan.scale, out=out, pairs=pairs, pair_count=n)
    assert torch.equal(out, r.out)
    for bad in (torch.tensor([1.0]), torch.tensor([1, 2]), 3):
        with pytest.raises(VashistaInputError) as e:
            pd.cache_dense_decode(q, cache, row_idx, max_tokens=T, out=out, pairs=pairs, pair_count=bad)
        assert e.value.argument == "pair_count"
    with pytest.raises(VashistaInputError) as e:
        pd.cache_dense_decode(q, cache, row_idx, max_tokens=T, pair_count=n)
    assert e.value.argument == "pair_count"
