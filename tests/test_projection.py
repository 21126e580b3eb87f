"""Exact hull projection: two independent solvers, KKT certificates, constructed faces and gaps,
degenerate families and invariances (SPEC 1a)."""
import numpy as np
import pytest
from hypothesis import given, strategies as st

from vashista_ref import VashistaInputError, instances
from vashista_ref.projection import kkt_certificate, project_onto_hull, project_onto_hull_batch
from strategies import family_instances, known_face_instances, scales, seeds

KKT_TOL = 1e-7  # relative to the instance's squared scale


def _scale2(inst):
    return max(1.0, float(np.max(np.sum(inst.K ** 2, axis=1))), float(inst.q @ inst.q))


@given(known_face_instances())
def test_solvers_agree_and_recover_the_constructed_face_and_gap(inst):
    for solver in ("cvxpy", "wolfe"):
        p = project_onto_hull(inst.q, inst.K, solver=solver)
        assert np.linalg.norm(p.y - inst.y_star) <= 1e-8 * max(1.0, np.linalg.norm(inst.y_star))
        assert p.kkt.max <= KKT_TOL * _scale2(inst)
        assert p.active_set.tolist() == inst.face.tolist()
        assert p.face.tolist() == inst.face.tolist()
        assert p.strictly_complementary
        assert p.gap == pytest.approx(inst.gap, rel=1e-6, abs=1e-9)


@given(family_instances())
def test_solvers_agree_on_degenerate_families(inst):
    a = project_onto_hull(inst.q, inst.K, solver="cvxpy")
    b = project_onto_hull(inst.q, inst.K, solver="wolfe")
    scale = max(1.0, float(np.max(np.abs(inst.K))), float(np.max(np.abs(inst.q))))
    assert np.linalg.norm(a.y - b.y) <= 1e-6 * scale
    for p in (a, b):
        assert p.kkt.primal_feasibility <= 1e-9
        assert p.kkt.dual_feasibility <= KKT_TOL * _scale2(inst)
        if inst.y_star is not None:
            assert np.linalg.norm(p.y - inst.y_star) <= 1e-6 * scale


@given(st.sampled_from(["inside_hull", "on_vertex"]), seeds)
def test_query_in_the_hull_has_no_certificate(family, seed):
    inst = instances.draw(family, seed, M=12, D=3)
    for solver in ("cvxpy", "wolfe"):
        p = project_onto_hull(inst.q, inst.K, solver=solver)
        assert p.gap is None and p.inside_hull
        assert "no gap" in p.gap_reason


def test_duplicates_wolfe_returns_a_basic_solution_cvxpy_spreads():
    inst = instances.draw("duplicates", 3, M=10, D=3, face_size=2, copies=2)
    w = project_onto_hull(inst.q, inst.K, solver="wolfe")
    c = project_onto_hull(inst.q, inst.K, solver="cvxpy")
    dup = [0, 10, 11]                              # key 0 and its two copies
    assert np.count_nonzero(w.alpha[dup] > 1e-12) == 1 and w.alpha[0] > 0   # lowest index wins
    assert np.all(c.alpha[dup] > 1e-4)             # interior point splits the weight
    assert np.allclose(c.alpha[dup], c.alpha[0], rtol=1e-4)
    # the face holds all copies for both; gap over keys off the face is the constructed one
    for p in (w, c):
        assert set(p.face.tolist()) == set(inst.face.tolist())
        off = np.setdiff1d(np.arange(len(p.mu)), p.face)
        assert p.mu[off].min() == pytest.approx(inst.gap, rel=1e-6)
    # Wolfe leaves copies on the face but off I: strict complementarity fails, Δ = 0 (documented)
    assert not w.strictly_complementary and abs(w.gap) < 1e-9


@given(known_face_instances(max_M=15), seeds)
def test_permuting_keys_permutes_alpha(inst, seed):
    perm = np.random.default_rng(seed).permutation(inst.K.shape[0])
    p = project_onto_hull(inst.q, inst.K[perm], solver="wolfe")
    assert np.allclose(p.alpha, inst.alpha_star[perm], atol=1e-9)
    assert p.active_set.tolist() == inst.permuted(perm).face.tolist()


