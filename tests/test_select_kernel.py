"""``kernels/select_topk.py`` (``select_candidates(method="radix")``) against the torch.topk path
(``method="topk"``) and the tie rule itself: the same indices, bit for bit, and the same overflow
mask (a flagged row: the top-Kc of its first cap tokens ≥ τ; unflagged with sync / flag=False: the
exact top-Kc) — on random rows, heavy ties (quantized scores), all-equal rows, −0.0/+0.0, ±inf, −inf tails
(a paged batch), Kc = 1 and Kc = T, odd T, rows shorter than Kc blocks; several chunks per row
(a small ``chunk``) and the default one; 5- to 8-bit radix digits; the block-list (GATHER) and
whole-row threshold modes.
TRITON_INTERPRET=1 on CPU (tests/conftest.py); compiled on a GPU."""
from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.utils._python_dispatch import TorchDispatchMode

from vashista_core.errors import VashistaInputError
from vashista_gpu.kernels.select_topk import select_topk
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


@pytest.mark.parametrize("T,Kc,chunk,bits", [(1, 1, 64, 8), (37, 1, 64, 5), (300, 7, 64, 8), (257, 64, 4096, 8),
                                             (129, 129, 64, 6), (515, 100, 128, 7)])
def test_full_path_is_the_tie_rule(T, Kc, chunk, bits):
    s = rows(T, T + Kc)
    cand, overflow = select_topk(s, Kc, chunk=chunk, num_warps=1, radix_bits=bits)
    assert cand.dtype == torch.int64 and cand.shape == (6, Kc)
    assert torch.equal(cand, tie_rule_top(s, Kc))
    assert not bool(overflow.any())


def first_cap_top(s, bm, Kc, cap):
    """An overflowed row's candidates: the tie rule's top-Kc of its first ``cap`` tokens ≥ τ."""
    tau = torch.topk(bm, Kc, dim=-1).values.amin(-1)
    got = []
    for r in range(s.shape[0]):
        idx = (s[r] >= tau[r]).nonzero()[:, 0][:cap]
        got.append(top_indices(tie_keys(s[r, idx][None], idx[None]), Kc)[0])
    return torch.stack(got)


@pytest.mark.parametrize("T,Kc,chunk,cap,bits", [(1000, 5, 256, 20, 8), (1160, 9, 512, 36, 6), (700, 5, 128, 20, 8),
                                                 (2600, 20, 1024, 80, 5), (1000, 3, 4096, 12, 8)])
def test_threshold_path_equals_topk_path(T, Kc, chunk, cap, bits):
    """The topk path's overflow mask; the tie rule on the other rows; the top-Kc of the first cap
    tokens ≥ τ on the flagged ones — or, with flag=False, the tie rule on every row, nothing
    flagged. Chunk 128 lists no blocks (the whole row is the source)."""
    s = rows(T, T)
    bm = block_max(s)
    ref, ref_over = select_candidates(s, bm, Kc, cap, False, method="topk")
    cand, overflow = select_topk(s, Kc, bmax=bm, cap=cap, chunk=chunk, num_warps=1, radix_bits=bits)
    assert torch.equal(overflow, ref_over)
    assert overflow[2] and not overflow[0]            # the flat row; a random row
    assert bool(overflow[4]) == (Kc > 3)              # < Kc finite maxima: τ = −inf admits all
    assert torch.equal(cand[~overflow], tie_rule_top(s, Kc)[~overflow])
    assert torch.equal(cand[~overflow], ref[~overflow])
    assert torch.equal(cand[overflow], first_cap_top(s, bm, Kc, cap)[overflow])
    cand, overflow = select_topk(s, Kc, bmax=bm, cap=cap, flag=False, chunk=chunk, num_warps=1, radix_bits=bits)
    assert torch.equal(cand, tie_rule_top(s, Kc)) and not bool(overflow.any())


