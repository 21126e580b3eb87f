"""``kernels/row_keys.py`` against ``selection.tie_keys``: the same int64 keys bit for bit (−0.0,
±inf, NaN, subnormals, ties; odd widths, a prefix of the columns, a row stride wider than the
width, several column blocks), and the selection it feeds still follows the tie rule.
TRITON_INTERPRET=1 on CPU (tests/conftest.py)."""
from __future__ import annotations

import pytest
import torch

from vashista_gpu.kernels.row_keys import row_keys
from vashista_gpu.selection import key_index, select_candidates, tie_keys

DEV = "cuda" if torch.cuda.is_available() else "cpu"     # compiled on a GPU, interpreted on CPU


@pytest.mark.parametrize("R,T,width,block", [(1, 7, None, 1024), (3, 50, 33, 1024), (4, 70, None, 16), (2, 5, 1, 4)])
def test_row_keys_equal_tie_keys(R, T, width, block):
    g = torch.Generator().manual_seed(R * T)
    s = torch.randn(R, T + 3, generator=g).to(DEV)[:, :T]         # row stride T + 3
    s[:, ::5] = 0.0
    specials = torch.tensor([-0.0, float("inf"), float("-inf"), float("nan"), 1e-45, -1e-45, 1.0, 1.0])
    n = min(len(specials), T)
    s2 = torch.randn(R, T + 3, generator=g).to(DEV)[:, :T]
    s2[0, :n] = specials[:n].to(DEV)
    for x in (s, s2):
        w = T if width is None else width
        want = tie_keys(x[:, :w], torch.arange(w, device=DEV))
        got = row_keys(x, width, block=block)
        assert got.dtype == torch.int64 and got.shape == (R, w)
        assert torch.equal(got, want)


def test_full_topk_selection_follows_the_tie_rule():
    """The full-topk path of select_candidates (few blocks) with ties: the lower index wins."""
    s = torch.tensor([[1.0, 3.0, 3.0, 2.0, -0.0, 0.0, 3.0, float("-inf")]], device=DEV)
    cand, overflow = select_candidates(s, s.amax(-1, keepdim=True), 3, 8, sync=False)
    assert cand.tolist() == [[1, 2, 6]] and not overflow.any()
    cand, _ = select_candidates(s, s.amax(-1, keepdim=True), 5, 8, sync=False)
    assert cand.tolist() == [[0, 1, 2, 3, 6]]
    assert key_index(row_keys(s)).tolist() == [list(range(8))]
