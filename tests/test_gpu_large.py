"""GPU-only differential tests at large context (T up to 128k) and CUDA-graph capture of a planned
step; skipped without CUDA (CI is CPU-only; these run on the device machine, see benchmarks/RESULTS.md)."""
from __future__ import annotations

import pytest
import torch

from gpu_cases import as_sets, build, check_against_reference, finite_rel_close
from helpers import REL_TOL, assert_rel_close
from vashista_gpu.cuda_graph import capture
from vashista_gpu.decode import run_plan, sparse_decode
from vashista_gpu.plan import plan_decode
from vashista_ref.sparse_decode import sparse_decode as ref_decode

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]
F32 = REL_TOL["float32"]


@pytest.mark.parametrize("hier", [False, True])
def test_128k_matches_reference(hier):
    lengths = (131075, 65531)                       # odd, partial last pages, different lengths
    ref, rids, gpu, gids, q64, q = build(lengths, 2, 2, 64, 16, fanout=8 if hier else None, dtype=torch.bfloat16,
                                         backend="triton", seed=21, device="cuda")
    r = ref_decode(q64, ref, rids, 64, 128, scale=0.125, hierarchical=hier)
    g = sparse_decode(q, gpu, gids, 64, 128, scale=0.125, hierarchical=hier, backend="triton")
    check_against_reference(g, r, torch.bfloat16)


def test_triton_equals_torch_at_model_shapes():
    """32 query / 8 KV heads, D = 128, bf16, 20k-token context: both backends select the same sets."""
    ref, rids, gpu, gids, q64, q = build((20011, 16384, 9000, 31), 8, 4, 128, 16, dtype=torch.bfloat16,
                                         backend="triton", seed=2, device="cuda", fanout=8)
    for hier in (False, True):
        a = sparse_decode(q, gpu, gids, 64, 31, hierarchical=hier, backend="triton", scale=0.125)
        b = sparse_decode(q, gpu, gids, 64, 31, hierarchical=hier, backend="torch", scale=0.125)
        assert as_sets(a.pages) == as_sets(b.pages) and as_sets(a.candidates) == as_sets(b.candidates)
        assert_rel_close(a.out, b.out.float(), torch.bfloat16, "out")
        finite_rel_close(a.certified_leakage, b.certified_leakage.double().cpu().numpy(), F32, "leakage")


def test_cuda_graph_replay_follows_the_growing_cache():
    ref, rids, gpu, gids, q64, q = build((3000, 2900), 2, 2, 64, 16, dtype=torch.bfloat16, backend="triton",
                                         seed=8, device="cuda", spare_pages=8)
    plan = plan_decode(gpu, gids, 4, 16, 64, max_pages=gpu.max_pages_per_seq)
    holder = {}

    def step():
        holder["r"] = run_plan(plan, q, gpu, backend="triton")
    replay = capture(step)
    for t in range(20):                              # decode steps: append, refresh lengths, replay
        k = torch.randint(-4, 5, (2, 2, 64), device="cuda").to(torch.bfloat16) / 8
        gpu.append_step(gids, k, k)
        plan.lens.copy_(gpu.seq_lens[plan.seq_ids])
        replay()
        eager = sparse_decode(q, gpu, gids, 16, 64, backend="triton")
        assert as_sets(holder["r"].candidates) == as_sets(eager.candidates)
        assert_rel_close(holder["r"].out.to(torch.bfloat16), eager.out, torch.bfloat16, f"replay {t}")
