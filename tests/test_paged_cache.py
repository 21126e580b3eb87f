"""PagedKVCache: incremental summaries equal a rebuild, page-table indirection equals a contiguous
layout, summaries equal their definitions, the hierarchy summarises what it claims, bad input."""
import numpy as np
import pytest
from hypothesis import given, strategies as st

from vashista_core.errors import VashistaInputError
from vashista_ref.paged_cache import PagedKVCache
from vashista_ref.sparse_decode import sparse_decode

FIELDS = ("count", "mean", "kmin", "kmax", "vmax")


@st.composite
def dense_arrays(draw):
    rng = np.random.default_rng(draw(st.integers(0, 2 ** 16)))
    T, H, D, Dv = draw(st.integers(1, 70)), draw(st.integers(1, 2)), draw(st.integers(1, 6)), draw(st.integers(1, 4))
    return rng.normal(size=(T, H, D)) * 10.0 ** draw(st.integers(-3, 3)), rng.normal(size=(T, H, Dv)), \
        draw(st.integers(1, 9)), draw(st.sampled_from([None, 2, 3, 5]))


def _all_summaries(cache, seq):
    return [(lvl, h, cache.summaries(seq, h, lvl)) for lvl in range(cache.n_levels(seq))
            for h in range(cache.n_kv_heads)]


@given(dense_arrays(), st.data())
def test_incremental_append_equals_prefill_rebuild(arrs, data):
    """Decode steps (one token at a time) and arbitrary chunked prefills give bit-identical summaries."""
    K, V, S, F = arrs
    ref, (s0,) = PagedKVCache.from_dense(K, V, S, fanout=F)
    one, (s1,) = PagedKVCache.from_dense(K, V, S, fanout=F, chunk=1, shuffle_seed=7)
    chunk = data.draw(st.integers(1, K.shape[0]))
    mixed, (s2,) = PagedKVCache.from_dense(K, V, S, fanout=F, chunk=chunk)
    for other, sid in ((one, s1), (mixed, s2)):
        assert other.n_levels(sid) == ref.n_levels(s0)
        for (lvl, h, a), (_, _, b) in zip(_all_summaries(ref, s0), _all_summaries(other, sid)):
            for f in FIELDS:
                assert np.array_equal(getattr(a, f), getattr(b, f)), (lvl, h, f)


@given(dense_arrays())
def test_summaries_match_their_definition(arrs):
    """count, min, max, max value norm exactly; mean to float64 rounding (summation order differs)."""
    K, V, S, F = arrs
    cache, (sid,) = PagedKVCache.from_dense(K, V, S, fanout=F, shuffle_seed=1)
    T = K.shape[0]
    for lvl in range(cache.n_levels(sid)):
        span = S * (F ** lvl if lvl else 1)
        for h in range(K.shape[1]):
            summ = cache.summaries(sid, h, lvl)
            starts = range(0, T, span)
            assert summ.count.tolist() == [min(span, T - a) for a in starts]
            for i, a in enumerate(starts):
                k, v = K[a:a + span, h], V[a:a + span, h]
                assert np.array_equal(summ.kmin[i], k.min(0)) and np.array_equal(summ.kmax[i], k.max(0))
                assert summ.vmax[i] == np.linalg.norm(v, axis=-1).max()
                np.testing.assert_allclose(summ.mean[i], k.mean(0), rtol=1e-12, atol=1e-12 * np.abs(k).max())


@given(dense_arrays(), st.integers(0, 2 ** 16))
def test_box_bound_dominates_every_key(arrs, seed):
    K, V, S, F = arrs
    cache, (sid,) = PagedKVCache.from_dense(K, V, S, fanout=F)
    q = np.random.default_rng(seed).normal(size=K.shape[2])
    for lvl, h, summ in _all_summaries(cache, sid):
        span = S * (F ** lvl if lvl else 1)
        ub = summ.upper_bound(q)
        for i in range(summ.count.shape[0]):
            assert np.all(K[i * span:(i + 1) * span, h] @ q <= ub[i] + 1e-12 * np.abs(ub[i]) + 1e-300)


def test_hierarchy_top_level_is_small():
    rng = np.random.default_rng(0)
    cache, (sid,) = PagedKVCache.from_dense(rng.normal(size=(1000, 1, 4)), rng.normal(size=(1000, 1, 4)), 4, fanout=4)
    assert cache.n_pages(sid) == 250
    assert cache.n_levels(sid) == 4               # pages, then 63, 16, 4 nodes
    assert [cache.summaries(sid, 0, lvl).count.shape[0] for lvl in range(4)] == [250, 63, 16, 4]
    assert cache.summaries(sid, 0, 3).count.sum() == 1000


