"""The context-parallel certified step (``vashista_gpu.distributed``) as stress tiers, so that its merge
is checked against exact attention like every single-GPU step (docs/ROUNDING.md, "Issue 15 audit"):

    cp-torch-fp32/bf16/fp16          ``cp_certified_decode`` (torch path, global selection), the case's
                                     sequences sharded over 1–3 simulated ranks (page round-robin),
                                     cache and query in the tier's dtype

The ranks run the real step, one thread each, in this process: the step's two collectives
(``all_gather_states``) are replaced for the duration of the call by a barrier over the threads that
returns every rank's tensor stacked in rank order — what ``torch.distributed.all_gather`` returns —
so no process group is needed and the merge, selection and certificate code is the shipped one. Every
rank must return the same result (checked). The router of the case is not read: the step is the
sketch step (``bits`` = the case's, else 4).
"""
from __future__ import annotations

import threading

import numpy as np
import torch

from tiers import TierResult, register
from tiers_gpu_steps import DTYPES, _stored


class _ThreadGroup:
    """A 'process group' of ``world`` threads: rank = the thread's index; ``gather`` = all_gather."""

    def __init__(self, world: int):
        self.world = world
        self.slots = [None] * world
        self.barrier = threading.Barrier(world, timeout=120)
        self.local = threading.local()

    def gather(self, packed: torch.Tensor, group=None, out=None) -> torch.Tensor:
        self.slots[self.local.rank] = packed.contiguous()
        self.barrier.wait()                     # every rank has written its slot
        res = torch.stack(self.slots)
        self.barrier.wait()                     # every rank has read them: the slots may be reused
        return res


def _world(case) -> int:
    return 1 + case.seed % 3


