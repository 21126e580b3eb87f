"""Context-parallel certified decode (vashista_gpu.distributed) against the single-process step.

2 and 4 gloo processes (torch.multiprocessing.spawn, file:// rendezvous) each run every case once per
world size (spawning dominates the cost); the parent compares their results with the single-process
certified step (``sketch.certified_decode`` on the whole sequence, with the single-process cache's
page sketch) and with exact dense attention in float64:

* the same candidates as sets (global selection; the tie rule included: a case has tied keys);
* outputs within the tolerance table (tests/helpers.py) of the single-process step's;
* the merged certified error ≥ ‖out − dense‖ (the truth, float64) for every head;
* every rank returns the same result.

Cases: unequal shard lengths, an empty shard, GQA, one rank holding the only relevant token, tokens
added by decode steps (owner rank), local selection, and the policies (dense fallback, Capped).
"""
from __future__ import annotations

import math
import os

import pytest
import torch

from helpers import assert_rel_close, rel_error
from vashista_core.errors import VashistaInputError
from vashista_core.policies import Capped, DenseFallback
from vashista_gpu.distributed import ShardedCache, ShardLayout, cp_certified_decode, merge
from vashista_gpu.distributed.merge import ShardState, certificate
from vashista_gpu.paged_cache import TorchPagedKVCache
from vashista_gpu.sketch import attach_sketch, certified_decode

S, HKV, HQ, D = 16, 2, 4, 16


