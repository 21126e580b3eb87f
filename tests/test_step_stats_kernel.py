"""The one-launch statistics (``kernels/step_stats.py``) against ``StepStats.add``'s torch code:
counts and maxima bit for bit, the float64 error sum within a few ulps (another summation order).
TRITON_INTERPRET=1 on CPU (tests/conftest.py)."""
from __future__ import annotations

import math

import pytest
import torch

from vashista_gpu.engine.step import StepStats

DEV = "cuda" if torch.cuda.is_available() else "cpu"     # compiled on a GPU, interpreted on CPU


def _pair():
    ref, fus = StepStats(3, DEV), StepStats(3, DEV)
    ref.fused, fus.fused = False, True
    fus.t.fill_(0.0)
    return ref, fus


@pytest.mark.parametrize("B,Hq,with_fell,with_ovf,tol", [(1, 1, False, False, math.inf), (3, 5, True, False, 0.1),
                                                         (2, 7, True, True, 1e-3), (5, 300, False, True, 0.3)])
def test_step_stats_kernel_matches_torch(B, Hq, with_fell, with_ovf, tol):
    g = torch.Generator().manual_seed(B * 100 + Hq)
    ref, fus = _pair()
    for layer, step in ((1, 0), (1, 1), (2, 0)):       # accumulates across steps into the same row
        err = (torch.rand(B, Hq, generator=g, dtype=torch.float32) * 0.5).to(DEV)
        leak = torch.rand(B, Hq, generator=g, dtype=torch.float32).to(DEV)
        err.view(-1)[:: 4] = float("nan")
        err.view(-1)[1:: 9] = float("inf")
        leak.view(-1)[2:: 7] = float("nan")
        fell = (torch.rand(B, Hq, generator=g) < 0.3).to(DEV) if with_fell else None
        ovf = (torch.rand(B, Hq, generator=g) < 0.2).to(DEV) if with_ovf else None
        for st in (ref, fus):
            st.add(layer, err, leak, tol, fell=fell, overflow=ovf)
    exact = [0, 1, 2, 3, 5, 6, 7]
    assert torch.equal(ref.t[:, exact], fus.t[:, exact])
    torch.testing.assert_close(fus.t[:, 4], ref.t[:, 4], rtol=1e-14, atol=0)
    assert ref.summary()["uncertified"] == fus.summary()["uncertified"] > 0


def test_step_stats_kernel_all_nonfinite_and_block_loop():
    """Every certificate NaN (the maxima stay 0 from the finite-as-0 rule, the leakage NaN counts as 1)
    and R larger than one block (the kernel's loop)."""
    from vashista_gpu.kernels.step_stats import step_stats

    ref, fus = _pair()
    err = torch.full((4, 40), float("nan"), device=DEV)
    leak = torch.full((4, 40), float("nan"), device=DEV)
    ref.add(0, err, leak, 0.5)
    step_stats(fus.t[0], err, leak, torch.tensor([0.5], dtype=torch.float64, device=DEV), block=32)
    assert torch.equal(ref.t, fus.t)
    assert fus.t[0].tolist() == [160.0, 160.0, 0.0, 0.0, 0.0, 0.0, 1.0, 160.0]
