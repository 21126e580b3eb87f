"""The fused per-rank terms (vashista_gpu.distributed.fused_terms) merged across simulated ranks, in
one process (the merge is a pure function of the stacked states; the collective only moves them —
tests/test_distributed.py covers the collective). Triton runs under TRITON_INTERPRET=1 on CPU
(tests/conftest.py), so sizes are tiny (the interpreted scan costs ~1 s per page and KV head).

* one rank: the merged output is the single-process fused step's (``sketch_plan.run_sketch_plan``,
  same kernels, same candidates) within the float32 tolerance, and its certificate is ≥ the truth;
* 3 ranks (unequal shards): merged certified error ≥ ‖out − dense‖ (float64) for every head;
* one rank holds the only relevant token: the merged output is its value, the certificate ≥ the
  truth and within 4× the single-process fused step's.
"""
from __future__ import annotations

import math

import pytest
import torch

from helpers import assert_rel_close, rel_error
from vashista_gpu.distributed import ShardedCache, ShardLayout, certificate, merge
from vashista_gpu.distributed.fused_terms import fused_shard_state
from vashista_gpu.paged_cache import TorchPagedKVCache
from vashista_gpu.sketch_plan import plan_sketch_step, run_sketch_plan

S, HKV, HQ, D, KC = 16, 1, 2, 32, 8      # one KV head, GQA G = 2: few interpreted programs
DEV = "cuda" if torch.cuda.is_available() else "cpu"     # the fused step: compiled on a GPU, interpreted on CPU


def _data(T, seed, needle=None):
    g = torch.Generator().manual_seed(seed)
    K, V = torch.randn(T, HKV, D, generator=g), torch.randn(T, HKV, D, generator=g)
    q = 2 * torch.randn(1, HQ, D, generator=g)
    if needle is not None:
        K.mul_(0.1)
        K[needle] = 6 * q[0].view(HKV, HQ // HKV, D).mean(1)
    return K.to(DEV), V.to(DEV), q.to(DEV)


def _merged(K, V, q, world, chunk_pages=1, one_sided=True):
    states = []
    for rank in range(world):
        cache = TorchPagedKVCache(S, HKV, D, dtype=torch.float32, num_pages=32, max_seqs=1, device=DEV)
        sh = ShardedCache(cache, ShardLayout(world, S, chunk_pages), rank)
        sh.add_sequence(0)
        sh.append(0, K, V)
        plan = plan_sketch_step(cache, [0], HQ, KC, bits=4, one_sided=one_sided)
        states.append(fused_shard_state(plan, q))
    return certificate(merge(torch.stack(states)))


def _dense(K, V, q):
    qg = q[0].double().view(HKV, HQ // HKV, D)
    w = torch.softmax(qg @ K.double().permute(1, 2, 0) / math.sqrt(D), dim=-1)
    return (w @ V.double().permute(1, 0, 2)).reshape(HQ, -1)


def _single(K, V, q):
    cache = TorchPagedKVCache(S, HKV, D, dtype=torch.float32, num_pages=32, max_seqs=1, device=DEV)
    cache.add_sequence(0)
    cache.append(0, K, V)
    return run_sketch_plan(plan_sketch_step(cache, [0], HQ, KC, bits=4), q, sync=True)


def test_one_rank_is_the_single_process_step():
    K, V, q = _data(64, 1)
    r = _merged(K, V, q, 1)
    assert_rel_close(r.out.float(), _single(K, V, q).out, torch.float32)
    truth = torch.linalg.vector_norm(r.out[0] - _dense(K, V, q), dim=-1)
    assert bool((r.certified_error[0] >= truth).all())


def test_merged_certificate_bounds_dense():
    """3 ranks, 7 pages round-robin: shards of 48, 32, 32 tokens; two-sided bounds."""
    K, V, q = _data(112, 3)
    r = _merged(K, V, q, 3, one_sided=False)
    truth = torch.linalg.vector_norm(r.out[0] - _dense(K, V, q), dim=-1)
    assert bool((r.certified_error[0] >= truth).all()), (r.certified_error, truth)
    assert bool((r.certified_leakage <= 1).all()) and bool((r.certified_leakage > 0).all())


def test_needle_on_one_rank():
    """The only relevant token (position 90, page 5) lives on rank 1 of 2."""
    K, V, q = _data(96, 5, needle=90)              # page 5, chunk_pages 1: rank 1 of 2
    r = _merged(K, V, q, 2)
    assert rel_error(r.out[0], V[90].double().repeat_interleave(HQ // HKV, 0)) < 1e-3
    truth = torch.linalg.vector_norm(r.out[0] - _dense(K, V, q), dim=-1)
    assert bool((r.certified_error[0] >= truth).all())
    # the merge costs at most a few times the single-process bound (its eps is the rescoring's 2ε)
    assert bool((r.certified_error <= 4 * _single(K, V, q).certified_error.double()).all())
