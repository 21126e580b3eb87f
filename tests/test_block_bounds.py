"""The scan's block bounds and the excluded mass taken from them (``kernels/block_lse.py``) against the
token bounds the scan writes with ``bounds="tokens"``, in float64:

* the block bounds are the token bounds' blocks: m_b the largest ub (the same bits), z_b their sum of
  exponentials (to float32 accuracy), e_b ≥ every token's slack, and with two-sided bounds the bound
  recomputed from ŝ and e_b is the scan's ub bit for bit (the interpreter);
* Z·e^M ≥ the float64 Σ_{j∉C} e^{ub_j} over the token bounds — the quantity the per-token tail bounded
  — and, two-sided, within the combination's factor (~2·10⁻⁵) of it; one-sided, above it by at most
  what the marked blocks' tokens lose (their one-sided savings): never above the two-sided scan's;
* the certified step (``run_sketch_plan``) stays sound against exact dense attention;
* NaN and +∞ bounds leave the row uncertified, padding and candidates contribute nothing.

Paged caches with odd lengths and partial pages, GQA grids with one KV head; TRITON_INTERPRET=1 on CPU."""
from __future__ import annotations

import math

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("triton")

from vashista_gpu.kernels.block_lse import BB, excluded_factor, excluded_upper  # noqa: E402
from vashista_gpu.kernels.row_lse import lse_factor  # noqa: E402
from vashista_gpu.kernels.sketch_scan import paged_sketch_scan_bound  # noqa: E402
from vashista_gpu.selection import select_candidates  # noqa: E402

from test_paged_scan import DEV, _cache  # noqa: E402

CASES = [
    # lens, Hkv, G, D, bits, one_sided, Kc
    ([150, 97, 33], 1, 4, 64, 4, True, 8),
    ([200, 61], 2, 4, 64, 8, False, 16),
    ([129, 40], 2, 3, 16, 4, False, 5),
    ([75], 3, 1, 32, 8, True, 32),
]


def _scan(cache, ids, lens, Hq, D, bits, one_sided, spare, seed):
    T = max(lens) + spare
    g = torch.Generator().manual_seed(seed)
    q = (torch.randn(len(lens) * Hq, D, generator=g) * 1.5).to(DEV)
    seq_idx = torch.tensor(ids, dtype=torch.int32, device=DEV)
    store = cache.sketches[bits]
    tok = paged_sketch_scan_bound(q, store, cache, seq_idx, T, scale=0.125, one_sided=one_sided)
    blk = paged_sketch_scan_bound(q, store, cache, seq_idx, T, scale=0.125, one_sided=one_sided, bounds="blocks")
    return T, tok, blk


def _outward(s, e, scale=0.125):
    t = (s + e) * torch.tensor(scale, dtype=torch.float32)
    return t + t.abs() * torch.tensor(8 * 5.960464477539063e-08, dtype=torch.float32)


@pytest.mark.parametrize("lens,Hkv,G,D,bits,one_sided,Kc", CASES)
def test_block_bounds_are_the_token_bounds_blocks(lens, Hkv, G, D, bits, one_sided, Kc):
    cache, ids, _ = _cache(lens, Hkv, D, bits, seed=3 * D + bits, spare=19)
    T, (s, ub, smax), (s2, blocks, smax2) = _scan(cache, ids, lens, Hkv * G, D, bits, one_sided, 19, seed=G)
    assert torch.equal(s.cpu(), s2.cpu()) and torch.equal(smax.cpu(), smax2.cpu())
    ub, blocks, s = ub.cpu(), blocks.cpu(), s.cpu()
    NS = blocks.shape[2]
    ubp = torch.nn.functional.pad(ub, (0, NS * 16 - T), value=-math.inf).view(-1, NS, 16)
    bm, bz, be = blocks
    # every entry written by the scan (blocks past a row's end included): no NaN, no garbage
    assert bool(((bm == -math.inf) | bm.isfinite()).all() & (bz >= 0).all() & bz.isfinite().all()
                & (be >= 0).all() & be.isfinite().all())
    assert torch.equal(bm, ubp.amax(-1))
    m0 = torch.where(bm == -math.inf, 0.0, bm).double()
    z_ref = torch.exp(ubp.double() - m0[..., None]).sum(-1)
    assert bool(((bz.double() - z_ref).abs() <= 1e-5 * z_ref + 1e-30).all())
    # e_b ≥ each token's slack: the bound recomputed from ŝ is ≥ the scan's (equal two-sided)
    sp = torch.nn.functional.pad(s, (0, NS * 16 - T), value=-math.inf).view(-1, NS, 16)
    fin = sp > -math.inf
    re = _outward(sp, be[..., None])
    assert bool((re[fin] >= ubp[fin]).all())
    if DEV == "cpu" and not one_sided:
        assert torch.equal(re[fin], ubp[fin])


