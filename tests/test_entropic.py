"""Entropic relaxation (SPEC 1a): solvers, certificates, the fixed point, and the paper's
face-stability and linear face-error properties in the regime where they are proven."""
import math

import numpy as np
import pytest
from scipy.special import logsumexp
from hypothesis import given, settings, strategies as st

from vashista_ref import instances
from vashista_ref.entropic import (duality_gap, entropic_projection, eg_weights, fw_weights,
                                   primal_objective)
from proofs_checks.common import face_geometry
from strategies import known_face_instances, seeds


def _diameter(K):
    d = K[:, None, :] - K[None, :, :]
    return float(np.sqrt(np.max(np.sum(d * d, axis=-1))))


@given(seeds, st.sampled_from([1e-4, 1e-3, 1e-2, 1e-1, 1.0, 10.0, 1e2]))
def test_newton_reaches_the_fixed_point_for_every_eps(seed, eps):
    inst = instances.draw("generic", seed, M=25, D=4)
    sol = entropic_projection(inst.q, inst.K, eps)
    assert sol.converged and np.all(np.isfinite(sol.alpha))
    assert sol.alpha.sum() == pytest.approx(1.0, abs=1e-12)
    # α_ε ∝ exp(⟨k_j, q − y_ε⟩/ε): the fixed point, checked in the log domain
    z = inst.K @ (inst.q - sol.y) / eps
    fixed = np.exp(z - z.max())
    fixed /= fixed.sum()
    assert np.abs(fixed - sol.alpha).sum() <= max(1e-6, 3 * sol.alpha_error_bound_l1)


@given(seeds, st.sampled_from([1e-2, 0.1, 1.0]))
def test_duality_gap_certifies_suboptimality_and_weight_error(seed, eps):
    inst = instances.draw("generic", seed, M=15, D=3)
    ref = entropic_projection(inst.q, inst.K, eps, tol=1e-13, raise_on_failure=False)
    p_star = ref.objective
    for alpha, gap in (eg_weights(inst.q, inst.K, eps, iters=30), fw_weights(inst.q, inst.K, eps, iters=30)):
        la = np.log(np.maximum(alpha, 1e-300))
        p = primal_objective(la, inst.q, inst.K, eps)
        assert p - p_star <= gap + 1e-9 * max(1.0, abs(p_star))
    eg = entropic_projection(inst.q, inst.K, eps, method="eg", max_iter=40, raise_on_failure=False)
    assert np.abs(eg.alpha - ref.alpha).sum() <= eg.alpha_error_bound_l1 + 1e-7


@settings(max_examples=10)
@given(seeds, st.sampled_from([0.1, 1.0]))
def test_three_solvers_agree(seed, eps):
    inst = instances.draw("generic", seed, M=12, D=3)
    n = entropic_projection(inst.q, inst.K, eps)
    e = entropic_projection(inst.q, inst.K, eps, method="eg", tol=1e-9, max_iter=200_000)
    f = entropic_projection(inst.q, inst.K, eps, method="fw", tol=1e-6, max_iter=200_000,
                            raise_on_failure=False)
    assert np.abs(e.alpha - n.alpha).sum() <= e.alpha_error_bound_l1 + 1e-9
    assert np.abs(f.alpha - n.alpha).sum() <= f.alpha_error_bound_l1 + 1e-9
    assert f.duality_gap < 1e-3


def test_no_overflow_at_extreme_eps_and_scale():
    inst = instances.draw("generic", 0, M=40, D=6)
    for eps in (1e-4, 1e2):
        for s in (1e-2, 1.0, 10.0):
            sol = entropic_projection(inst.q * s, inst.K * s, eps * s * s if eps < 1 else eps)
            assert sol.converged and np.all(np.isfinite(sol.log_alpha))


def _regime_eps(inst, eps_grid):
    """ε where the proof's hypothesis D_K‖y_ε − y*‖ ≤ Δ/2 holds (checked, not assumed)."""
    DK = _diameter(inst.K)
    out = []
    for eps in eps_grid:
        sol = entropic_projection(inst.q, inst.K, eps)
        if DK * np.linalg.norm(sol.y - inst.y_star) <= inst.gap / 2:
            out.append((eps, sol))
    return out


@settings(max_examples=15)
@given(known_face_instances(max_M=20, max_D=4, gaps=(0.1, 0.5, 2.0)))
def test_face_stability_off_face_mass_bound_in_its_regime(inst):
    """Corollary 1 with c = 2: off-face mass ≤ (M − |I|) exp(−Δ/(2ε)) whenever D_K‖y_ε − y*‖ ≤ Δ/2."""
    M, I = inst.K.shape[0], inst.face
    off = np.setdiff1d(np.arange(M), I)
    grid = [inst.gap * f for f in (1.0, 0.3, 0.1, 0.03, 0.01, 0.003, 0.001)]
    checked = _regime_eps(inst, grid)
    assert checked, "the regime must contain small enough ε"
    for eps, sol in checked:
        bound_log = math.log(M - len(I)) - inst.gap / (2 * eps)
        assert logsumexp(sol.log_alpha[off]) <= bound_log + 1e-9
        assert np.max(sol.log_alpha[off]) <= -inst.gap / (2 * eps) + 1e-9   # per token
    # support above a threshold equals I as ε → 0
    eps_min, sol = checked[-1]
    assert np.flatnonzero(sol.alpha > 1e-3 * sol.alpha.max()).tolist() == I.tolist() or \
        np.all(sol.alpha[off] < 1e-3)


