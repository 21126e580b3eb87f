"""Softmax model (SPEC 1b): exact leakage equals the formula, the bound holds, extreme ε is stable."""
import math

import numpy as np
import pytest
from hypothesis import given, strategies as st
from hypothesis.extra.numpy import arrays

from vashista_ref.softmax_model import softmax_certificate, softmax_certificate_qk

score_arrays = arrays(np.float64, st.integers(1, 40),
                      elements=st.floats(-30, 30, allow_nan=False, allow_infinity=False))
eps_values = st.sampled_from([1e-6, 1e-3, 0.1, 1.0, 10.0, 1e4])


@given(score_arrays, eps_values)
def test_leakage_equals_the_formula_and_the_bound_holds(s, eps):
    c = softmax_certificate(s, eps)
    w = np.exp((s - s.max()) / eps)
    w /= w.sum()
    assert np.allclose(c.weights, w, atol=1e-12)
    off = np.setdiff1d(np.arange(s.size), c.face)
    assert c.face.tolist() == np.flatnonzero(s == s.max()).tolist()
    if off.size == 0:
        assert c.gap is None and c.leakage == 0.0
        return
    mu = s.max() - s[off]
    assert c.gap == pytest.approx(mu.min())
    formula = np.exp(-mu / eps).sum() / (c.face.size + np.exp(-mu / eps).sum())
    assert c.leakage == pytest.approx(formula, rel=1e-9, abs=1e-300)
    assert c.leakage == pytest.approx(w[off].sum(), rel=1e-9, abs=1e-15)
    bound = off.size * math.exp(-c.gap / eps) / c.face.size
    assert c.leakage <= bound * (1 + 1e-12) + 1e-300
    assert c.leakage_bound == pytest.approx(bound, rel=1e-9, abs=1e-300)


@given(score_arrays, st.floats(0.0, 2.0))
def test_face_tolerance_keeps_leakage_exact(s, tol):
    c = softmax_certificate(s, 0.5, face_tol=tol)
    off = np.setdiff1d(np.arange(s.size), c.face)
    assert c.leakage == pytest.approx(c.weights[off].sum(), rel=1e-9, abs=1e-15)
    if c.gap is not None:
        assert c.leakage <= c.leakage_bound * (1 + 1e-12)


def test_extreme_eps():
    s = np.array([3.0, 1.0, 1.0, 0.0])
    tiny = softmax_certificate(s, 1e-300)
    assert tiny.leakage == 0.0 and tiny.leakage_bound == 0.0 and math.isfinite(tiny.log_leakage_bound)
    huge = softmax_certificate(s, 1e300)
    assert huge.leakage == pytest.approx(0.75) and huge.leakage_bound == pytest.approx(3.0)


def test_scores_from_q_and_K_use_the_default_scale():
    rng = np.random.default_rng(0)
    K, q = rng.normal(size=(9, 16)), rng.normal(size=16)
    a = softmax_certificate_qk(q, K)
    b = softmax_certificate(K @ q / 4.0)
    assert np.allclose(a.weights, b.weights) and a.gap == pytest.approx(b.gap)