@pytest.mark.parametrize("lens,Hkv,G,D,bits,one_sided,Kc", CASES)
def test_excluded_mass_bounds_the_token_bounds_sum(lens, Hkv, G, D, bits, one_sided, Kc):
    cache, ids, _ = _cache(lens, Hkv, D, bits, seed=5 * D + bits, spare=7)
    Hq = Hkv * G
    T, (s, ub, smax), (s2, blocks, _) = _scan(cache, ids, lens, Hq, D, bits, one_sided, 7, seed=G + 1)
    cand, _ = select_candidates(s, smax, Kc, 4 * Kc, False, short_window=16 * Kc)
    M, Z = excluded_upper(s2, blocks, cand, scale=0.125)
    M, Z = M.cpu().double(), Z.cpu().double()
    x = ub.cpu().double().scatter(1, cand.cpu(), -math.inf)
    ref = torch.logsumexp(x, 1)
    got = M + torch.log(Z)
    assert bool((got >= ref).all()), float((got - ref).min())
    slack = math.log(excluded_factor(1)) + 1e-6    # the combination's factor (three stages), no more
    if not one_sided:
        assert bool((got - ref <= slack).all()), float((got - ref).max())
    else:                          # one-sided: at most the marked blocks' tokens at their two-sided slack
        _, (_, ub2, _), _ = _scan(cache, ids, lens, Hq, D, bits, False, 7, seed=G + 1)
        ref2 = torch.logsumexp(ub2.cpu().double().scatter(1, cand.cpu(), -math.inf), 1)
        assert bool((got <= ref2 + slack).all()), (got - ref2).tolist()
    assert torch.equal(s2[torch.arange(s2.shape[0])[:, None], cand].cpu(),
                       torch.full(cand.shape, -math.inf))          # candidates marked out of ŝ


def test_three_stage_factor_is_small():
    """The block path's F inverts every lowering of its three stages: above 1, and below 1 + 10⁻⁴ at
    any realistic chunk count (no loose constant; the two-stage F is larger, its chunk sum has 4,098
    terms)."""
    for nc in (1, 8, 256):
        f3 = excluded_factor(nc)
        assert 1 + 300 * 5.96e-8 < f3 < 1 + 1e-4 and f3 < lse_factor(BB * 16, nc)


def test_nan_and_inf_bounds_are_not_hidden():
    """A NaN z_b (even with m_b = −∞), a NaN ŝ in a marked block and a +∞ m_b each reach the
    combination as NaN or +∞ (the finish kernel then leaves the row uncertified); an empty row
    gives M = −∞, Z = 0."""
    R, T = 5, 40
    NS = (T + 15) // 16
    s = torch.zeros(R, T, device=DEV)
    blocks = torch.zeros(3, R, NS, device=DEV)
    blocks[0] = 1.0
    blocks[1] = 1.0
    cand = torch.tensor([[0], [0], [0], [0], [0]], device=DEV)
    blocks[1, 0, 1] = float("nan")
    blocks[0, 0, 1] = -math.inf
    s[1, 3] = float("nan")                       # block 0 is marked (candidate 0)
    blocks[0, 2, 2] = math.inf
    s[3] = -math.inf
    blocks[0, 3] = -math.inf
    blocks[1, 3] = 0.0
    M, Z = excluded_upper(s, blocks, cand, scale=1.0)
    M, Z = M.cpu(), Z.cpu()
    assert math.isnan(Z[0]) and math.isnan(Z[1])
    assert M[2] == math.inf
    assert M[3] == -math.inf and Z[3] == 0
    assert math.isfinite(M[4]) and math.isfinite(Z[4]) and Z[4] > 0


def test_block_bounds_are_written_over_poison(monkeypatch):
    """The block bounds start as NaN (poisoned before the kernel writes them): every entry, blocks
    past a row's end included, is overwritten with the same values as from an empty buffer."""
    from vashista_gpu.kernels import sketch_scan

    cache, ids, _ = _cache([70, 9], 2, 16, 4, seed=11, spare=40)
    T, _, (s, clean, smax) = _scan(cache, ids, [70, 9], 4, 16, 4, True, 40, seed=3)
    real = sketch_scan._bounds_out

    def poisoned(*a, **k):
        out, blocks = real(*a, **k)
        return out.fill_(float("nan")), blocks

    monkeypatch.setattr(sketch_scan, "_bounds_out", poisoned)
    _, _, (s2, dirty, smax2) = _scan(cache, ids, [70, 9], 4, 16, 4, True, 40, seed=3)
    assert not bool(dirty.isnan().any())
    assert torch.equal(dirty.cpu(), clean.cpu()) and torch.equal(s2.cpu(), s.cpu())
