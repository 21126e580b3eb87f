"""The paged step's row bounds (``decode._row_bounds``) read the cache's running maxima ``kabs``/``vabs``
instead of scanning every live page's summaries. They must equal the scan bit for bit — ragged
batches, odd lengths, partial pages, host and device appends, a released and re-added slot, NaN and
inf keys (which must leave R non-finite: the certificate is then ∞) — on the torch backend and on the
Triton one (interpreter on CPU, tests/conftest.py)."""
from __future__ import annotations

import math

import pytest
import torch

from vashista_core.rounding import U32
from vashista_gpu import decode
from vashista_gpu.decode import _row_bounds, sparse_decode
from vashista_gpu.paged_cache import TorchPagedKVCache
from vashista_gpu.plan import plan_decode

DEV = "cuda" if torch.cuda.is_available() else "cpu"
H, D, S = 2, 8, 4


def _full_scan(plan, cache):
    """The former ``_row_bounds``: max over the live pages of max(|kmin|, |kmax|) and of vnorm."""
    idx = torch.arange(plan.NP, device=plan.seq_ids.device)
    phys = cache.block_table[plan.seq_ids][:, idx.clamp(max=cache.max_pages_per_seq - 1)].long().clamp(min=0)
    live = idx[None, :] * plan.S < plan.lens[:, None]
    R = torch.maximum(cache.kmin[phys].abs(), cache.kmax[phys].abs()).float()
    R = torch.where(live[..., None, None], R, 0.0).amax(1)
    vm = torch.where(live[..., None], cache.vnorm[phys], 0.0).amax(1) * (1 + 2 * (plan.Dv + 4) * U32)
    return R, vm


def _check(cache, seqs=None):
    """Running maxima == full scan for the live non-empty sequences (in a shuffled batch order)."""
    seqs = [s for s in (cache.seq_ids if seqs is None else seqs) if cache.length(s) > 0]
    if not seqs:
        return None
    seqs = seqs[::-1]
    plan = plan_decode(cache, seqs, 2 * H, 1, 1)
    got, want = _row_bounds(plan, cache), _full_scan(plan, cache)
    for g, w in zip(got, want):
        assert g.dtype == w.dtype == torch.float32 and g.shape == w.shape
        torch.testing.assert_close(g, w, rtol=0, atol=0, equal_nan=True)
    return got


def _cache(backend, dtype=torch.float32, **kw):
    return TorchPagedKVCache(S, H, D, num_pages=40, max_seqs=3, max_pages_per_seq=12, dtype=dtype,
                             backend=backend, device=DEV, **kw)


def _kv(g, n, scale=1.0):
    return (torch.randn(n, H, D, generator=g) * scale).to(DEV), torch.randn(n, H, D, generator=g).to(DEV)


