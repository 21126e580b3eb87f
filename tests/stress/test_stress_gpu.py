"""Soundness stress of the GPU tier (issue 15; docs/ROUNDING.md §4), beyond the per-tier CI profile of
test_stress.py (which runs every registered tier, the torch-backend ``gpu-torch-*`` ones included):

* the Triton tiers under the interpreter on CPU (a few cases: the interpreter is slow; the long profile
  runs them on the device, benchmarks/RESULTS.md "Soundness stress");
* the context-parallel step (``tiers_cp.py``): its torch path runs in every tier's CI profile
  (``cp-torch-*``); the fused per-rank terms under the interpreter on a few cases here;
* every counterexample the first run of the harness found on the GPU tier's code before the fix, kept
  as a regression with what it found.
"""
from __future__ import annotations

import math
import os

import numpy as np
import pytest

from generators import draw
from run import check_case, run
from tiers import TIERS

torch = pytest.importorskip("torch")
import tiers_cp  # noqa: E402
import tiers_gpu_steps  # noqa: E402

LONG = os.environ.get("VASHISTA_STRESS") == "long"


@pytest.mark.parametrize("name", ["fp32", "bf16"])
def test_triton_tiers_no_violation(name):
    """The Triton backend (paged step kernels, Triton sketch scan, the fused paged certified step when
    the cache allows it) on the first seeds of every kind."""
    pytest.importorskip("triton")
    if not torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET") != "1":
        pytest.skip("needs CUDA or TRITON_INTERPRET=1")
    tiers_gpu_steps.register_triton()
    with np.errstate(all="ignore"):
        total = run(f"gpu-triton-{name}", 100_000 if LONG else 8, seed0=2000, log=lambda s: None)
    assert total["violations"] == [], total["violations"][:5]


def test_planned_two_sided_tier_no_violation():
    """The engine's planned certified step with two-sided bounds (the CUDA path's int8 default), which
    sparse_decode never takes, on the first seeds of every kind."""
    pytest.importorskip("triton")
    if not torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET") != "1":
        pytest.skip("needs CUDA or TRITON_INTERPRET=1")
    tiers_gpu_steps.register_triton()
    with np.errstate(all="ignore"):
        total = run("gpu-plan2s-fp32", 100_000 if LONG else 40, seed0=2000, log=lambda s: None)
    assert total["cases"] > 0 and total["violations"] == [], total["violations"][:5]


# (tier, kind, seed, what the code before issue 15's GPU fix returned for it)
REGRESSIONS = [
    ("gpu-torch-fp32", "tiny_scores", 0, "certified error 8.7e-14 < exact 7.9e-9 (no float32 allowance)"),
    ("gpu-torch-fp32", "all_equal", 0, "certified leakage 0.36170208 < exact 0.36170213"),
    ("gpu-torch-fp32", "keys_1000", 2, "certified leakage 3.25e-4 < exact 3.45e-4 (scores ~1e4)"),
    ("gpu-torch-fp32", "gqa", 2, "certified error 1.7e-13 < exact 3.5e-6"),
    ("gpu-torch-fp32", "keys_1000", 3, "certified error 6.7e-11 < exact 6.6e-5"),
    ("gpu-torch-fp32", "partial_pages", 8, "certified error 0.0 < exact 5.7e-8"),
    ("gpu-torch-fp32", "near_ties", 13, "certified error 3.1e-8 < exact 4.5e-7"),
    ("gpu-torch-fp32", "all_equal", 18, "certified error 0.0 < exact 2.4e-8"),
    ("gpu-torch-fp32", "dominant_channel", 5, "certified error 4.1e-14 < exact 1.2e-7"),
    ("gpu-torch-bf16", "tiny_scores", 0, "certified error 8.7e-14 < exact 7.3e-4 (bf16 cast after certifying)"),
    ("gpu-torch-bf16", "keys_1000", 0, "certified leakage 0.679 < exact 0.702"),
    ("gpu-torch-bf16", "hidden_outlier", 1, "certified error 7.9e-4 < exact 2.2e-3"),
    ("gpu-torch-bf16", "gqa", 1, "certified error 7.6e-4 < exact 9.4e-4"),
    # the context-parallel step before the audit of issue 15 (docs/ROUNDING.md, "Issue 15 audit")
    ("cp-torch-fp32", "tiny_scores", 0, "certified error 5.4e-14 < exact 7.9e-9 (float32 output cast not charged)"),
    ("cp-torch-fp32", "huge_scores", 2, "certified error NaN, leakage 0: e^{2 eps} = inf at scores ~1e20, times 0"),
    ("cp-torch-bf16", "tiny_scores", 0, "certified error 5.4e-14 < exact 7.3e-4 (bf16 cast after certifying)"),
    ("cp-torch-bf16", "partial_pages", 0, "certified error 2.7e-4 < exact 2.1e-3 (bf16 cast)"),
    ("cp-torch-bf16", "near_ties", 1, "certified error 5.0e-4 < exact 2.1e-3 (bf16 cast)"),
    ("cp-torch-bf16", "hidden_outlier", 1, "certified error 6.9e-4 < exact 2.2e-3 (bf16 cast)"),
]


