"""The paged sketch scan (``kernels/sketch_scan.py::paged_sketch_scan_bound``) with several pages per
program (GQA, the engine's 16-token pages): every token's ŝ and ub are the same whatever the number
of pages a program covers — the same bits under the interpreter; compiled, the per-page setup's float32
sums over channels may be ordered differently for another tile shape (up to ~2.4·10⁻⁶ absolute seen
on an H100), which the scan's rounding allowance covers for any order, so there every variant's ub is
checked against the true keys and the variants agree to 10⁻⁵. −inf past each row's end is written by
the kernel itself (no fills), ŝ agrees with the float64 dot against the dequantized sketch, and ub
bounds the true scaled score of every stored key. GQA grids with one KV head, odd lengths, partial
last pages and shuffled physical pages; runs under TRITON_INTERPRET=1."""
from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("triton")

from vashista_gpu.kernels.sketch_scan import paged_sketch_scan_bound  # noqa: E402
from gpu_cases import append_interleaved  # noqa: E402
from vashista_gpu.paged_cache import TorchPagedKVCache  # noqa: E402
from vashista_gpu.sketch import attach_sketch  # noqa: E402

DEV = "cuda" if torch.cuda.is_available() else "cpu"


def _cache(lens, Hkv, D, bits, seed, page=16, dtype=torch.bfloat16, spare=0):
    """Sequences appended in interleaved chunks of 37 (non-contiguous physical pages, partial pages),
    with ``spare`` tokens of reserved pages past the longest one (the scan's T then exceeds it)."""
    g = torch.Generator().manual_seed(seed)
    cache = TorchPagedKVCache(page, n_kv_heads=Hkv, head_dim=D, dtype=dtype, device=DEV, num_pages=96,
                              max_seqs=len(lens), max_pages_per_seq=24)
    attach_sketch(cache, bits)
    ids = [cache.add_sequence() for _ in lens]
    data = [(torch.randn(T, Hkv, D, generator=g) * 2 + torch.randn(1, Hkv, D, generator=g),
             torch.randn(T, Hkv, D, generator=g)) for T in lens]
    append_interleaved(cache, ids, data)
    if spare:
        for s, T in zip(ids, lens):
            cache.reserve(s, T + spare)
    return cache, ids, [K.to(dtype).double() for K, _ in data]


CASES = [
    # lens (odd, partial pages), Hkv, G, D, bits, one_sided
    ([150, 97, 1], 1, 4, 64, 4, True),        # one KV head, the 1B shape's G and D
    ([33, 200], 2, 4, 64, 8, True),
    ([129, 16, 64], 2, 3, 16, 4, False),
    ([75], 3, 1, 32, 8, False),               # MHA
]


@pytest.mark.parametrize("lens,Hkv,G,D,bits,one_sided", CASES)
def test_pages_per_program_are_bit_identical_and_sound(lens, Hkv, G, D, bits, one_sided):
    cache, ids, keys = _cache(lens, Hkv, D, bits, seed=len(lens) + D + bits, spare=21)
    B, Hq, scale = len(lens), Hkv * G, 0.125
    T = max(lens) + 21                         # wider than every row: the planned step's T_cap
    g = torch.Generator().manual_seed(G)
    q = (torch.randn(B * Hq, D, generator=g) * 1.5).to(DEV)
    seq_idx = torch.tensor(ids, dtype=torch.int32, device=DEV)
    store = cache.sketches[bits]
    runs = {n: paged_sketch_scan_bound(q, store, cache, seq_idx, T, scale=scale, one_sided=one_sided,
                                       pages_per_program=n) for n in (1, 2, 4, 8)}
    runs["default"] = paged_sketch_scan_bound(q, store, cache, seq_idx, T, scale=scale, one_sided=one_sided)
    s1, ub1, sm1 = (x.cpu() for x in runs[1])
    for n, out in runs.items():
        for a, b in zip((x.cpu() for x in out), (s1, ub1, sm1)):
            assert torch.equal(a.isfinite(), b.isfinite()) and bool((a[~a.isfinite()] == b[~b.isfinite()]).all()), n
            if DEV == "cpu":
                assert torch.equal(a, b), n                       # the interpreter: the same bits
            else:
                f = a.isfinite()
                assert torch.allclose(a[f], b[f], rtol=1e-5, atol=1e-5), (n, float((a[f] - b[f]).abs().max()))
    ubs = {n: out[1].cpu() for n, out in runs.items()}
    L, S = (1 << bits) - 1, cache.page_size
    for b, (sid, n) in enumerate(zip(ids, lens)):
        rows = slice(b * Hq, (b + 1) * Hq)
        # −inf exactly past the row's end, finite before (written by the kernel: outputs start empty)
        assert bool(torch.isfinite(s1[rows, :n]).all() & torch.isfinite(ub1[rows, :n]).all())
        assert bool((s1[rows, n:] == float("-inf")).all() & (ub1[rows, n:] == float("-inf")).all())
        ref_max = torch.where(torch.arange(T) < n, s1[rows], float("-inf"))
        ref_max = torch.nn.functional.pad(ref_max, (0, sm1.shape[1] * 16 - T), value=float("-inf"))
        assert torch.equal(sm1[rows], ref_max.view(Hq, -1, 16).amax(-1))
        # ŝ against the float64 dot with the dequantized sketch; ub against the true keys
        sk = store.sequence_sketch(cache, sid)
        c = sk.codes.cpu().long()
        if bits == 4:
            c = torch.stack([c & 15, c >> 4], -1).flatten(-2)
        gi = torch.arange(n) // S
        khat = sk.offset.cpu().double()[:, gi] + sk.step.cpu().double()[:, gi] * c[:, :n, :D].double()   # (Hkv, n, D)
        qd = q.cpu().double().view(B, Hkv, G, D)[b]                                                     # (Hkv, G, D)
        s_ref = torch.einsum("hgd,hnd->hgn", qd, khat).reshape(Hq, n)
        v_abs = torch.einsum("hgd,hnd->hgn", qd.abs(), sk.step.cpu().double()[:, gi]).reshape(Hq, n)
        assert bool(((s1[rows, :n].double() - s_ref).abs() <= L * v_abs * 2.0 ** -14 + 1e-5 * s_ref.abs() + 1e-6).all())
        true = scale * torch.einsum("hgd,nhd->hgn", qd, keys[b]).reshape(Hq, n)
        for npp, ub in ubs.items():                             # every launch sound, not only the first
            assert bool((ub[rows, :n].double() >= true).all()), (npp, float((ub[rows, :n].double() - true).min()))


def test_float_dots_take_one_page_per_program():
    """D 512 at int8 could overflow int32 (float dots): several pages per program are refused,
    the default takes one, and its outputs still carry −inf past the row's end."""
    cache, ids, _ = _cache([40], 1, 512, 8, seed=0)
    q = torch.randn(2, 512, device=DEV)
    seq_idx = torch.tensor(ids, dtype=torch.int32, device=DEV)
    with pytest.raises(AssertionError):
        paged_sketch_scan_bound(q, cache.sketches[8], cache, seq_idx, 48, scale=0.1, pages_per_program=2)
    s, ub, _ = paged_sketch_scan_bound(q, cache.sketches[8], cache, seq_idx, 48, scale=0.1)
    assert bool(torch.isfinite(ub[:, :40]).all() & (ub[:, 40:] == float("-inf")).all())
