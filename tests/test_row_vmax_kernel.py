"""``kernels/row_vmax.py`` against the torch expression it replaced in ``sketch_plan.row_vmax``: bit
for bit, on ragged rows (partial pages), shuffled physical pages, GQA with one KV head and with
G = 1, a plan longer than the rows, a NaN norm, the output poisoned before the launch.
TRITON_INTERPRET=1 on CPU (tests/conftest.py)."""
from __future__ import annotations

import pytest
import torch

from vashista_core.rounding import U32
from vashista_gpu.kernels.row_vmax import row_vmax_pages
from vashista_gpu.paged_cache import TorchPagedKVCache

DEV = "cuda" if torch.cuda.is_available() else "cpu"     # compiled on a GPU, interpreted on CPU


def _torch_row_vmax(cache, seq_idx, n_pages, Hq, factor):
    """The torch code of sketch_plan.row_vmax before the kernel (the reference)."""
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


@pytest.mark.parametrize("Hkv,Hq,lens,extra_pages,block", [(1, 4, (5,), 0, 1024), (2, 2, (16, 33, 1), 3, 1024),
                                                            (3, 9, (70, 17), 2, 2), (2, 8, (100, 47, 9, 64), 1, 4)])
def test_row_vmax_kernel_is_bit_identical(Hkv, Hq, lens, extra_pages, block):
    g = torch.Generator().manual_seed(Hkv * 10 + Hq)
    S = 16
    c = TorchPagedKVCache(S, Hkv, 8, num_pages=40, max_seqs=len(lens), dtype=torch.float32, backend="torch",
                          key_summaries=False, device=DEV)
    free = torch.randperm(40, generator=g).tolist()
    seqs = []
    for n in lens:
        s = c.add_sequence()
        want = [free.pop() for _ in range(-(-n // S))]
        c.append(s, torch.randn(n, Hkv, 8, generator=g).to(DEV), 3 * torch.randn(n, Hkv, 8, generator=g).to(DEV),
                 physical_pages=want)
        seqs.append(s)
    c.vnorm[c.page_table(seqs[-1])[-1], 0] = float("nan")      # NaN stays NaN in its (row, head)
    # dead pages (never appended to) carry large norms: only live pages may count
    dead = [p for p in range(40) if all(p not in c.page_table(s) for s in seqs)]
    c.vnorm[dead] = 1e6
    n_pages = max(-(-n // S) for n in lens) + extra_pages
    idx = torch.tensor(seqs, dtype=torch.int32, device=DEV)
    factor = 1 + 2 * (8 + 4) * U32
    out = torch.full((len(seqs) * Hq,), -3.0, device=DEV)
    got = row_vmax_pages(c, idx, n_pages, Hq, factor, out=out, block=block)
    want = _torch_row_vmax(c, idx, n_pages, Hq, factor)
    assert got is out
    assert torch.equal(got.nan_to_num(-9.0), want.nan_to_num(-9.0))
    assert torch.isnan(got).sum() == Hq // Hkv and (got.nan_to_num(0) < 1e5).all()