@given(known_face_instances(max_M=15), st.lists(st.floats(-50, 50), min_size=6, max_size=6))
def test_translation_moves_y_and_keeps_the_certificate(inst, shift):
    c = np.asarray(shift[: inst.K.shape[1]])
    p = project_onto_hull(inst.q + c, inst.K + c, solver="wolfe")
    assert np.allclose(p.y, inst.y_star + c, atol=1e-8 * (1 + np.abs(c).max()))
    assert p.gap == pytest.approx(inst.gap, rel=1e-6)


@given(known_face_instances(max_M=15), scales)
def test_scaling_scales_y_and_the_gap_quadratically(inst, s):
    scaled = inst.scaled(s)
    for solver in ("cvxpy", "wolfe"):
        p = project_onto_hull(scaled.q, scaled.K, solver=solver)
        assert np.allclose(p.y, scaled.y_star, rtol=0, atol=1e-7 * s * (1 + np.abs(inst.y_star).max()))
        assert p.gap == pytest.approx(scaled.gap, rel=1e-5)


def test_kkt_certificate_flags_a_wrong_alpha():
    inst = instances.draw("known_face", 0, M=10, D=3, face_size=2, gap=0.5)
    wrong = np.full(10, 0.1)
    cert = kkt_certificate(inst.q, inst.K, wrong)
    assert cert.kkt.dual_feasibility > 1e-3 or cert.kkt.complementary_slackness > 1e-3
    good = kkt_certificate(inst.q, inst.K, inst.alpha_star)
    assert good.kkt.max < 1e-12 * _scale2(inst) * 100


def test_multipliers_follow_the_kkt_formulas():
    inst = instances.draw("known_face", 5, M=12, D=4, face_size=3, gap=0.2)
    p = project_onto_hull(inst.q, inst.K, solver="wolfe")
    r = inst.q - p.y
    assert p.lam == pytest.approx(-float(r @ p.y))
    assert np.allclose(p.mu, np.max(inst.K @ r) - inst.K @ r, atol=1e-10)


def test_batch_equals_loop():
    inst = instances.draw("generic", 2, M=15, D=3)
    Q = np.stack([inst.q, inst.q * 0.5, inst.q * 2])
    batch = project_onto_hull_batch(Q, inst.K, solver="wolfe")
    for q, p in zip(Q, batch):
        assert np.allclose(p.y, project_onto_hull(q, inst.K, solver="wolfe").y)


@pytest.mark.parametrize("solver", ["cvxpy", "wolfe"])
@pytest.mark.parametrize("s", [1e-100, 1e-30, 1e-4, 1e4, 1e30, 1e100])
def test_scale_and_translation_invariant(solver, s):
    """Issue 15: q and K scaled by 1e-300 read "in the hull", and Wolfe at 1e4 / 1e30 returned a wrong
    projection. The problem is equivariant: scaled and shifted inputs give the same face and active
    set, y and r scaled, Δ scaled by s²."""
    from vashista_ref.instances import draw
    inst = draw("known_face", 0, M=32, D=8)
    base = project_onto_hull(inst.q, inst.K, solver=solver)
    shift = 1000.0 * s
    p = project_onto_hull(inst.q * s + shift, inst.K * s + shift, solver=solver)
    np.testing.assert_array_equal(p.active_set, base.active_set)
    np.testing.assert_array_equal(p.face, base.face)
    assert p.gap == pytest.approx(base.gap * s * s, rel=1e-6)
    np.testing.assert_allclose((p.y - shift) / s, base.y, atol=1e-6)


@pytest.mark.parametrize("solver", ["cvxpy", "wolfe"])
def test_scale_beyond_float64_squares_is_refused(solver):
    """At 1e-300 the multipliers (∝ s²) underflow: refused with the reason, not "in the hull"."""
    from vashista_ref.instances import draw
    inst = draw("known_face", 0, M=32, D=8)
    with pytest.raises(VashistaInputError, match="scale-invariant") as err:
        project_onto_hull(inst.q * 1e-300, inst.K * 1e-300, solver=solver)
    assert err.value.argument == "q"
