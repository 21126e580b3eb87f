"""sparse_decode: full coverage equals dense, selections follow SPEC 2 and the tie rule, GQA per-head
vs shared selection, hierarchical routing, the single-sequence convenience, bad input."""
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from decode_strategies import decode_cases
from helpers import assert_rel_close
from vashista_ref.dense import dense_decode, token_scores
from vashista_core.errors import VashistaInputError
from vashista_ref.paged_cache import PagedKVCache
from vashista_ref.routing import forced_pages
from vashista_ref.sparse_decode import sparse_decode, sparse_decode_single
from vashista_ref.synthetic import KINDS, make_case


@given(st.sampled_from(KINDS), st.integers(0, 2 ** 16), st.integers(1, 70), st.sampled_from([1, 4, 7, 16]),
       st.sampled_from(["bound", "mean"]), st.booleans(), st.sampled_from([0.5, 5.0, 50.0]))
def test_full_coverage_equals_dense(kind, seed, context, S, router, share, q_scale):
    """P covering every page and Kc = context length: sparse equals dense to 1e-12, certificate ~0."""
    case = make_case(kind, seed, context=context, page_size=S, n_kv_heads=2, group=2, head_dim=6,
                     q_scale=q_scale)
    T = case.cache.length(case.seq_ids[0])
    res = sparse_decode(case.q, case.cache, case.seq_ids, P=T, Kc=T, router=router, share_selection_in_group=share)
    assert_rel_close(res.out, dense_decode(case.q, case.cache, case.seq_ids), "float64", "full-coverage sparse")
    assert np.all(res.certified_leakage == 0.0) and np.all(res.gap == np.inf)
    assert np.all(res.certified_error == res.rounding) and np.all(res.rounding < 1e-11)


def _brute_selection(q, K, pages, S, Kc, scale):
    """Candidates by the documented rule, computed independently: lexsort by (−score, logical index)."""
    idx = np.concatenate([np.arange(p * S, min(p * S + S, K.shape[0])) for p in pages])
    s = (K[idx] * q).sum(-1) * scale
    return idx[np.lexsort((idx, -s))][:Kc]