FEW = max(5, settings.default.max_examples // 3)


@settings(max_examples=FEW)
@given(st.integers(0, 2**32 - 1), st.integers(1, 1500), st.integers(1, 64), st.sampled_from([64, 256, 4096]),
       st.integers(5, 8), st.sampled_from([0.0, 0.5, 4.0]), st.booleans())
def test_radix_select_is_the_tie_rule_property(seed, T, Kc, chunk, bits, grid, threshold):
    """Any row length, Kc, chunk (several per row or one), digit width and tie density (scores on a
    grid of 1/grid; 0: continuous), a padded row's −inf tail, with the maxima of the scan's 16-token
    blocks (unflagged: exact on every row) or without: the tie rule's top-Kc, nothing flagged."""
    Kc = min(Kc, T)
    g = torch.Generator().manual_seed(seed)
    s = torch.randn(3, T, generator=g) * 3
    if grid:
        s = torch.round(s * grid) / grid
    s[2, int(torch.randint(0, T + 1, (1,), generator=g)):] = -math.inf
    s = s.to(DEV)
    kw = dict(bmax=block_max(s), cap=4 * Kc, flag=False) if threshold and -(-T // 16) >= Kc else {}
    cand, overflow = select_topk(s, Kc, chunk=chunk, num_warps=1, radix_bits=bits, **kw)
    assert torch.equal(cand, tie_rule_top(s, Kc)) and not bool(overflow.any())


def test_short_rows_of_a_padded_batch():
    """Rows with fewer than Kc finite block maxima (τ = −inf) are selected in the first short_window
    columns and never flagged; long rows as usual. sync=True: nothing flagged, same candidates."""
    g = torch.Generator().manual_seed(5)
    T, Kc, W = 1600, 8, 16 * 8
    s = torch.randn(4, T, generator=g)
    s[1, 100:] = -math.inf           # 7 finite blocks < Kc: short
    s[2, 9:] = -math.inf             # a single block
    s[3] = torch.round(s[3])
    s = s.to(DEV)
    bm = block_max(s)
    ref, ref_over = select_candidates(s, bm, Kc, 4 * Kc, False, short_window=W, method="topk")
    cand, overflow = select_candidates(s, bm, Kc, 4 * Kc, False, short_window=W)
    assert torch.equal(overflow, ref_over) and ref_over.tolist()[1:3] == [False, False]
    assert torch.equal(cand[~overflow], tie_rule_top(s, Kc)[~overflow])
    assert torch.equal(cand[~overflow], ref[~overflow])
    cand, overflow = select_candidates(s, bm, Kc, 4 * Kc, True, short_window=W)
    assert torch.equal(cand, tie_rule_top(s, Kc)) and not bool(overflow.any())


def test_select_candidates_is_one_launch(monkeypatch):
    """The radix path is one Triton launch and no torch kernel (allocations only), on both paths."""
    import vashista_gpu.kernels.select_topk as st

    class Count(TorchDispatchMode):
        ops, launches, inside = [], 0, 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            if not Count.inside and func.overloadpacket.__name__ not in ("empty", "empty_strided"):
                Count.ops.append(func.overloadpacket.__name__)
            return func(*args, **(kwargs or {}))

    real = st._select_topk_kernel

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

    monkeypatch.setattr(st, "_select_topk_kernel", Spy())
    s = rows(700, 1)
    bm = block_max(s)
    for Kc in (2, 20):                     # threshold (44 blocks ≥ 16) and full path
        with Count():
            cand, _ = select_candidates(s, bm, Kc, 4 * Kc, sync=True)
        assert torch.equal(cand, tie_rule_top(s, Kc))
    assert Count.ops == [] and Count.launches == 2


def test_block_width_is_given_not_inferred():
    """120 tokens make 8 blocks of 16, and ⌈120/8⌉ = 15: the blocks listed are the scan's 16 tokens
    (or ``block``'s), whatever NB would suggest; a count that does not match is refused."""
    T, Kc = 120, 2
    s = rows(T, 3)
    for width in (None, 8):
        bm = block_max(s, width or 16)
        for sync in (False, True):
            cand, overflow = select_candidates(s, bm, Kc, 4 * Kc, sync, block=width)
            ok = ~overflow
            assert torch.equal(cand[ok], tie_rule_top(s, Kc)[ok])
        assert not bool(overflow.any())                   # sync: exact on every row
    with pytest.raises(VashistaInputError, match="bmax"):
        select_candidates(s, block_max(s, 8), Kc, 4 * Kc, False, block=16)


def test_nan_scores_do_not_crash():
    """NaN never reaches ŝ (finite_rows zeroes bad queries), but must not hang or write out of range:
    the full path orders NaN by its bits as the int64 keys do (equal to the topk path)."""
    g = torch.Generator().manual_seed(9)
    s = torch.randn(3, 900, generator=g)
    s[0, ::5] = math.nan
    s[1] = math.nan
    s[2, 100:200] = -math.nan
    s = s.to(DEV)
    cand, _ = select_topk(s, 10, chunk=256, num_warps=1)
    assert torch.equal(cand, tie_rule_top(s, 10))
    cand, overflow = select_topk(s, 3, bmax=block_max(s), cap=12, chunk=256, num_warps=1)
    assert cand.shape == (3, 3) and bool(((cand >= 0) & (cand < 900)).all())


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


@settings(max_examples=FEW)
@given(st.integers(0, 2**32 - 1), st.integers(1, 400), st.integers(1, 400), st.sampled_from([0, 3, 40]),
       st.sampled_from([torch.float64, torch.float32]), st.booleans())
def test_top_ascending_is_the_stable_sort(seed, n, k, levels, dtype, specials):
    """``selection.top_ascending`` (the torch path's candidate selection over float64 ŝ): the same
    indices as the stable descending sort's first k, ascending — on continuous rows, heavy ties
    (``levels`` distinct values), −0.0/+0.0, ±inf, and a row with NaN (which takes the sort)."""
    from vashista_gpu.selection import top_ascending
    g = torch.Generator().manual_seed(seed)
    k = min(k, n)
    s = torch.randn(3, n, generator=g, dtype=torch.float64)
    if levels:
        s = torch.round(s * levels / 3)
    if specials:
        idx = torch.randint(0, n, (3, max(1, n // 5)), generator=g)
        vals = torch.tensor([0.0, -0.0, math.inf, -math.inf], dtype=torch.float64)
        s.scatter_(1, idx, vals[torch.randint(0, 4, idx.shape, generator=g)])
    s = s.to(dtype)
    want = torch.sort(torch.sort(s, dim=-1, descending=True, stable=True).indices[:, :k], dim=-1).values
    assert torch.equal(top_ascending(s, k), want)
    if specials:
        s[1, n // 2] = math.nan
        want = torch.sort(torch.sort(s, dim=-1, descending=True, stable=True).indices[:, :k], dim=-1).values
        assert torch.equal(top_ascending(s, k), want)