@pytest.mark.parametrize("tier, kind, seed, found", REGRESSIONS)
def test_gpu_regression(tier, kind, seed, found):
    with np.errstate(all="ignore"):
        c = check_case(draw(kind, seed), tier)
    assert c["violations"] == [], (found, c["violations"][:3])


def test_cp_fused_terms_no_violation():
    """The context-parallel step's fused per-rank terms (Triton), merged over 1-3 simulated ranks, on
    the first seeds of every kind (the error only; tiers_cp.cp_fused_step)."""
    pytest.importorskip("triton")
    if not torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET") != "1":
        pytest.skip("needs CUDA or TRITON_INTERPRET=1")
    name = tiers_cp.register_fused()
    with np.errstate(all="ignore"):
        total = run(name, 100_000 if LONG else 40, seed0=0, log=lambda s: None)
    assert total["query_heads"] >= 40 and total["violations"] == [], total["violations"][:5]


def test_gpu_tiers_registered():
    assert {f"{p}-{d}" for p in ("gpu-torch", "cp-torch") for d in ("fp32", "bf16", "fp16")} <= set(TIERS)


# the context-parallel fused tier on the H100 (long_gpu.py, ``cp-fused-fp32``, compiled Triton), all
# ``huge_scores`` at scores ~1e8-1e9 (eps ~200-5000): (seed, b, h, what the code before the fix returned)
CP_FUSED_H100 = [
    (4000073, 0, 0, "certified error 6.846 < exact 1.56e14"),
    (6000035, 0, 2, "certified error 10.148 < exact 25.09"),
    (6000072, 0, 1, "certified error 7.165 < exact 1.98e20"),
    # the same H100 run's other violations (benchmarks/results/gpu_session3_h100/stress_gpu.json)
    (8000023, 0, 1, "certified error 6.782 < exact 1.23e5"),
    (8000023, 0, 6, "certified error 8.445 < exact 553.2"),
    (9000155, 0, 3, "certified error 5.862 < exact 19.58"),
    (10000075, 0, 6, "certified error 7.621 < exact 9.84e11"),
    (10000029, 0, 2, "certified error 9.550 < exact 1.15e10"),
    (10000029, 1, 1, "certified error 7.702 < exact 1.63e5"),
]


@pytest.mark.parametrize("seed, b, h, found", CP_FUSED_H100)
def test_cp_fused_regression_rank_output_outside_the_values_hull(seed, b, h, found, monkeypatch):
    """The merged certificate capped the weights' total variation at 2 (w = 2·vmax_c + o_rnd), which
    bounds ‖o_r/l_r − o_C‖ only where a rank's output is a convex combination of its values. On the H100
    a rank's acc/z came out far outside that hull (exact errors up to 2e20 with values of norm ~1-10).
    Why is not identified on the card (the kernel source feeds one exponential to z and acc; a
    recomputed, differently contracted exponent is the hypothesis, an ulp of a float32 score ~1e9
    being 64). The interpreter does not reproduce the cases as such: here every
    rank's output is moved as the H100 moved it — o/l × e^{min(eps/2, 32)}, eps the packed exponent
    bound (2ε + …), an output the kernel's bound admits — and the certificate must still hold on every
    head (docs/ROUNDING.md §6)."""
    pytest.importorskip("triton")
    if not torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET") != "1":
        pytest.skip("needs CUDA or TRITON_INTERPRET=1")
    import vashista_gpu.distributed.fused_terms as ft
    from vashista_gpu.distributed.merge import SCALARS

    shard_state = ft.fused_shard_state

    def as_on_the_h100(plan, q):
        st = shard_state(plan, q).clone()
        eps = st[..., SCALARS.index("eps")]
        st[..., len(SCALARS):] *= torch.exp(torch.clamp(eps / 2, max=32.0))[..., None]
        return st

    monkeypatch.setattr(ft, "fused_shard_state", as_on_the_h100)
    name = tiers_cp.register_fused()
    with np.errstate(all="ignore"):
        c = check_case(draw("huge_scores", seed), name)
    assert c["violations"] == [], (found, c["violations"][:3])


def test_cp_certificate_holds_for_any_rank_output():
    """The merged certificate on hand-made terms (no kernel): one rank whose o/l is 1e14 with values of
    norm ≤ 1 and a huge exponent bound: ‖out − o_C‖ may be 1e14 + 1 for an o_C the terms admit (it read 2 + o_rnd)."""
    from vashista_gpu.distributed import certificate, merge
    from vashista_gpu.distributed.merge import ShardState

    one = torch.ones(1, 1, dtype=torch.float64)
    st = ShardState(m=0 * one, l=one, o=torch.tensor([[[1e14, 0.0]]], dtype=torch.float64), log_zc=0 * one,
                    log_zout=torch.full_like(one, -math.inf), vmax_c=one, vmax_out=0 * one, eps=2500 * one,
                    o_rnd=1e-6 * one, lb_max=0 * one, ub_max=torch.full_like(one, -math.inf))
    r = certificate(merge(st.pack()[None]))
    assert float(r.certified_error) >= 1e14 + 1
    assert float(r.certified_leakage) == 0.0