@settings(max_examples=15)
@given(known_face_instances(max_M=20, max_D=4, gaps=(0.5, 2.0)))
def test_active_face_error_is_linear_in_eps(inst):
    """‖y_ε − y*‖/ε stays bounded as ε → 0 (Theorem 1's C_lin term) on instances with Δ > 0.

    Bounded by what, checked rather than eyeballed: the face's first-order constant
    C_geom = ‖P log α*‖/√λ_min(tangent Gram) (derived in proofs_checks/claim3_theorem1.py), plus
    Theorem 1's leakage term and the solver's certified error. The ratio need not be monotone in ε —
    it approaches its limit from below on many faces."""
    I = inst.face
    C_geom = face_geometry(inst.K[I], inst.alpha_star[I])[0]
    DK = _diameter(inst.K)
    kmax = float(np.sqrt(np.max(np.sum(inst.K ** 2, axis=1))))
    for f in (1e-2, 3e-3, 1e-3):
        eps = inst.gap * f
        sol = entropic_projection(inst.q, inst.K, eps)
        leak = DK * (len(inst.K) - len(I)) * math.exp(-inst.gap / (2 * eps))
        numerical = kmax * sol.alpha_error_bound_l1 + 1e-13 * max(1.0, kmax)
        assert np.linalg.norm(sol.y - inst.y_star) <= C_geom * eps + leak + numerical


def test_duality_gap_is_nonnegative_and_zero_at_optimum():
    inst = instances.draw("generic", 4, M=10, D=3)
    sol = entropic_projection(inst.q, inst.K, 0.3, tol=1e-14, raise_on_failure=False)
    assert duality_gap(sol.log_alpha, inst.q, inst.K, 0.3)[2] < 1e-12
    uniform = np.full(10, -math.log(10))
    assert duality_gap(uniform, inst.q, inst.K, 0.3)[2] > 1e-6


def test_fixed_iteration_entry_points():
    inst = instances.draw("generic", 1, M=8, D=3)
    for fn in (eg_weights, fw_weights):
        a, cert = fn(inst.q, inst.K, 0.5, iters=5)
        assert a.shape == (8,) and np.all(a >= 0) and a.sum() == pytest.approx(1.0)
        assert cert >= 0
        a2, cert2 = fn(inst.q, inst.K, 0.5, iters=200)
        assert cert2 <= cert


def test_log_weights_of_tiny_masses_are_exact():
    """Regression: a duality gap within tolerance left log α_1 ≈ −38.6 instead of −100 at
    ε = Δ/100 (tiny masses barely move the objective); Newton is now polished until the fixed
    point holds in the log domain, which the face-stability bounds need."""
    inst = instances.lateral_pull()
    eps = inst.gap / 100
    sol = entropic_projection(inst.q, inst.K, eps)
    z = inst.K @ (inst.q - sol.y) / eps
    fixed = z - (z.max() + math.log(np.exp(z - z.max()).sum()))
    assert np.max(np.abs(sol.log_alpha - fixed)) <= 1e-8
    assert sol.log_alpha[1] == pytest.approx(-inst.gap / eps, abs=1e-6)   # α_0 ≈ 1, y_ε ≈ y*


def test_corollary_1_with_c_1_fails_inside_the_c_2_regime():
    """Finding (for proofs_checks): the paper leaves c unpublished. On ``lateral_pull`` at ε = Δ/10
    the proof's hypothesis D_K‖y_ε − y*‖ ≤ Δ/2 holds and the c = 2 bound holds, but the per-token
    bound with c = 1 is violated: α_ε,1 ≈ 2.08·exp(−Δ/ε). So c = 1 is false; c = 2 is what holds."""
    inst = instances.lateral_pull()
    eps = inst.gap / 10
    sol = entropic_projection(inst.q, inst.K, eps)
    assert _diameter(inst.K) * np.linalg.norm(sol.y - inst.y_star) <= inst.gap / 2   # in regime
    assert sol.log_alpha[1] <= -inst.gap / (2 * eps)                              # c = 2 holds
    assert sol.log_alpha[1] > -inst.gap / eps + 0.5                               # c = 1 fails


def test_corollary_1_with_c_2_fails_per_token_outside_its_regime():
    """Finding (for proofs_checks): outside the regime D_K‖y_ε − y*‖ ≤ Δ/2 the per-token bound
    α_ε,j ≤ exp(−Δ/(2ε)) of Corollary 1 (c = 2) can fail: here at ε = 0.3Δ the regime ratio is
    ≈ 4.5 and α_ε,1 ≈ 1.04·exp(−Δ/(2ε)). The summed off-face bound (M − |I|)·exp(−Δ/(2ε)) still
    holds (its factor M − |I| = 112 absorbs it). Inside the regime (ε = 0.1Δ) c = 2 holds."""
    inst = instances.lateral_pull(distance=6.385828802382953, near_depth=0.42825960119970996,
                                  far_depth=0.4323294879278927, width=13.915880525612785,
                                  copies=111)
    DK, M = _diameter(inst.K), inst.K.shape[0]
    out = entropic_projection(inst.q, inst.K, 0.3 * inst.gap)
    assert DK * np.linalg.norm(out.y - inst.y_star) > inst.gap / 2                # outside
    assert out.log_alpha[1] > -inst.gap / (2 * out.eps) + 0.03                    # per token fails
    assert logsumexp(out.log_alpha[1:]) <= math.log(M - 1) - inst.gap / (2 * out.eps)  # sum holds
    inside = entropic_projection(inst.q, inst.K, 0.1 * inst.gap)
    assert DK * np.linalg.norm(inside.y - inst.y_star) <= inst.gap / 2
    assert inside.log_alpha[1] <= -inst.gap / (2 * inside.eps)
