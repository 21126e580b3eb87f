"""Bad input to the reference tier: each case a clear VashistaInputError naming the argument, or a
ConvergenceError saying what did not converge — never a silent wrong answer."""
import numpy as np
import pytest

from vashista_ref import ConvergenceError, VashistaInputError, instances
from vashista_ref.entropic import entropic_projection, eg_weights, fw_weights
from vashista_ref.minnorm import wolfe_min_norm_point
from vashista_ref.projection import kkt_certificate, project_onto_hull
from vashista_ref.softmax_model import softmax_certificate

K = np.array([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
q = np.array([1.0, 1.0])

CALLS = {
    "cvxpy": lambda q, K: project_onto_hull(q, K, solver="cvxpy"),
    "wolfe": lambda q, K: project_onto_hull(q, K, solver="wolfe"),
    "minnorm": wolfe_min_norm_point,
    "entropic": lambda q, K: entropic_projection(q, K, 0.1),
    "eg": lambda q, K: eg_weights(q, K, 0.1),
    "fw": lambda q, K: fw_weights(q, K, 0.1),
}


@pytest.mark.parametrize("name", CALLS)
@pytest.mark.parametrize("case, arg, bad_q, bad_K", [
    ("nan in q", "q", np.array([np.nan, 1.0]), K),
    ("inf in K", "K", q, np.array([[0.0, np.inf], [1.0, 0.0]])),
    ("q 2-D", "q", q[None, :], K),
    ("K 1-D", "K", q, K[0]),
    ("dimension mismatch", "q", np.array([1.0, 1.0, 1.0]), K),
    ("no keys", "K", q, np.zeros((0, 2))),
    ("integer keys", "K", q, K.astype(int)),
    ("complex query", "q", q.astype(complex), K),
])
def test_bad_arrays_name_the_argument(name, case, arg, bad_q, bad_K):
    with pytest.raises(VashistaInputError) as err:
        CALLS[name](bad_q, bad_K)
    assert err.value.argument == arg, case


@pytest.mark.parametrize("eps", [0.0, -1.0, float("nan"), float("inf"), "0.1", True])
def test_bad_eps(eps):
    for fn in (lambda: entropic_projection(q, K, eps), lambda: eg_weights(q, K, eps),
               lambda: softmax_certificate(np.ones(3), eps)):
        with pytest.raises(VashistaInputError) as err:
            fn()
        assert err.value.argument == "eps"


def test_bad_options():
    with pytest.raises(VashistaInputError, match="solver"):
        project_onto_hull(q, K, solver="gurobi")
    with pytest.raises(VashistaInputError, match="method"):
        entropic_projection(q, K, 0.1, method="sinkhorn")
    with pytest.raises(VashistaInputError, match="iters"):
        eg_weights(q, K, 0.1, iters=0)
    with pytest.raises(VashistaInputError, match="alpha"):
        kkt_certificate(q, K, np.ones(2))
    with pytest.raises(VashistaInputError, match="active_tol"):
        project_onto_hull(q, K, active_tol=-1.0)


def test_non_convergence_is_reported():
    rng = np.random.default_rng(0)
    Kr, qr = rng.normal(size=(30, 4)), rng.normal(size=4) * 3
    with pytest.raises(ConvergenceError, match="did not reach"):
        entropic_projection(qr, Kr, 1e-3, method="fw", max_iter=5)
    hard = instances.draw("known_face", 0, M=30, D=4, face_size=4)   # needs ≥ 4 major steps
    with pytest.raises(ConvergenceError, match="did not terminate"):
        wolfe_min_norm_point(hard.q, hard.K, max_iter=2)
    sol = entropic_projection(qr, Kr, 1e-3, method="eg", max_iter=5, raise_on_failure=False)
    assert not sol.converged and sol.duality_gap > 0


def _small_cache():
    from vashista_ref.paged_cache import PagedKVCache
    rng = np.random.default_rng(0)
    return PagedKVCache.from_dense(rng.normal(size=(20, 1, 4)), rng.normal(size=(20, 1, 4)), 8)


@pytest.mark.parametrize("case, arg, call", [
    # issue 15's counterexamples: each was accepted (seq_ids=[0.7] decoded sequence 0)
    ("fractional sequence id", "seq_ids",
     lambda c, s: __import__("vashista_ref.sparse_decode", fromlist=["x"]).sparse_decode(
         np.ones((1, 1, 4)), c, [0.7], 1, 4)),
    ("fractional sequence id, dense", "seq_ids",
     lambda c, s: __import__("vashista_ref.dense", fromlist=["x"]).dense_decode(np.ones((1, 1, 4)), c, [0.7])),
    ("negative new sequence", "seq_id", lambda c, s: c.add_sequence(-5)),
    ("duplicate ids in one step", "seq_ids",
     lambda c, s: c.append_step([s[0], s[0]], np.ones((2, 1, 4)), np.ones((2, 1, 4)))),
    ("unknown id in one step", "seq_id",
     lambda c, s: c.append_step([s[0], 99], np.ones((2, 1, 4)), np.ones((2, 1, 4)))),
    ("negative logical page", "logical_page", lambda c, s: c.page_tokens(s[0], -1, 0)),
    ("logical page past the end", "logical_page", lambda c, s: c.page_tokens(s[0], 3, 0)),
    ("float logical page", "logical_page", lambda c, s: c.page_tokens(s[0], 1.0, 0)),
])
def test_paged_cache_bad_ids(case, arg, call):
    cache, seqs = _small_cache()
    before = cache.length(seqs[0])
    with pytest.raises(VashistaInputError) as err:
        call(cache, seqs)
    assert err.value.argument == arg, case
    assert cache.length(seqs[0]) == before, "a refused step must not append anything"


@pytest.mark.parametrize("solver", ["eg", "fw"])
def test_projection_solvers_scale_covariant_or_refused(solver):
    """Issue 15 asks the projection solvers to be scale-invariant or to refuse with the reason. With q and
    K scaled by s and ε by s² (the objective scales by s²), eg/fw take the same steps: the same weights,
    the residual gap × s², never NaN. At 1e-300 the gap (∝ s²) leaves float64: before, μ̂ underflowed,
    ‖r̂‖ read 0 and the gap was NaN — "q inside the hull"; now a refusal naming q with the reason."""
    from vashista_ref.sparse_decode import sparse_decode_single
    rng = np.random.default_rng(3)
    Kr, Vr, qr = rng.standard_normal((64, 8)), rng.standard_normal((64, 4)), 3 * rng.standard_normal(8)
    run = lambda s, eps: sparse_decode_single(qr * s, Kr * s, Vr, P=2, Kc=8, page_size=8, solver=solver,  # noqa: E731
                                              eps=eps)
    base = run(1.0, 0.5)
    assert np.isfinite(base.projection_gap[0, 0]) and base.projection_gap[0, 0] != 0
    for s in (1e-100, 1e-4, 1e4, 1e30, 1e100):
        r = run(s, 0.5 * s * s)
        np.testing.assert_allclose(r.out, base.out, rtol=1e-9, atol=1e-12)
        assert r.projection_gap[0, 0] == pytest.approx(base.projection_gap[0, 0] * s * s, rel=1e-6), s
        assert r.solver_certificate[0, 0] == pytest.approx(base.solver_certificate[0, 0] * s * s, rel=1e-4, abs=0), s
    with pytest.raises(VashistaInputError, match="scale-invariant") as err:
        run(1e-300, 0.5)
    assert err.value.argument == "q"
