"""CUDA only: the planned certified step (``vashista_gpu.sketch_plan``) captured in a CUDA graph and
replayed while the sequences grow (appends that allocate pages), against eager runs of the same plan
and fresh one-call steps; skipped without CUDA (the CPU twin is test_sketch_plan.py)."""
from __future__ import annotations

import pytest
import torch

from test_sketch_plan import _dense_truth
from vashista_gpu.cuda_graph import capture
from vashista_gpu.paged_cache import TorchPagedKVCache
from vashista_gpu.sketch_plan import fused_paged_sketch_step, plan_sketch_step, run_sketch_plan

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]
FIELDS = ("out", "candidates", "certified_leakage", "certified_error", "overflow", "gap")


@pytest.mark.parametrize("bits,one_sided,page", [(4, True, 16), (8, False, 64)])
def test_graph_replay_after_appends_equals_eager_and_fresh_steps(bits, one_sided, page):
    g = torch.Generator().manual_seed(bits)
    lens, Hkv, G, D, Kc = (3000, 1800, 40), 2, 2, 64, 16      # 40 tokens < 16·Kc: a short padded row
    K = [(2 * torch.randn(n, Hkv, D, generator=g)).cuda() for n in lens]
    V = [torch.randn(n, Hkv, D, generator=g).cuda() for n in lens]
    cache, ids = TorchPagedKVCache.from_dense(K, V, page, shuffle_seed=1, dtype=torch.bfloat16, device="cuda",
                                              spare_pages=64)
    # cap 32·Kc: on random keys the 16-token maxima let ~100 tokens through the threshold, more than the
    # default 4·Kc slots (overflowed rows are flagged, not reselected, without sync — see run_sketch_plan)
    plan = plan_sketch_step(cache, ids, Hkv * G, Kc, bits=bits, one_sided=one_sided, max_tokens=3600, cap=32 * Kc)
    assert plan.T // 16 >= 8 * Kc and plan.short_window    # the threshold selection, with a short row
    q = torch.zeros(len(lens), Hkv * G, D, device="cuda")
    holder = {}

    def step():
        holder["r"] = run_sketch_plan(plan, q)
    replay = capture(step)
    for t, n in enumerate([1, 1, 200, 1, 63, 1]):     # decode steps and a chunk that allocates pages
        for sid in ids:
            cache.append(sid, (2 * torch.randn(n, Hkv, D, generator=g)).cuda(),
                         torch.randn(n, Hkv, D, generator=g).cuda())
        q.copy_((3 * torch.randn(q.shape, generator=g)).cuda())
        replay()
        torch.cuda.synchronize()
        r = holder["r"]
        eager = run_sketch_plan(plan, q)
        for f in FIELDS:
            assert torch.equal(getattr(r, f), getattr(eager, f)), (t, f)
        fresh = fused_paged_sketch_step(q, cache, ids, Kc, bits=bits, one_sided=one_sided, cap=32 * Kc)
        assert not bool(r.overflow.any())
        assert torch.equal(r.candidates, fresh.candidates), t
        torch.testing.assert_close(r.out, fresh.out, rtol=0, atol=0)
        b = 2                                          # the short row: sound against float64 dense
        p, o = _dense_truth(cache, ids[b], q[b].cpu(), plan.scale)
        true_leak = p.scatter(1, r.candidates[b].cpu(), 0.0).sum(-1)
        assert bool((r.certified_leakage[b].cpu().double() >= true_leak).all())
        err = torch.linalg.vector_norm(r.out[b].cpu().double() - o, dim=-1)
        assert bool((err <= r.certified_error[b].cpu().double()).all())
    assert [cache.length(sid) for sid in ids] == [n + 267 for n in lens]