@pytest.mark.parametrize("backend", ["torch", "triton"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_host_appends_match_full_scan(backend, dtype):
    """Ragged prefills in odd chunks (partial pages, several pages per call), host decode steps of
    subsets of the rows, a release and a re-add of the slot that held the largest keys."""
    g = torch.Generator().manual_seed(0)
    c = _cache(backend, dtype)
    a, b, e = c.add_sequence(), c.add_sequence(), c.add_sequence()
    for s, n, chunk, scale in ((a, 13, 5, 1.0), (b, 3, 3, 30.0), (e, 9, 1, 2.0)):
        for t in range(0, n, chunk):
            c.append(s, *_kv(g, min(chunk, n - t), scale))
            _check(c)
    for rows in ([a, b, e], [b], [e, a], [a, b, e]):
        c.append_step(rows, *_kv(g, len(rows)))
        _check(c)
    big = c.kabs[b].clone()
    c.free_sequence(b)
    assert c.add_sequence() == b                   # the same slot, a fresh sequence with small keys
    c.append(b, *_kv(g, 2, 0.01))
    R, _ = _check(c, [b])
    assert bool((R < big).all())                   # nothing of the released sequence survives
    c.append_step([a, b, e], *_kv(g, 3))
    _check(c)


def test_hierarchy_cache_matches_full_scan():
    """The hierarchy levels do not change the page summaries the maxima come from."""
    g = torch.Generator().manual_seed(1)
    c = TorchPagedKVCache(S, H, D, fanout=2, num_pages=40, max_seqs=2, max_pages_per_seq=12,
                          dtype=torch.float32, backend="torch", device=DEV)
    a, b = c.add_sequence(), c.add_sequence()
    c.append(a, *_kv(g, 11))
    c.append(b, *_kv(g, 26))
    c.append_step([b, a], *_kv(g, 2))
    _check(c)


@pytest.mark.parametrize("path", ["torch", "triton-fused", "triton-unfused"])
def test_device_appends_match_full_scan(path, monkeypatch):
    """``append_step_device``: the torch branch, the fused Triton kernel (followed by the torch
    update of the maxima) and the Triton backend with the fused kernel switched off."""
    if path == "triton-unfused":
        monkeypatch.setenv("VASHISTA_FUSED_APPEND", "0")
    c = _cache("torch" if path == "torch" else "triton")
    if path == "triton-fused":
        from vashista_gpu.kernels.append_step import fusable
        assert fusable(c)
    g = torch.Generator().manual_seed(2)
    seqs = [c.add_sequence() for _ in range(3)]
    for s, n in zip(seqs, (1, 6, 9)):
        c.reserve(s, n + 9)
        c.append(s, *_kv(g, n))
    idx = torch.tensor(seqs, dtype=torch.int32, device=DEV)
    for step in range(9):
        rows = idx if step % 3 else idx[[2, 0]]      # ragged: some steps skip a row
        c.append_step_device(rows, *_kv(g, rows.numel()))
        c.sync_lengths()
        _check(c)


@pytest.mark.parametrize("backend", ["torch", "triton"])
@pytest.mark.parametrize("where,bad", [("key", math.nan), ("key", math.inf), ("key", -math.inf),
                                       ("value", math.nan), ("value", math.inf)])
def test_nonfinite_token_stays_nonfinite(backend, where, bad, monkeypatch):
    """A NaN/±inf key or value stored by the device append (which cannot refuse it) makes R (or vmax)
    non-finite in its (row, head, channel) for good — later finite appends do not wash it out — and
    the step's certificate is the scan's (∞ for that KV head's query heads with a NaN); a re-added
    slot starts clean. The Triton page
    summaries drop a NaN (their min/max): the scan then missed it, the maxima carry the NaN anyway."""
    c = _cache(backend)
    g = torch.Generator().manual_seed(3)
    a, b = c.add_sequence(), c.add_sequence()
    for s in (a, b):
        c.reserve(s, 12)
        c.append(s, *_kv(g, 5))
    k, v = _kv(g, 2)
    (k if where == "key" else v)[1, 1, 3] = bad
    idx = torch.tensor([a, b], dtype=torch.int32, device=DEV)
    c.append_step_device(idx, k, v)
    for _ in range(4):                              # fills the page and opens the next one
        c.append_step_device(idx, *_kv(g, 2))
    c.sync_lengths()
    plan = plan_decode(c, [a, b], 2 * H, 1, 1)
    R, vm = _row_bounds(plan, c)
    R_ref, vm_ref = _full_scan(plan, c)
    if math.isnan(bad):
        if where == "key":
            R_ref[1, 1, 3] = math.nan
        else:
            vm_ref[1, 1] = math.nan
    torch.testing.assert_close(R, R_ref, rtol=0, atol=0, equal_nan=True)
    torch.testing.assert_close(vm, vm_ref, rtol=0, atol=0, equal_nan=True)
    bad_map = torch.zeros(2, H, D, dtype=torch.bool)
    bad_map[1, 1, 3] = where == "key"
    assert torch.equal(~torch.isfinite(R).cpu(), bad_map)
    assert torch.equal(~torch.isfinite(vm).cpu(), torch.tensor([[False, False], [False, where == "value"]]))
    # the step's certificate is the one the scan gave (with the NaN the Triton summaries dropped)
    q = torch.randn(2, 2 * H, D, generator=g).to(DEV)
    r = sparse_decode(q, c, [a, b], P=1, Kc=4, backend=backend)
    monkeypatch.setattr(decode, "_row_bounds", lambda plan, cache: (R_ref, vm_ref))
    r_ref = sparse_decode(q, c, [a, b], P=1, Kc=4, backend=backend)
    monkeypatch.undo()
    torch.testing.assert_close(r.certified_error, r_ref.certified_error, rtol=0, atol=0, equal_nan=True)
    torch.testing.assert_close(r.out, r_ref.out, rtol=0, atol=0, equal_nan=True)
    err = r.certified_error                         # query heads 2, 3 read KV head 1
    assert bool(torch.isfinite(err[0]).all()) and bool(torch.isfinite(err[1, :2]).all())
    if math.isnan(bad):
        assert bool((err[1, 2:] == math.inf).all())
    c.free_sequence(b)
    c.add_sequence(b)
    c.append(b, *_kv(g, 3))
    R, vm = _check(c, [b])
    assert bool(torch.isfinite(R).all()) and bool(torch.isfinite(vm).all())


def test_certified_cache_keeps_value_maxima_only():
    """Caches without key summaries never run the paged step: no key maxima; the value-norm maxima
    stay (the certified step's max‖v‖ reads them); a dense-only cache keeps neither."""
    c = TorchPagedKVCache(S, H, D, num_pages=4, max_seqs=1, key_summaries=False, backend="torch")
    assert c.kabs is None and c.vabs is not None
    s = c.add_sequence()
    v = torch.randn(3, H, D)
    c.append(s, torch.randn(3, H, D), v)
    assert torch.equal(c.vabs[s], c.vnorm[c.page_table(s)[0]])
    d = TorchPagedKVCache(S, H, D, num_pages=4, max_seqs=1, key_summaries=False, value_norms=False, backend="torch")
    assert d.kabs is None and d.vabs is None
    d.append(d.add_sequence(), torch.randn(3, H, D), torch.randn(3, H, D))
