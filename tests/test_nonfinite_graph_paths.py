"""Non-finite numbers reaching the steps that cannot check on the host (issue 15: "validate at plan time
and check finiteness on the device; a non-finite query gives a non-finite certificate that the policy
treats as uncertified").

The planned fused step replayed without synchronisation (``run_sketch_plan(sync=False)``) and the
context-parallel step's fused per-rank terms merged (``cp_fused_step``): a NaN or inf query row gets
leakage 1 and error +inf; the other rows are untouched.

Issue 15: "a float16 cache stores keys of 1e5 as inf; the next decode returns finite output with NaN
certificates". The host append refuses such keys (tests/test_gpu_certificates.py::
test_float16_cache_refuses_keys_beyond_its_range); the device append (``append_step_device``, no host
synchronisation, graph-capturable) cannot refuse, so the stored key IS inf. What the decode must do then
(docs/ROUNDING.md §4.3): a clear refusal, or a certificate that is never NaN and bounds the distance to
exact attention over the stored numbers — in which the inf key's score is ±inf: +inf takes all the
mass (exact attention is that token's value), −inf none.
"""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from vashista_core.errors import VashistaInputError
from vashista_gpu.decode import sparse_decode
from vashista_gpu.paged_cache import TorchPagedKVCache
from vashista_gpu.sketch import attach_sketch


def _cache_with_inf_key(sketch: bool):
    g = torch.Generator().manual_seed(0)
    cache = TorchPagedKVCache(16, 1, 16, 8, dtype=torch.float16, num_pages=8, max_seqs=1, backend="torch")
    s = cache.add_sequence()
    cache.append(s, torch.randn(40, 1, 16, generator=g), torch.randn(40, 1, 8, generator=g))
    if sketch:
        attach_sketch(cache, 4)
    cache.reserve(s, 1)
    k = torch.randn(1, 1, 16, generator=g)
    k[0, 0, 3] = 1e5                                       # beyond float16 (max 65504): stored as inf
    cache.append_step_device(torch.tensor([s], dtype=torch.int32), k, torch.randn(1, 1, 8, generator=g))
    cache.sync_lengths()
    return cache, s


def _exact(q: np.ndarray, K: np.ndarray, V: np.ndarray, scale: float) -> np.ndarray:
    """Exact attention over stored keys with one infinite component (q_3 ≠ 0): ±inf scores in the limit."""
    inf_row = ~np.isfinite(K).all(-1)
    s = (np.where(np.isfinite(K), K, 0.0) @ q) * scale          # the inf rows are not read below
    up = inf_row & (q[3] > 0)
    if up.any():
        return V[up].mean(0)
    keep = ~inf_row
    w = np.exp(s[keep] - s[keep].max())
    return (w / w.sum()) @ V[keep]


@pytest.mark.parametrize("router", ["bound", "mean"])
@pytest.mark.parametrize("sign", [1.0, -1.0])
def test_device_append_of_an_unstorable_key_never_gives_nan_certificates(router, sign):
    cache, s = _cache_with_inf_key(sketch=False)
    g = torch.Generator().manual_seed(1)
    q = torch.randn(1, 2, 16, generator=g)
    q[..., 3] = sign * q[..., 3].abs().clamp(min=0.5)
    q = q.half()
    K, V = (x[:, 0].double().numpy() for x in cache.gather(s))
    assert np.isinf(K).any()
    r = sparse_decode(q, cache, [s], P=2, Kc=8, backend="torch", router=router)
    for h in range(2):
        ce, cl = float(r.certified_error[0, h]), float(r.certified_leakage[0, h])
        assert not math.isnan(ce) and not math.isnan(cl), (router, ce, cl)
        if math.isfinite(ce):
            o = r.out[0, h].double().numpy()
            assert np.isfinite(o).all()
            assert np.linalg.norm(o - _exact(q[0, h].double().numpy(), K, V, 0.25)) <= ce, (router, sign, h)


def test_sketch_router_refuses_the_unstorable_key():
    """The certified (sketch) path checks the keys it reads on the host: a clear refusal, not NaN."""
    cache, s = _cache_with_inf_key(sketch=True)
    with pytest.raises(VashistaInputError, match="NaN or infinite"):
        sparse_decode(torch.randn(1, 2, 16).half(), cache, [s], P=2, Kc=8, backend="torch", router="sketch", bits=4)


@pytest.mark.parametrize("bad", [math.nan, math.inf])
def test_planned_fused_step_without_sync_certifies_a_bad_query_row_infinite(bad):
    pytest.importorskip("triton")
    from vashista_gpu.sketch_plan import plan_sketch_step, run_sketch_plan
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    g = torch.Generator().manual_seed(2)
    cache = TorchPagedKVCache(16, 1, 16, 8, dtype=torch.float32, device=dev)
    sid = cache.add_sequence()
    cache.append(sid, torch.randn(40, 1, 16, generator=g), torch.randn(40, 1, 8, generator=g))
    plan = plan_sketch_step(cache, [sid], 2, 8, bits=4)
    q = torch.randn(1, 2, 16, generator=g).to(dev)
    good = run_sketch_plan(plan, q, sync=False)
    q[0, 1, 2] = bad
    r = run_sketch_plan(plan, q, sync=False)
    assert math.isinf(float(r.certified_error[0, 1])) and float(r.certified_leakage[0, 1]) == 1.0
    assert float(r.certified_error[0, 0]) == float(good.certified_error[0, 0])
    assert torch.equal(r.out[0, 0], good.out[0, 0])


@pytest.mark.filterwarnings("ignore:All-NaN slice:RuntimeWarning")       # the interpreter's reduction of the NaN row
def test_context_parallel_fused_step_certifies_a_bad_query_row_infinite():
    """cp_fused_step's arithmetic (per-rank fused terms, merge, certificate) on 2 simulated ranks: a NaN
    query row read leakage 0.0 ("nothing excluded": its excluded mass came out −inf) with a NaN error."""
    pytest.importorskip("triton")
    from vashista_gpu.distributed import ShardedCache, ShardLayout, certificate, merge
    from vashista_gpu.distributed.fused_terms import fused_shard_state
    from vashista_gpu.sketch_plan import plan_sketch_step
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    g = torch.Generator().manual_seed(0)
    K, V, q = torch.randn(64, 1, 16, generator=g), torch.randn(64, 1, 8, generator=g), torch.randn(1, 2, 16, generator=g)

    def merged(q):
        states = []
        for rank in range(2):
            cache = TorchPagedKVCache(16, 1, 16, 8, dtype=torch.float32, num_pages=8, max_seqs=1, device=dev)
            sh = ShardedCache(cache, ShardLayout(2, 16), rank)
            sh.add_sequence(0)
            sh.append(0, K, V)
            states.append(fused_shard_state(plan_sketch_step(cache, [0], 2, 4, bits=4), q.to(dev)))
        return certificate(merge(torch.stack(states)))

    good = merged(q)
    q[0, 1, 3] = math.nan
    r = merged(q)
    assert math.isinf(float(r.certified_error[0, 1])) and float(r.certified_leakage[0, 1]) == 1.0
    assert float(r.certified_error[0, 0]) == float(good.certified_error[0, 0])
    assert math.isfinite(float(good.certified_error[0, 1]))