@given(st.integers(0, 2 ** 16), st.booleans())
def test_page_table_indirection_equals_contiguous_layout(seed, hier):
    """Shuffled physical pages, several sequences sharing the pool: same gathers, same decode, bit for bit."""
    rng = np.random.default_rng(seed)
    lens = rng.integers(1, 60, size=3)
    Ks = [rng.normal(size=(n, 2, 4)) for n in lens]
    Vs = [rng.normal(size=(n, 2, 3)) for n in lens]
    F = 2 if hier else None
    contiguous, seqs_c = PagedKVCache.from_dense(Ks, Vs, 5, fanout=F)
    shuffled, seqs_s = PagedKVCache.from_dense(Ks, Vs, 5, fanout=F, shuffle_seed=seed, chunk=3)
    assert not all(np.array_equal(contiguous.page_table(a), shuffled.page_table(b)) for a, b in zip(seqs_c, seqs_s)) \
        or sum(-(-n // 5) for n in lens) <= 1
    for a, b, k in zip(seqs_c, seqs_s, Ks):
        for h in range(2):
            assert np.array_equal(contiguous.gather(a, h)[0], k[:, h])
            assert np.array_equal(shuffled.gather(b, h)[0], k[:, h])
    q = rng.normal(size=(3, 4, 4))
    kc = int(min(lens))
    r1 = sparse_decode(q, contiguous, seqs_c, P=2, Kc=kc, hierarchical=hier)
    r2 = sparse_decode(q, shuffled, seqs_s, P=2, Kc=kc, hierarchical=hier)
    for f in ("out", "certified_error", "gap", "certified_leakage", "tokens_scored"):
        assert np.array_equal(getattr(r1, f), getattr(r2, f)), f
    for b in range(3):
        for h in range(4):
            assert np.array_equal(r1.candidates[b][h], r2.candidates[b][h])


def test_decode_step_appends_one_token_per_sequence_and_free_reuses_pages():
    rng = np.random.default_rng(3)
    cache = PagedKVCache(page_size=2, n_kv_heads=1, head_dim=3)
    a, b = cache.add_sequence(), cache.add_sequence()
    cache.append(a, rng.normal(size=(3, 1, 3)), rng.normal(size=(3, 1, 3)))
    cache.append_step([a, b], rng.normal(size=(2, 1, 3)), rng.normal(size=(2, 1, 3)))
    assert (cache.length(a), cache.length(b)) == (4, 1)
    assert cache.summaries(a, 0).count.tolist() == [2, 2] and cache.summaries(b, 0).count.tolist() == [1]
    used = set(cache.page_table(a).tolist())
    cache.free_sequence(a)
    c = cache.add_sequence()
    cache.append(c, rng.normal(size=(4, 1, 3)), rng.normal(size=(4, 1, 3)))
    assert set(cache.page_table(c).tolist()) == used        # freed pages come back, summaries reset
    assert cache.summaries(c, 0).count.tolist() == [2, 2]


@pytest.mark.parametrize("kwargs, arg", [
    (dict(page_size=0, n_kv_heads=1, head_dim=2), "page_size"),
    (dict(page_size=-3, n_kv_heads=1, head_dim=2), "page_size"),
    (dict(page_size=2, n_kv_heads=0, head_dim=2), "n_kv_heads"),
    (dict(page_size=2, n_kv_heads=1, head_dim=0), "head_dim"),
    (dict(page_size=2, n_kv_heads=1, head_dim=2, fanout=1), "fanout"),
    (dict(page_size=2.5, n_kv_heads=1, head_dim=2), "page_size"),
])
def test_bad_construction(kwargs, arg):
    with pytest.raises(VashistaInputError) as e:
        PagedKVCache(**kwargs)
    assert e.value.argument == arg


def test_bad_appends():
    cache = PagedKVCache(page_size=2, n_kv_heads=2, head_dim=3)
    s = cache.add_sequence()
    good_k, good_v = np.zeros((1, 2, 3)), np.zeros((1, 2, 3))
    bad = [((np.full((1, 2, 3), np.nan), good_v), "keys"), ((good_k, np.full((1, 2, 3), np.inf)), "values"),
           ((np.zeros((1, 1, 3)), good_v), "keys"), ((good_k, np.zeros((2, 2, 3))), "values"),
           ((np.zeros((1, 2, 3), dtype=int), good_v), "keys"), ((np.zeros((0, 2, 3)), np.zeros((0, 2, 3))), "keys")]
    for (k, v), arg in bad:
        with pytest.raises(VashistaInputError) as e:
            cache.append(s, k, v)
        assert e.value.argument == arg
    with pytest.raises(VashistaInputError, match="seq_id"):
        cache.append(99, good_k, good_v)
    with pytest.raises(VashistaInputError, match="seq_id"):
        cache.add_sequence(s)
    assert cache.length(s) == 0            # nothing was half-appended
