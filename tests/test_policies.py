"""Policies: fallback outputs equal dense exactly, the right queries fall back, widening follows the
documented schedule, and cost accounting adds up every attempt and the fallback."""
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from decode_strategies import decode_cases
from vashista_ref.dense import dense_decode
from vashista_core.errors import VashistaInputError
from vashista_core.policies import Capped, DenseFallback, ReportOnly, make_policy
from vashista_ref.sparse_decode import COST_FIELDS, sparse_decode
from vashista_ref.synthetic import make_case


@given(decode_cases(), st.sampled_from([0.0, 1e-3, 0.1, 1.0, 10.0]))
def test_dense_fallback_exactly_where_certificate_exceeds_tol(d, tol):
    case = d.case
    base = sparse_decode(case.q, case.cache, case.seq_ids, d.P, d.Kc, **d.kwargs())
    res = sparse_decode(case.q, case.cache, case.seq_ids, d.P, d.Kc, policy=DenseFallback(tol), **d.kwargs())
    dense = dense_decode(case.q, case.cache, case.seq_ids)
    expect = base.certified_error > tol
    assert np.array_equal(res.fell_back, expect)
    assert np.array_equal(res.out[expect], dense[expect])              # bit-identical to the baseline
    assert np.array_equal(res.out[~expect], base.out[~expect])
    assert np.array_equal(res.certified_error, base.certified_error)   # the sparse attempt's certificate
    lengths = np.array([case.cache.length(s) for s in case.seq_ids])[:, None]
    n_pages = np.array([case.cache.n_pages(s) for s in case.seq_ids])[:, None]
    assert np.array_equal(res.tokens_scored, base.tokens_scored + expect * lengths)
    assert np.array_equal(res.values_read, base.values_read + expect * lengths)
    assert np.array_equal(res.pages_read, base.pages_read + expect * n_pages)
    assert np.array_equal(res.summaries_scored, base.summaries_scored)
    # after the policy every returned output is within tol of dense (kept: certified; else: is dense)
    assert np.all(np.linalg.norm(res.out - dense, axis=-1) <= tol)


def test_report_only_never_falls_back():
    case = make_case("outlier", 0, context=128, page_size=8, head_dim=8, q_scale=3.0)
    res = sparse_decode(case.q, case.cache, case.seq_ids, 1, 4, router="mean", policy=ReportOnly())
    assert not res.fell_back.any() and res.certified_error[0, 0] > 1.0


def _widening_schedule(P, Kc, P_max, Kc_max, T, n_pages):
    sched = [(P, Kc)]
    while True:
        nxt = (max(P, min(2 * P, P_max, n_pages)), max(Kc, min(2 * Kc, Kc_max, T)))
        if nxt == (P, Kc):
            return sched
        P, Kc = nxt
        sched.append(nxt)


@settings(max_examples=15)
@given(st.integers(0, 2 ** 16), st.sampled_from([1e-4, 1e-2, 0.3]), st.booleans())
def test_capped_widens_until_certified_then_falls_back_with_costs(seed, tol, share):
    case = make_case("gaussian", seed, context=56, page_size=8, n_kv_heads=1, group=2, head_dim=4, q_scale=6.0)
    T = case.cache.length(0)
    pol = Capped(tol, P_max=8, Kc_max=64)
    res = sparse_decode(case.q, case.cache, case.seq_ids, 1, 4, policy=pol, share_selection_in_group=share)
    dense = dense_decode(case.q, case.cache, case.seq_ids)
    units = [[0, 1]] if share else [[0], [1]]
    for unit in units:
        # replay the schedule: attempts stop at the first (P, Kc) where every head of the unit is certified
        cost = {c: 0 for c in COST_FIELDS}
        for P, Kc in _widening_schedule(1, 4, 8, 64, T, case.cache.n_pages(0)):
            att = sparse_decode(case.q, case.cache, case.seq_ids, P, Kc, share_selection_in_group=share)
            for c in COST_FIELDS:
                cost[c] += att.__dict__[c][0, unit[0]]
            if np.all(att.certified_error[0, unit] <= tol):
                break
        h = unit[0]
        assert (res.P_used[0, h], res.Kc_used[0, h]) == (P, Kc)
        for hh in unit:
            fell = att.certified_error[0, hh] > tol
            assert res.fell_back[0, hh] == fell
            extra = T if fell else 0
            assert res.tokens_scored[0, hh] == cost["tokens_scored"] + extra
            assert res.pages_read[0, hh] == cost["pages_read"] + (case.cache.n_pages(0) if fell else 0)
            assert res.summaries_scored[0, hh] == cost["summaries_scored"]
            if fell:
                assert np.array_equal(res.out[0, hh], dense[0, hh])
            else:
                assert np.array_equal(res.out[0, hh], att.out[0, hh])
                assert np.linalg.norm(res.out[0, hh] - dense[0, hh]) <= tol


def test_capped_certifies_a_sharp_query_without_fallback():
    """A query with concentrated attention gets certified by widening, without falling back."""
    case = make_case("outlier", 2, context=512, page_size=16, head_dim=8, q_scale=4.0)
    res = sparse_decode(case.q, case.cache, case.seq_ids, 1, 8, policy=Capped(1e-2, P_max=32, Kc_max=512))
    assert res.certified[0, 0] and not res.fell_back[0, 0]
    assert res.certified_error[0, 0] <= 1e-2


@pytest.mark.parametrize("make, arg", [
    (lambda: DenseFallback(-1.0), "tol"),
    (lambda: DenseFallback(float("nan")), "tol"),
    (lambda: Capped(1e-3, 0, 4), "P_max"),
    (lambda: Capped(1e-3, 4, 0), "Kc_max"),
    (lambda: make_policy("sometimes", 1.0), "policy"),
    (lambda: make_policy("dense_fallback"), "tol"),
    (lambda: make_policy("capped", 1.0), "policy"),
])
def test_bad_policies(make, arg):
    with pytest.raises(VashistaInputError) as e:
        make()
    assert e.value.argument == arg


def test_capped_caps_below_start_are_rejected():
    case = make_case("gaussian", 0, context=40, page_size=4, head_dim=4)
    for pol, arg in ((Capped(1e-3, P_max=1, Kc_max=64), "P_max"), (Capped(1e-3, P_max=8, Kc_max=2), "Kc_max")):
        with pytest.raises(VashistaInputError) as e:
            sparse_decode(case.q, case.cache, case.seq_ids, 2, 4, policy=pol)
        assert e.value.argument == arg


def test_reference_tier_reexports_the_shared_contracts():
    """vashista_ref.errors / vashista_ref.policies stay importable during the move to vashista_core,
    and are the same objects (an `except vashista_ref.errors.VashistaInputError` catches core's)."""
    import vashista_core.errors
    import vashista_core.policies
    import vashista_ref.errors
    import vashista_ref.policies
    assert vashista_ref.errors.VashistaInputError is vashista_core.errors.VashistaInputError
    assert vashista_ref.errors.ConvergenceError is vashista_core.errors.ConvergenceError
    for name in vashista_core.policies.__all__:
        assert getattr(vashista_ref.policies, name) is getattr(vashista_core.policies, name)
