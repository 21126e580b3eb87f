"""``kernels/row_vmax.py`` (the cache's running maxima ``vabs``) against the page walk it replaced in
``sketch_plan.row_vmax``: bit for bit, after prefills and device decode steps, on ragged rows (partial
pages), shuffled physical pages, GQA with one KV head and with G = 1, a NaN value appended, a slot
reused after a longer sequence with larger values was freed, the output poisoned before the launch.
TRITON_INTERPRET=1 on CPU (tests/conftest.py)."""
from __future__ import annotations

import pytest
import torch

from vashista_core.rounding import U32
from vashista_gpu.kernels.row_vmax import row_vmax_seqs
from vashista_gpu.paged_cache import TorchPagedKVCache

DEV = "cuda" if torch.cuda.is_available() else "cpu"     # compiled on a GPU, interpreted on CPU


def _page_walk_row_vmax(cache, seq_idx, n_pages, Hq, factor):
    """The torch code of sketch_plan.row_vmax before the running maxima (the reference): the max of
    the live pages' norm summaries."""
    Hkv = cache.n_kv_heads
    G = Hq // Hkv
    B = seq_idx.numel()
    page_idx = torch.arange(n_pages, device=DEV)
    seq = seq_idx.long()
    pages = cache.block_table[seq][:, page_idx].long()
    live = page_idx[None, :] * cache.page_size < cache.seq_lens[seq].long()[:, None]
    vn = torch.where(live[..., None], cache.vnorm[pages], 0.0)
    vmax = vn.amax(1) * factor
    r = torch.arange(B * Hq, device=DEV)
    return vmax.reshape(-1)[(r // Hq) * Hkv + (r % Hq) // G]


@pytest.mark.parametrize("backend", ["torch", "triton"])
@pytest.mark.parametrize("Hkv,Hq,lens,steps", [(1, 4, (5,), 3), (2, 2, (16, 33, 1), 17), (3, 9, (70, 17), 2),
                                               (2, 8, (100, 47, 9, 64), 5)])
def test_row_vmax_is_the_page_walk_bit_for_bit(backend, Hkv, Hq, lens, steps):
    g = torch.Generator().manual_seed(Hkv * 10 + Hq + steps)
    S, D, N = 16, 8, 60
    c = TorchPagedKVCache(S, Hkv, D, num_pages=N, max_seqs=len(lens) + 1, dtype=torch.float32, backend=backend,
                          key_summaries=False, device=DEV)
    # a longer sequence with larger values first, freed: its slot and pages are reused below
    gone = c.add_sequence()
    c.append(gone, torch.randn(90, Hkv, D, generator=g).to(DEV), 1000 * torch.randn(90, Hkv, D, generator=g).to(DEV))
    c.free_sequence(gone)
    free = torch.randperm(N, generator=g).tolist()
    seqs = []
    for n in lens:
        s = c.add_sequence()
        want = [free.pop() for _ in range(-(-n // S))]
        c.append(s, torch.randn(n, Hkv, D, generator=g).to(DEV), 3 * torch.randn(n, Hkv, D, generator=g).to(DEV),
                 physical_pages=want)
        c.reserve(s, n + steps)
        seqs.append(s)
    idx = torch.tensor(seqs, dtype=torch.int32, device=DEV)
    for t in range(steps):                    # device decode steps (the fused append on the Triton backend)
        v = (1 + t) * torch.randn(len(seqs), Hkv, D, generator=g)
        if t == steps - 1:
            v[-1, 0, 1] = float("nan")           # NaN stays NaN in its (row, KV head)
        c.append_step_device(idx, torch.randn(len(seqs), Hkv, D, generator=g).to(DEV), v.to(DEV))
    c.sync_lengths()
    n_pages = max(-(-c.length(s) // S) for s in seqs)
    factor = 1 + 2 * (D + 4) * U32
    out = torch.full((len(seqs) * Hq,), -3.0, device=DEV)
    got = row_vmax_seqs(c, idx, Hq, factor, out=out)
    assert got is out
    want = _page_walk_row_vmax(c, idx, n_pages, Hq, factor)
    nan = torch.zeros(len(seqs), Hq, dtype=torch.bool)
    nan[-1, : Hq // Hkv] = True                  # the NaN's KV head 0 feeds query heads 0 .. G-1
    assert torch.equal(torch.isnan(got).cpu(), nan.reshape(-1))
    # the page walk agrees wherever the page summaries kept the NaN (the Triton summaries may drop it;
    # the running maximum marks it from the appended value itself)
    keep = ~nan.reshape(-1).to(DEV) | torch.isnan(want)
    assert torch.equal(got[keep].nan_to_num(-9.0), want[keep].nan_to_num(-9.0))
    assert (got.nan_to_num(0) < 500).all()       # the freed sequence's norms (~1000·√8) left no trace