def case(name: str) -> dict:
    """Deterministic inputs of one case: whole sequences (keys, values) per batch row, q, Kc, layout,
    decode-step tokens appended after the prefill, and the step's keyword arguments."""
    g = torch.Generator().manual_seed(sum(map(ord, name)))
    rnd = lambda *s: torch.randn(*s, generator=g)  # noqa: E731
    c = dict(chunk_pages=1, steps=0, kw={})
    if name == "unequal":           # lengths 200, 77, 20: unequal shards; 20 tokens leave ranks 2, 3 empty
        c.update(lens=[200, 77, 20], Kc=12)
    elif name == "ties":            # duplicated keys: equal sketch scores across shards, the tie rule decides
        c.update(lens=[160], Kc=10, chunk_pages=2)
    elif name == "needle":          # one relevant token, on the last page of the sequence
        c.update(lens=[192], Kc=4)
    elif name == "decode":          # prefill, then tokens appended one step at a time (owner rank)
        c.update(lens=[90, 60], Kc=8, steps=20)
    elif name == "local":
        c.update(lens=[200, 77], Kc=12, kw=dict(selection="local"))
    elif name == "float64":
        c.update(lens=[130], Kc=16, kw=dict(compute_dtype=torch.float64))
    elif name == "fallback":        # row 0 has a needle (certified), row 1 does not (falls back)
        c.update(lens=[200, 50], Kc=4, kw=dict(policy=DenseFallback(0.2)))
    elif name == "capped":          # Kc widened 4 -> 8 -> 16 for the uncertified heads, then dense
        c.update(lens=[200, 50], Kc=4, kw=dict(policy=Capped(0.2, 1, 16)))
    seqs = []
    for T in c["lens"]:
        K, V = rnd(T + c["steps"], HKV, D), rnd(T + c["steps"], HKV, D)
        if name == "ties":
            K[80:160] = K[0:80]
        seqs.append((K, V))
    q = 1.5 * rnd(len(c["lens"]), HQ, D)
    if name in ("needle", "fallback", "capped"):
        K, V = seqs[0]
        K.mul_(0.1)
        K[185] = 4 * q[0].view(HKV, HQ // HKV, D).mean(1)
    c.update(seqs=seqs, q=q)
    return c


CASES = ("unequal", "ties", "needle", "decode", "local", "float64", "fallback", "capped")


def _shards(c, world, rank):
    cache = TorchPagedKVCache(S, HKV, D, dtype=torch.float32, num_pages=64, max_seqs=4)
    sh = ShardedCache(cache, ShardLayout(world, S, c["chunk_pages"]), rank)
    for b, (K, V) in enumerate(c["seqs"]):
        sh.add_sequence(b)
        sh.append(b, K[: c["lens"][b]], V[: c["lens"][b]])
    for t in range(c["steps"]):
        ids = list(range(len(c["seqs"])))
        pos = [c["lens"][b] + t for b in ids]
        sh.append_step(ids, torch.stack([c["seqs"][b][0][p] for b, p in zip(ids, pos)]),
                       torch.stack([c["seqs"][b][1][p] for b, p in zip(ids, pos)]))
    return sh


def _worker(rank: int, world: int, tmp: str) -> None:
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{tmp}/rendezvous", rank=rank, world_size=world)
    results = {}
    for name in CASES:
        c = case(name)
        r = cp_certified_decode(c["q"], _shards(c, world, rank), list(range(len(c["seqs"]))), c["Kc"], bits=4,
                                **c["kw"])
        results[name] = {f: getattr(r, f) for f in ("out", "certified_error", "certified_leakage", "gap",
                                                    "fell_back", "candidates", "Kc_used", "certified")}
    torch.save(results, os.path.join(tmp, f"rank{rank}.pt"))
    dist.destroy_process_group()


@pytest.fixture(scope="module", params=[2, 4], ids=lambda w: f"world{w}")
def runs(request, tmp_path_factory):
    """Every case on ``world`` gloo processes: the results of each rank."""
    world = request.param
    tmp = str(tmp_path_factory.mktemp(f"cp{world}"))
    torch.multiprocessing.spawn(_worker, args=(world, tmp), nprocs=world, join=True)
    return world, [torch.load(os.path.join(tmp, f"rank{r}.pt")) for r in range(world)]


def _single(c, b, Kc=None):
    """Single-process certified step (at ``Kc``, default the case's) and float64 dense attention for
    batch row b (whole sequence)."""
    K, V = c["seqs"][b]
    cache = TorchPagedKVCache(S, HKV, D, dtype=torch.float32, num_pages=64, max_seqs=1)
    cache.add_sequence(0)
    cache.append(0, K, V)
    sk = attach_sketch(cache, 4).sequence_sketch(cache, 0)
    Kh, Vh = K.permute(1, 0, 2), V.permute(1, 0, 2)
    kw = {k: v for k, v in c["kw"].items() if k == "compute_dtype"}
    sp = certified_decode(c["q"][b], Kh, Vh, sk, Kc or c["Kc"], **kw)
    q = c["q"][b].double().view(HKV, HQ // HKV, D)
    w = torch.softmax(q @ Kh.double().transpose(1, 2) / math.sqrt(D), dim=-1)
    return sp, (w @ Vh.double()).reshape(HQ, -1)


@pytest.mark.parametrize("name", [n for n in CASES if n != "local"])
def test_matches_single_process(runs, name):
    world, res = runs
    c = case(name)
    r = res[0][name]
    for b in range(len(c["seqs"])):
        sp, dense = _single(c, b)
        single = {}                     # Kc -> the single-process step at that Kc (Capped widens some heads)
        for h in range(HQ):
            kc = int(r["Kc_used"][b, h])
            if kc not in single:
                single[kc] = sp if kc == c["Kc"] else _single(c, b, kc)[0]
            assert set(r["candidates"][b, h, :kc].tolist()) == set(single[kc].candidates[h].tolist()), (name, b, h)
            keep = not bool(r["fell_back"][b, h])
            if keep:
                dt = c["kw"].get("compute_dtype", torch.float32)
                assert_rel_close(r["out"][b, h], single[kc].out[h].to(r["out"].dtype), dt, f"{name} row {b} head {h}")
            else:                       # fallen back: the dense output
                assert_rel_close(r["out"][b, h], dense[h].float(), torch.float32, f"{name} fallback")
        keep = ~r["fell_back"][b]
        truth = torch.linalg.vector_norm(r["out"][b].double() - dense, dim=-1)
        assert bool((r["certified_error"][b][keep] >= truth[keep]).all()), (name, b, r["certified_error"][b], truth)


def test_needle_on_one_rank(runs):
    """The only relevant token (position 185: page 11, rank 11 mod world) lives on one rank: every head
    selects it and the output is its value."""
    world, res = runs
    c = case("needle")
    r = res[0]["needle"]
    assert bool((r["candidates"][0] == 185).any(-1).all())
    V = c["seqs"][0][1]
    target = V[185].repeat_interleave(HQ // HKV, 0)
    assert rel_error(r["out"][0], target) < 0.05
    assert bool((r["certified_error"][0] < 0.2).all())


def test_policies_take_their_paths(runs):
    """DenseFallback: row 0 certified, some heads of row 1 fall back; Capped: some heads widen Kc
    (certified by it or not), the rest keep Kc = 4."""
    world, res = runs
    r = res[0]["fallback"]
    assert bool(r["fell_back"].any()) and not bool(r["fell_back"].all())
    r = res[0]["capped"]
    assert bool((r["Kc_used"] > 4).any()) and bool((r["Kc_used"] == 4).any()) and bool((r["Kc_used"] <= 16).all())
    assert bool((r["certified"] | r["fell_back"]).all())


def test_local_selection_superset_and_sound(runs):
    """selection="local": each rank keeps its local top-Kc; their union contains the global top-Kc."""
    world, res = runs
    c = case("local")
    for b in range(len(c["seqs"])):
        sp, dense = _single(c, b)
        for h in range(HQ):
            union = set().union(*(set(res[k]["local"]["candidates"][b, h].tolist()) for k in range(world))) - {-1}
            assert set(sp.candidates[h].tolist()) <= union
        r = res[0]["local"]
        truth = torch.linalg.vector_norm(r["out"][b].double() - dense, dim=-1)
        assert bool((r["certified_error"][b] >= truth).all())


def test_ranks_agree(runs):
    world, res = runs
    for name in CASES:
        for k in range(1, world):
            for f in ("out", "certified_error", "certified_leakage", "gap", "fell_back"):
                assert torch.equal(res[0][name][f], res[k][name][f]), (name, f, k)


# ------------------------------------------------------------------------------ without processes
@pytest.mark.parametrize("world,chunk", [(1, 1), (3, 1), (4, 2)])
def test_layout_partitions_positions(world, chunk):
    lay = ShardLayout(world, 4, chunk)
    for total in (0, 3, 8, 37):
        seen = torch.cat([lay.local_to_global(r, torch.arange(lay.local_length(r, total))) for r in range(world)])
        assert sorted(seen.tolist()) == list(range(total))
        for r in range(world):
            pos = lay.local_to_global(r, torch.arange(lay.local_length(r, total)))
            assert all(lay.owner(int(p)) == r for p in pos) and bool((pos.diff() > 0).all())


def test_merge_of_split_equals_whole():
    """Splitting a candidate set over ranks and merging gives the whole set's state (float64)."""
    g = torch.Generator().manual_seed(3)
    s, v = 30 * torch.randn(2, 3, 40, generator=g, dtype=torch.float64), torch.randn(2, 3, 40, 5, generator=g,
                                                                                     dtype=torch.float64)

    def state(lo, hi):
        m = s[..., lo:hi].amax(-1)
        w = torch.exp(s[..., lo:hi] - m[..., None])
        z = torch.zeros_like(m)
        return ShardState(m=m, l=w.sum(-1), o=(w[..., None] * v[..., lo:hi, :]).sum(-2), log_zc=m + torch.log(w.sum(-1)),
                          log_zout=torch.full_like(m, -math.inf), vmax_c=z + 10, vmax_out=z, eps=z, o_rnd=z,
                          lb_max=m, ub_max=torch.full_like(m, -math.inf)).pack()

    merged = merge(torch.stack([state(0, 7), state(7, 31), state(31, 40)]))
    whole = ShardState.unpack(state(0, 40))
    assert_rel_close(merged.o / merged.l[..., None], whole.o / whole.l[..., None], torch.float64)
    assert bool((merged.log_zc <= whole.log_zc).all())
    r = certificate(merged)
    assert bool((r.certified_leakage == 0).all()) and bool((r.certified_error < 1e-9).all())


def test_bad_input_names_the_argument():
    c = case("unequal")
    sh = _shards(c, 1, 0)
    with pytest.raises(VashistaInputError, match="Kc"):
        cp_certified_decode(c["q"], sh, [0, 1, 2], 21)
    with pytest.raises(VashistaInputError, match="policy"):
        cp_certified_decode(c["q"], sh, [0, 1, 2], 4, policy="dense")
    with pytest.raises(VashistaInputError, match="Kc_max"):
        cp_certified_decode(c["q"], sh, [0, 1, 2], 8, policy=Capped(0.1, 1, 4))
    with pytest.raises(VashistaInputError, match="selection"):
        cp_certified_decode(c["q"], sh, [0, 1, 2], 4, selection="all")
    with pytest.raises(VashistaInputError, match="seq_ids"):
        cp_certified_decode(c["q"], sh, [0, 1], 4)
    with pytest.raises(VashistaInputError, match="rank"):
        ShardedCache(sh.local, ShardLayout(2, S), 2)
    with pytest.raises(VashistaInputError, match="keys"):
        sh.append_step([0, 1], torch.randn(3, HKV, D), torch.randn(3, HKV, D))
