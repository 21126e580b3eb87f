"""``kernels/select_split.py`` (``select_candidates(method="radix")``) against the tie rule itself and
the torch.topk path (``method="topk"``): the same indices, bit for bit, on every row — the split
select keeps no buffer of the tokens ≥ τ, so it never overflows, where the topk path flags rows
(with sync=False) — on random rows, heavy ties (quantized scores), all-equal rows, −0.0/+0.0, ±inf,
−inf tails (a paged batch), Kc = 1 and Kc = T, odd T, rows shorter than Kc blocks; one program per
row, several (slices of whole chunks, a partial last one) and more programs than chunks; the
block-skipping (maxima of the scan's 16-token blocks) and whole-row threshold modes.
TRITON_INTERPRET=1 on CPU (tests/conftest.py); compiled on a GPU."""
from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.utils._python_dispatch import TorchDispatchMode

from vashista_core.errors import VashistaInputError
from vashista_gpu.kernels.select_split import select_split
from vashista_gpu.selection import select_candidates, tie_keys, top_indices

DEV = "cuda" if torch.cuda.is_available() else "cpu"


def tie_rule_top(s, Kc, width=None):
    """The definition: top-Kc of (score desc, index asc) keys over the first ``width`` columns."""
    w = s.shape[1] if width is None else width
    return top_indices(tie_keys(s[:, :w], torch.arange(w, device=s.device)), Kc)


