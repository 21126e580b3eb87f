"""Two-sided certified steps without a token bound per token and query head: the scan writes each
group's slack e (``sketch_scan``'s ``bounds="slack"``) and the certificate's log-sum-exp derives
ub_j = t + 8u|t|, t = (ŝ_j + e)·scale from the ŝ it reads (``row_lse.row_lse_chunks(slack=...)``).

Against the token bounds the same scan writes with ``bounds="tokens"``: the derived bounds are the same
float32 numbers (bit for bit under the interpreter; compiled, the float32 formula is the scan's own, so
its soundness argument holds for either), and so are the chunk results after the candidates' −∞; one-
sided bounds are refused (not a function of ŝ and the group); the slack of every page a row holds is
written over NaN poison; a NaN score stays NaN. Paged caches with odd lengths and partial pages, the
contiguous scan at groups 16 and 64, GQA with one KV head; TRITON_INTERPRET=1 on CPU."""
from __future__ import annotations

import math

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("triton")

from vashista_gpu.kernels import sketch_scan  # noqa: E402
from vashista_gpu.kernels.row_lse import row_lse_chunks  # noqa: E402
from vashista_gpu.kernels.sketch_scan import paged_sketch_scan_bound, sketch_scan_bound  # noqa: E402
from vashista_gpu.selection import select_candidates  # noqa: E402
from vashista_gpu.sketch import quantize_keys  # noqa: E402

from test_paged_scan import DEV, _cache  # noqa: E402

U8 = 8 * 5.960464477539063e-08


def _derived(s, e, group, scale):
    """The scan's two-sided bound from ŝ (R, T) and the slack (R, groups), in float32, −inf kept."""
    j = torch.arange(s.shape[1], device=s.device)
    t = (torch.where(s == -math.inf, 0.0, s) + e[:, j // group]) * torch.tensor(scale, dtype=torch.float32)
    return torch.where(s == -math.inf, -math.inf, t + t.abs() * torch.tensor(U8, dtype=torch.float32))


def _check(s, ub, slack, smax, group, scale, Kc):
    s, ub, slack, smax = (x.cpu() for x in (s, ub, slack, smax))
    fin = ub > -math.inf
    assert torch.equal(fin, s > -math.inf)
    got = _derived(s, slack, group, scale)
    if DEV == "cpu":
        assert torch.equal(got, ub)
    else:
        assert bool((got[fin] >= ub[fin] - 1e-5 * ub[fin].abs() - 1e-6).all())
    cand, _ = select_candidates(s, smax, Kc, 4 * Kc, False, short_window=16 * Kc)
    x_tok, x_s = ub.clone().scatter_(1, cand, -math.inf), s.clone().scatter_(1, cand, -math.inf)
    a = row_lse_chunks(x_tok.to(DEV), block=64)
    b = row_lse_chunks(x_s.to(DEV), block=64, slack=slack.to(DEV), group=group, scale=scale)
    for u, v in zip(a, b):
        assert torch.equal(u.cpu(), v.cpu()) if DEV == "cpu" else torch.allclose(u.cpu(), v.cpu(), rtol=1e-5)


@pytest.mark.parametrize("lens,Hkv,G,D,bits,Kc", [([150, 97, 33], 1, 4, 64, 4, 8), ([200, 61], 2, 3, 16, 8, 16)])
def test_paged_slack_gives_the_token_bounds(lens, Hkv, G, D, bits, Kc):
    cache, ids, _ = _cache(lens, Hkv, D, bits, seed=7 * D + bits, spare=19)
    T = max(lens) + 19
    q = (torch.randn(len(lens) * Hkv * G, D, generator=torch.Generator().manual_seed(G)) * 1.5).to(DEV)
    seq_idx = torch.tensor(ids, dtype=torch.int32, device=DEV)
    store = cache.sketches[bits]
    kw = dict(scale=0.125, one_sided=False)
    s, ub, smax = paged_sketch_scan_bound(q, store, cache, seq_idx, T, **kw)
    s2, slack, smax2 = paged_sketch_scan_bound(q, store, cache, seq_idx, T, bounds="slack", **kw)
    assert torch.equal(s.cpu(), s2.cpu()) and torch.equal(smax.cpu(), smax2.cpu())
    assert slack.shape == (len(lens) * Hkv * G, -(-T // cache.page_size))
    _check(s, ub, slack, smax, cache.page_size, 0.125, Kc)


@pytest.mark.parametrize("group,bits", [(16, 4), (64, 8), (64, 4)])
def test_contiguous_slack_gives_the_token_bounds(group, bits):
    g = torch.Generator().manual_seed(group + bits)
    RK, G, T, D = 3, 2, 203, 32
    K = torch.randn(RK, T, D, generator=g, dtype=torch.float64) * 2
    sk = quantize_keys(K, bits=bits, group=group)
    q = torch.randn(RK * G, D, generator=g).to(DEV)
    args = (q, sk.codes.to(DEV), sk.offset.float().to(DEV), sk.step.float().to(DEV))
    kw = dict(bits=bits, group=group, scale=0.2, one_sided=False)
    s, ub, smax = sketch_scan_bound(*args, **kw)
    s2, slack, _ = sketch_scan_bound(*args, bounds="slack", **kw)
    assert torch.equal(s.cpu(), s2.cpu())
    _check(s, ub, slack, smax, group, 0.2, 12)


def test_one_sided_slack_is_refused_and_slack_overwrites_poison(monkeypatch):
    cache, ids, _ = _cache([70, 9], 2, 16, 4, seed=11, spare=40)
    q = torch.randn(8, 16, generator=torch.Generator().manual_seed(3)).to(DEV)
    seq_idx = torch.tensor(ids, dtype=torch.int32, device=DEV)
    store = cache.sketches[4]
    with pytest.raises(ValueError, match="two-sided"):
        paged_sketch_scan_bound(q, store, cache, seq_idx, 110, scale=0.1, one_sided=True, bounds="slack")
    clean = paged_sketch_scan_bound(q, store, cache, seq_idx, 110, scale=0.1, one_sided=False, bounds="slack")[1]
    real = sketch_scan._bounds_out

    def poisoned(*a, **k):
        out, flag = real(*a, **k)
        return out.fill_(float("nan")), flag

    monkeypatch.setattr(sketch_scan, "_bounds_out", poisoned)
    dirty = paged_sketch_scan_bound(q, store, cache, seq_idx, 110, scale=0.1, one_sided=False, bounds="slack")[1]
    pages = torch.tensor([[-(-70 // 16)] * 4 + [-(-9 // 16)] * 4]).T      # pages each row holds
    held = torch.arange(dirty.shape[1])[None, :] < pages
    assert not bool(dirty.cpu()[held].isnan().any())
    assert torch.equal(dirty.cpu()[held], clean.cpu()[held])


def test_derived_bounds_keep_nan_and_inf():
    """A NaN ŝ gives a NaN chunk sum (the row is then uncertified), −inf contributes nothing, a huge ŝ
    an infinite bound."""
    s = torch.tensor([[0.0, float("nan"), -math.inf, 1.0], [0.0, 1.0, -math.inf, -math.inf],
                      [3e38, 1.0, 0.0, 0.0]], device=DEV)
    e = torch.ones(3, 1, device=DEV)
    m, z = row_lse_chunks(s, block=4, slack=e, group=4, scale=4.0)
    m, z = m.cpu(), z.cpu()
    assert math.isnan(z[0, 0])
    assert math.isfinite(z[1, 0]) and abs(float(m[1, 0]) - 8.0) < 1e-5
    assert m[2, 0] == math.inf