@given(decode_cases())
def test_selection_follows_spec_and_tie_rule(d):
    """Routed pages contain the forced ones plus at most P others that outscore (or tie lower-indexed)
    every unrouted page; candidates are the top-Kc routed tokens with ties to the lower index."""
    case = d.case
    res = sparse_decode(case.q, case.cache, case.seq_ids, d.P, d.Kc, **d.kwargs())
    S, scale = case.cache.page_size, 1 / np.sqrt(case.q.shape[2])
    G = case.q.shape[1] // case.cache.n_kv_heads
    for b, sid in enumerate(case.seq_ids):
        n_pages = case.cache.n_pages(sid)
        forced = set(forced_pages(n_pages, d.sink_pages).tolist())
        for h in range(case.q.shape[1]):
            pages = res.pages[b][h]
            assert forced <= set(pages.tolist()) and len(pages) <= len(forced) + d.P
            assert np.all(np.diff(pages) > 0)
            if not d.hierarchical:
                assert len(pages) == min(n_pages, len(forced) + d.P)
            K = case.keys[b][:, h // G]
            if not d.share:
                want = _brute_selection(case.q[b, h], K, pages, S, min(d.Kc, sum(
                    min(S, K.shape[0] - p * S) for p in pages)), scale)
                assert np.array_equal(res.candidates[b][h], want)
            else:
                assert np.array_equal(res.candidates[b][h], res.candidates[b][(h // G) * G])
            assert res.values_read[b, h] == len(res.candidates[b][h]) and res.Kc_used[b, h] == d.Kc


def test_all_equal_keys_pick_lowest_indices():
    """Every score ties: pages and candidates are the lowest logical ones (tie rule)."""
    case = make_case("all_equal", 0, context=50, page_size=4, n_kv_heads=1, group=2, head_dim=3, shuffle=True)
    res = sparse_decode(case.q, case.cache, case.seq_ids, P=3, Kc=10, sink_pages=1)
    for h in range(2):
        assert res.pages[0][h].tolist() == [0, 1, 2, 3, 12]       # sink 0, top-3 = 1,2,3, newest 12
        assert res.candidates[0][h].tolist() == list(range(10))
        assert res.certified_leakage[0, h] >= 40 / 50 * (1 - 1e-12)


def test_mean_router_misses_the_outlier_bound_router_finds_it():
    case = make_case("outlier", 1, context=128, page_size=8, head_dim=16, q_scale=2.0)
    p = case.outlier_page
    mean = sparse_decode(case.q, case.cache, case.seq_ids, P=2, Kc=16, router="mean")
    bound = sparse_decode(case.q, case.cache, case.seq_ids, P=2, Kc=16, router="bound")
    assert p not in mean.pages[0][0] and p in bound.pages[0][0]
    d = dense_decode(case.q, case.cache, case.seq_ids)
    assert np.linalg.norm(bound.out - d) < np.linalg.norm(mean.out - d)


def test_gqa_shared_selection_is_the_union_rule():
    """Shared routing scores a page by the max over the group's heads; with G = 1 it equals per-head."""
    case = make_case("gaussian", 5, context=90, page_size=8, n_kv_heads=2, group=1, head_dim=8)
    a = sparse_decode(case.q, case.cache, case.seq_ids, P=2, Kc=12, share_selection_in_group=True)
    b = sparse_decode(case.q, case.cache, case.seq_ids, P=2, Kc=12, share_selection_in_group=False)
    assert np.array_equal(a.out, b.out) and np.array_equal(a.certified_error, b.certified_error)
    case = make_case("gaussian", 5, context=90, page_size=8, n_kv_heads=1, group=4, head_dim=8, q_scale=3.0)
    a = sparse_decode(case.q, case.cache, case.seq_ids, P=2, Kc=12, share_selection_in_group=True)
    ub = np.stack([case.cache.summaries(0, 0).upper_bound(q) for q in case.q[0]]).max(0)
    others = np.setdiff1d(np.arange(len(ub)), forced_pages(len(ub), 1))
    top2 = others[np.argsort(-ub[others], kind="stable")[:2]]
    assert set(top2) <= set(a.pages[0][0].tolist())
    assert all(np.array_equal(a.candidates[0][0], a.candidates[0][h]) for h in range(4))


@settings(max_examples=10)
@given(st.integers(0, 2 ** 16), st.sampled_from(["bound", "mean"]))
def test_hierarchical_routing_scores_fewer_summaries(seed, router):
    case = make_case("gaussian", seed, context=2048, page_size=4, head_dim=8, fanout=4)
    flat = sparse_decode(case.q, case.cache, case.seq_ids, P=4, Kc=32, router=router)
    tree = sparse_decode(case.q, case.cache, case.seq_ids, P=4, Kc=32, router=router, hierarchical=True)
    assert flat.summaries_scored[0, 0] >= 512
    if router == "bound":
        assert tree.summaries_scored[0, 0] < 100      # O(P·F·levels), not M/S
    assert tree.pages_read[0, 0] <= 4 + 2


def test_single_sequence_convenience_matches_cache_path():
    rng = np.random.default_rng(2)
    K, V, q = rng.normal(size=(77, 6)), rng.normal(size=(77, 2)), rng.normal(size=6)
    r1 = sparse_decode_single(q, K, V, P=2, Kc=9, page_size=5)
    cache, seqs = PagedKVCache.from_dense(K[:, None], V[:, None], 5, shuffle_seed=4)
    r2 = sparse_decode(q[None, None], cache, seqs, P=2, Kc=9)
    assert np.array_equal(r1.out, r2.out) and np.array_equal(r1.candidates[0][0], r2.candidates[0][0])
    s = token_scores(q, K, 1 / np.sqrt(6))
    assert np.array_equal(s[r1.candidates[0][0]], np.sort(s[r1.candidates[0][0]])[::-1])


@pytest.fixture(scope="module")
def small():
    case = make_case("gaussian", 0, context=20, page_size=4, n_kv_heads=2, group=2, head_dim=4, batch=2)
    return case


@pytest.mark.parametrize("change, arg", [
    (dict(q=np.zeros((2, 3, 4))), "q"),                     # 3 query heads, 2 KV heads
    (dict(q=np.zeros((2, 4, 5))), "q"),                     # head dim mismatch
    (dict(q=np.full((2, 4, 4), np.nan)), "q"),
    (dict(q=np.zeros((2, 4), )), "q"),
    (dict(seq_ids=[0]), "seq_ids"),
    (dict(seq_ids=[0, 7]), "seq_ids"),
    (dict(P=0), "P"),
    (dict(P=-1), "P"),
    (dict(Kc=0), "Kc"),
    (dict(Kc=20), "Kc"),                                    # second sequence has only 19 tokens
    (dict(solver="cg"), "solver"),
    (dict(router="max"), "router"),
    (dict(sink_pages=-1), "sink_pages"),
    (dict(scale=0.0), "scale"),
    (dict(hierarchical=True), "hierarchical"),
    (dict(policy="dense"), "policy"),
    (dict(share_selection_in_group="yes"), "share_selection_in_group"),
    (dict(iters=0), "iters"),
])
def test_bad_input_names_the_argument(small, change, arg):
    kw = dict(q=small.q, seq_ids=small.seq_ids, P=2, Kc=4)
    kw.update(change)
    with pytest.raises(VashistaInputError) as e:
        sparse_decode(kw.pop("q"), small.cache, kw.pop("seq_ids"), kw.pop("P"), kw.pop("Kc"), **kw)
    assert e.value.argument == arg


@pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning")
def test_empty_cache_and_overflowing_scores():
    cache = PagedKVCache(page_size=4, n_kv_heads=1, head_dim=2)
    s = cache.add_sequence()
    with pytest.raises(VashistaInputError) as e:
        sparse_decode(np.ones((1, 1, 2)), cache, [s], P=1, Kc=1)
    assert e.value.argument == "cache"
    with pytest.raises(VashistaInputError):
        sparse_decode(np.ones((1, 1, 2)), "not a cache", [s], P=1, Kc=1)
    cache.append(s, np.full((3, 1, 2), 1e200), np.ones((3, 1, 2)))
    with pytest.raises(VashistaInputError) as e:
        sparse_decode(np.full((1, 1, 2), 1e200), cache, [s], P=1, Kc=1)
    assert e.value.argument == "q"
    with pytest.raises(VashistaInputError) as e:
        sparse_decode_single(np.ones(2), np.ones((3, 2)), np.ones((4, 2)), P=1, Kc=1)
    assert e.value.argument == "V"


# ----------------------------------------------------------------------------------- eg / fw solvers
def _entropic():
    return pytest.importorskip("vashista_ref.entropic")


@pytest.mark.parametrize("solver", ["eg", "fw"])
def test_projection_solvers_full_coverage_equal_dense_same_solver(solver):
    """With every token a candidate, eg/fw on the candidates is the dense eg/fw (same iterations):
    equal up to the rounding of a permuted key order."""
    _entropic()
    case = make_case("gaussian", 1, context=40, page_size=8, n_kv_heads=1, group=2, head_dim=4, q_scale=2.0)
    res = sparse_decode(case.q, case.cache, case.seq_ids, P=5, Kc=40, solver=solver, iters=40)
    dense = dense_decode(case.q, case.cache, case.seq_ids, solver=solver, iters=40)
    assert_rel_close(res.out, dense, "float64", f"{solver} full coverage")
    assert np.all(np.isnan(res.certified_error)) and np.all(res.gap == np.inf)


@pytest.mark.parametrize("solver", ["eg", "fw"])
@pytest.mark.parametrize("router", ["bound", "mean"])
def test_projection_gap_lower_bounds_every_excluded_mu(solver, router):
    """The residual certificate: exact μ̂_j for scored keys, box lower bounds for unrouted pages, so
    projection_gap ≤ min over all non-candidates of ⟨r̂, ŷ − k_j⟩ computed by brute force."""
    ent = _entropic()
    case = make_case("gaussian", 2, context=96, page_size=8, n_kv_heads=1, group=2, head_dim=4, q_scale=4.0)
    res = sparse_decode(case.q, case.cache, case.seq_ids, P=2, Kc=10, solver=solver, router=router, eps=0.05,
                        iters=60)
    K = case.keys[0][:, 0]
    fn = ent.eg_weights if solver == "eg" else ent.fw_weights
    for h in range(2):
        C = res.candidates[0][h]
        alpha, _ = fn(case.q[0, h], K[C], 0.05, iters=60)
        y = alpha @ K[C]
        r = case.q[0, h] - y
        mu = r @ y - np.delete(K, C, axis=0) @ r
        assert res.projection_gap[0, h] <= mu.min() + 1e-12 * (1 + np.abs(mu).max())


def test_raw_q_routing_certifies_nothing_about_the_projection():
    """SPEC 3's mismatch, end to end. The softmax certificate (raw q) reports a positive gap — no unread
    key can outscore the candidates — while the projection residual certificate on the same selection
    is negative: the unread key (-2, 7) lies beyond the candidates' face along r̂ = q − ŷ."""
    _entropic()
    keys = np.array([[-1, 0], [1, 0], [-2, 7], [-2, 7], [0.9, 0], [0.9, 0], [1, 0], [-1, 0]], float)[:, None, :]
    cache, seqs = PagedKVCache.from_dense(keys, np.eye(8)[:, None, :2] + 0.0, 2)
    q = np.array([3.0, 1.0])[None, None]
    soft = sparse_decode(q, cache, seqs, P=1, Kc=6, scale=1.0)
    assert soft.pages[0][0].tolist() == [0, 2, 3] and soft.gap[0, 0] == pytest.approx(2.0)   # page 1 unread
    fw = sparse_decode(q, cache, seqs, P=1, Kc=6, scale=1.0, solver="fw", eps=1e-3, iters=400)
    assert np.array_equal(fw.pages[0][0], soft.pages[0][0])
    assert fw.projection_gap[0, 0] == pytest.approx(-1.0, abs=0.05)
    assert not fw.certified[0, 0]