def cp_step(case, dtype) -> TierResult:
    import vashista_gpu.distributed.step as step_mod
    from vashista_core.errors import VashistaInputError
    from vashista_gpu.distributed import ShardedCache, ShardLayout, cp_certified_decode
    from vashista_gpu.paged_cache import TorchPagedKVCache

    big = float(torch.finfo(dtype).max)
    for a in (*case.keys, *case.values, case.q):
        if np.abs(a).max() > big:     # the cache (or the query's dtype) cannot hold it: the append refuses
            raise VashistaInputError("keys", f"numbers beyond the range of {dtype}")
        _stored(a, dtype)
    world, B = _world(case), case.q.shape[0]
    Hkv, D = case.keys[0].shape[1:]
    Dv = case.values[0].shape[2]
    grp = _ThreadGroup(world)
    results, errors = [None] * world, []

    def rank_main(rank):
        grp.local.rank = rank
        try:
            cache = TorchPagedKVCache(case.page_size, Hkv, D, Dv, dtype=dtype, max_seqs=B,
                                      num_pages=sum(-(-k.shape[0] // case.page_size) for k in case.keys) + 1)
            sh = ShardedCache(cache, ShardLayout(world, case.page_size), rank)
            for b in range(B):
                sh.add_sequence(b)
                sh.append(b, torch.from_numpy(case.keys[b]).to(dtype), torch.from_numpy(case.values[b]).to(dtype))
            results[rank] = cp_certified_decode(torch.from_numpy(case.q).to(dtype), sh, list(range(B)), case.Kc,
                                                bits=case.bits or 4, scale=case.scale, group=grp)
        except BaseException as exc:       # noqa: BLE001 — re-raised below, in the caller's thread
            errors.append(exc)
            grp.barrier.abort()             # the other ranks stop waiting

    saved = step_mod.all_gather_states
    step_mod.all_gather_states = grp.gather
    try:
        threads = [threading.Thread(target=rank_main, args=(r,)) for r in range(world)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        step_mod.all_gather_states = saved
    real = [e for e in errors if not isinstance(e, threading.BrokenBarrierError)]
    if errors:
        raise (real or errors)[0]
    r = results[0]
    for other in results[1:]:
        for f in ("out", "certified_error", "certified_leakage"):
            a, b = getattr(other, f), getattr(r, f)
            assert bool(((a == b) | (a.isnan() & b.isnan())).all()), f"the ranks disagree on {f}: {a} vs {b}"
    cand = r.candidates.cpu().numpy()
    return TierResult(r.out.double().cpu().numpy(), r.certified_error.double().cpu().numpy(),
                      r.certified_leakage.double().cpu().numpy(), [[c[c >= 0] for c in row] for row in cand])


def _make(name):
    def tier(case):
        return cp_step(case, DTYPES[name])
    tier.__doc__ = f"vashista_gpu.distributed cp_certified_decode on 1-3 simulated ranks, {name} cache and query"
    return tier


for _name in DTYPES:
    register(f"cp-torch-{_name}")(_make(_name))


FUSED_PAGE = 16          # the fused scan's token blocks (sketch_plan.fused_shapes_ok)
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"     # the fused kernels: CUDA, or the interpreter


def cp_fused_step(case) -> TierResult:
    """``cp_fused_step``'s arithmetic (per-rank ``fused_shard_state``, ``merge``, ``certificate``) on
    simulated ranks: the collective only stacks the states, so the states are stacked here. float32
    cache and query, pages of 16 tokens (the fused scan's), 4-bit sketch (8 where D·4 is not a multiple
    of 32); world and Kc are cut so that every rank's shard of every sequence holds ≥ Kc tokens (what
    the fused terms require). Only the error is checked: the merged result does not list the candidates
    the kernels selected (local selection), and the leakage enters the error bound anyway."""
    from tiers import Unsupported
    from vashista_core.errors import VashistaInputError
    from vashista_gpu.distributed import ShardedCache, ShardLayout, certificate, merge
    from vashista_gpu.distributed.fused_terms import fused_shard_state
    from vashista_gpu.paged_cache import TorchPagedKVCache
    from vashista_gpu.sketch_plan import plan_sketch_step

    B, Hq, D = case.q.shape
    Hkv, Dv = case.keys[0].shape[1], case.values[0].shape[2]
    bits = 4 if (4 * D) % 32 == 0 else 8
    if D & (D - 1) or (bits * D) % 32:
        raise Unsupported(f"head dimension {D}: the fused scan needs a power of two with D·bits % 32 == 0")
    big = float(torch.finfo(torch.float32).max)
    for a in (*case.keys, *case.values, case.q):
        if np.abs(a).max() > big:
            raise VashistaInputError("keys", "numbers beyond the range of torch.float32")
        _stored(a, torch.float32)
    shortest = min(k.shape[0] for k in case.keys)
    world = max(1, min(_world(case), shortest // FUSED_PAGE))
    layout = ShardLayout(world, FUSED_PAGE)
    Kc = min(case.Kc, min(layout.local_length(r, k.shape[0]) for r in range(world) for k in case.keys))
    states = []
    for rank in range(world):
        cache = TorchPagedKVCache(FUSED_PAGE, Hkv, D, Dv, dtype=torch.float32, max_seqs=B, device=DEVICE,
                                  num_pages=sum(-(-k.shape[0] // FUSED_PAGE) for k in case.keys) + 1)
        sh = ShardedCache(cache, layout, rank)
        for b in range(B):
            sh.add_sequence(b)
            sh.append(b, torch.from_numpy(case.keys[b]).float(), torch.from_numpy(case.values[b]).float())
        plan = plan_sketch_step(cache, list(range(B)), Hq, Kc, bits=bits, scale=case.scale)
        states.append(fused_shard_state(plan, torch.from_numpy(case.q).float().to(DEVICE)))
    r = certificate(merge(torch.stack(states)))
    return TierResult(r.out.double().cpu().numpy(), r.certified_error.double().cpu().numpy(),
                      r.certified_leakage.double().cpu().numpy(), None)


def register_fused() -> str:
    """Register ``cp-fused-fp32`` (Triton: CUDA, or TRITON_INTERPRET=1 for a few cases on CPU)."""
    register("cp-fused-fp32")(cp_fused_step)
    return "cp-fused-fp32"