def block_max(s, bs=16):
    R, T = s.shape
    pad = torch.full((R, -(-T // bs) * bs - T), -math.inf, device=s.device)
    return torch.cat([s, pad], 1).view(R, -1, bs).amax(-1)


def rows(T, seed):
    """Six hard rows: random, quantized (ties), all equal, ±0 and ±inf, a −inf tail after at most 40
    tokens, tiny integers."""
    g = torch.Generator().manual_seed(seed)
    s = torch.randn(6, T, generator=g)
    s[1] = torch.round(s[1] * 2) / 2
    s[2] = 0.25
    s[3, ::2] = -0.0
    s[3, 1::3] = 0.0
    s[3, 5::7] = math.inf
    s[3, 3::11] = -math.inf
    s[4, min(T // 3, 40):] = -math.inf
    s[5] = torch.randint(-2, 3, (T,), generator=g).float()
    return s.to(DEV)


@pytest.mark.parametrize("T,Kc,chunk,programs", [(1, 1, 32, None), (37, 1, 32, 3), (300, 7, 64, 5),
                                                 (257, 64, 1024, None), (129, 129, 32, 4), (515, 100, 128, 3),
                                                 (3000, 9, 128, 7)])
def test_full_path_is_the_tie_rule(T, Kc, chunk, programs):
    s = rows(T, T + Kc)
    cand, overflow = select_split(s, Kc, chunk=chunk, num_warps=1, programs=programs)
    assert cand.dtype == torch.int64 and cand.shape == (6, Kc)
    assert torch.equal(cand, tie_rule_top(s, Kc))
    assert not bool(overflow.any())


@pytest.mark.parametrize("T,Kc,chunk,programs,width", [(1000, 5, 64, 6, 16), (1160, 9, 128, 2, 16),
                                                        (700, 5, 32, 40, 16), (2600, 20, 256, 3, 16),
                                                        (1000, 3, 1024, None, 16), (1000, 5, 64, 4, 8)])
def test_threshold_path_is_the_tie_rule(T, Kc, chunk, programs, width):
    """Every row exact, nothing flagged — the flat row and the −inf tail (τ = −inf admits every
    token) included, where the topk path overflows its ``cap`` slots; the topk path's unflagged rows
    agree. ``width`` 8: maxima of another partition than ``block``'s, a threshold only (no blocks
    skipped)."""
    s = rows(T, T)
    bm = block_max(s, width)
    want = tie_rule_top(s, Kc)
    cand, overflow = select_split(s, Kc, bmax=bm, chunk=chunk, num_warps=1, programs=programs)
    assert torch.equal(cand, want) and not bool(overflow.any())
    if width == 16:
        ref, ref_over = select_candidates(s, bm, Kc, 4 * Kc, False, method="topk")
        assert ref_over[2] and not ref_over[0]            # the flat row overflows the topk path's slots
        assert torch.equal(cand[~ref_over], ref[~ref_over])


def test_short_rows_of_a_padded_batch():
    """Rows with fewer than Kc finite block maxima (τ = −inf) are selected in the first short_window
    columns, as the topk path selects them; long rows exactly; sync changes nothing."""
    g = torch.Generator().manual_seed(5)
    T, Kc, W = 1600, 8, 16 * 8
    s = torch.randn(4, T, generator=g)
    s[1, 100:] = -math.inf           # 7 finite blocks < Kc: short
    s[2, 9:] = -math.inf             # a single block
    s[3] = torch.round(s[3])
    s = s.to(DEV)
    bm = block_max(s)
    want = torch.stack([tie_rule_top(s[r:r + 1], Kc, W if r in (1, 2) else None)[0] for r in range(4)])
    ref, ref_over = select_candidates(s, bm, Kc, 4 * Kc, False, short_window=W, method="topk")
    assert ref_over.tolist()[1:3] == [False, False]
    assert torch.equal(ref[~ref_over], want[~ref_over])
    for sync in (False, True):
        cand, overflow = select_candidates(s, bm, Kc, 4 * Kc, sync, short_window=W)
        assert torch.equal(cand, want) and not bool(overflow.any())


FEW = max(5, settings.default.max_examples // 3)


@settings(max_examples=FEW)
@given(st.integers(0, 2**32 - 1), st.integers(1, 1500), st.integers(1, 64), st.sampled_from([1, 2, 3, 7, 50]),
       st.sampled_from([32, 64, 256]), st.sampled_from([0.0, 0.5, 4.0]), st.booleans())
def test_split_select_is_the_tie_rule_property(seed, T, Kc, programs, chunk, grid, threshold):
    """Any row length, Kc, number of programs (slices of whole chunks, a partial last one, more
    programs than chunks) and tie density (scores on a grid of 1/grid; 0: continuous), with or
    without the maxima of the scan's 16-token blocks: the tie rule's top-Kc, nothing flagged."""
    Kc = min(Kc, T)
    g = torch.Generator().manual_seed(seed)
    s = torch.randn(3, T, generator=g) * 3
    if grid:
        s = torch.round(s * grid) / grid
    s[2, torch.randint(0, T + 1, (1,), generator=g).item():] = -math.inf     # a padded row's tail
    s = s.to(DEV)
    bm = block_max(s) if threshold and -(-T // 16) >= Kc else None
    cand, overflow = select_split(s, Kc, bmax=bm, chunk=chunk, num_warps=1, programs=programs)
    assert torch.equal(cand, tie_rule_top(s, Kc)) and not bool(overflow.any())


def test_select_candidates_launches(monkeypatch):
    """The radix path: one zero-fill of the histograms and 8 Triton launches with a threshold (3
    passes over the maxima, 3 over the tokens, count, write), 5 without; no other torch kernel."""
    import vashista_gpu.kernels.select_split as st

    class Count(TorchDispatchMode):
        ops, launches, inside = [], 0, 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            if not Count.inside and func.overloadpacket.__name__ not in ("empty", "empty_strided"):
                Count.ops.append(func.overloadpacket.__name__)
            return func(*args, **(kwargs or {}))

    real = st._select_split_kernel

    class Spy:                              # counts launches; the interpreter's own torch ops are not ours
        def __getitem__(self, grid):
            def launch(*a, **k):
                Count.launches += 1
                Count.inside += 1
                try:
                    return real[grid](*a, **k)
                finally:
                    Count.inside -= 1
            return launch

    monkeypatch.setattr(st, "_select_split_kernel", Spy())
    s = rows(700, 1)
    bm = block_max(s)
    for Kc, launches in ((2, 8), (40, 5)):       # threshold (44 blocks ≥ 4) and full path
        Count.ops, Count.launches = [], 0
        with Count():
            cand, _ = select_candidates(s, bm, Kc, 4 * Kc, sync=True)
        assert torch.equal(cand, tie_rule_top(s, Kc))
        assert Count.ops == ["zeros", "zeros"] and Count.launches == launches   # zeros: histograms, overflow


def test_block_width_is_given_not_inferred():
    """120 tokens make 8 blocks of 16, and ⌈120/8⌉ = 15: the blocks skipped are the scan's 16 tokens
    (or ``block``'s), whatever NB would suggest; a count that does not match is refused."""
    T, Kc = 120, 2
    s = rows(T, 3)
    for width in (None, 8):
        bm = block_max(s, width or 16)
        for sync in (False, True):
            cand, overflow = select_candidates(s, bm, Kc, 4 * Kc, sync, block=width)
            assert torch.equal(cand, tie_rule_top(s, Kc)) and not bool(overflow.any())
    with pytest.raises(VashistaInputError, match="bmax"):
        select_candidates(s, block_max(s, 8), Kc, 4 * Kc, False, block=16)


def test_nan_scores_do_not_crash():
    """NaN never reaches ŝ (finite_rows zeroes bad queries), but must not hang or write out of range:
    NaN is ordered by its bits as the int64 keys order it (equal to the topk path), with or without
    a threshold (NaN maxima: inconsistent, padded with the last index)."""
    g = torch.Generator().manual_seed(9)
    s = torch.randn(3, 900, generator=g)
    s[0, ::5] = math.nan
    s[1] = math.nan
    s[2, 100:200] = -math.nan
    s = s.to(DEV)
    cand, _ = select_split(s, 10, chunk=256, num_warps=1, programs=3)
    assert torch.equal(cand, tie_rule_top(s, 10))
    cand, overflow = select_split(s, 3, bmax=block_max(s), chunk=256, num_warps=1, programs=2)
    assert cand.shape == (3, 3) and bool(((cand >= 0) & (cand < 900)).all()) and not bool(overflow.any())


def test_bad_arguments_are_named():
    s = torch.randn(2, 50, device=DEV)
    bm = block_max(s)
    with pytest.raises(VashistaInputError, match="method"):
        select_candidates(s, bm, 3, 12, False, method="heap")
    with pytest.raises(VashistaInputError, match="Kc"):
        select_candidates(s, bm, 51, 204, False)
    with pytest.raises(VashistaInputError, match="Kc"):
        select_candidates(s, bm, 0, 4, False)
    with pytest.raises(VashistaInputError, match="'s'|s:|float32"):
        select_candidates(s.double(), bm, 3, 12, False, method="radix")
