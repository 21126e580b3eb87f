"""Each Triton kernel against its torch twin on identical inputs (exact grid data: keys bit-equal),
and the paged cache (summaries, hierarchy, layouts) against the reference cache; input validation.
Triton runs under TRITON_INTERPRET=1 on CPU; outputs are poisoned before launch."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from gpu_cases import build, poison_outputs  # noqa: F401 (autouse)
from helpers import assert_rel_close
from vashista_gpu import torch_path, triton_path
from vashista_gpu.decode import sparse_decode
from vashista_gpu.paged_cache import TorchPagedKVCache
from vashista_gpu.plan import plan_decode
from vashista_gpu.routing import route
from vashista_gpu.selection import tie_keys, top_indices
from vashista_core.errors import VashistaInputError

DEV = "cuda" if torch.cuda.is_available() else "cpu"



def test_tie_keys_follow_the_stable_sort():
    s = torch.tensor([[0.5, -0.0, 0.0, 2.0, 2.0, -1.0, float("-inf"), 0.5]])
    idx = torch.arange(8)[None]
    order = torch.sort(tie_keys(s, idx), descending=True).indices[0].tolist()
    assert order == np.argsort(-s[0].numpy(), kind="stable").tolist()
    assert top_indices(tie_keys(s, idx), 3).tolist() == [[0, 3, 4]]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_page_summary_kernel_matches_torch_and_reference(dtype):
    """Summaries after chunked appends (partial pages refreshed several times), both backends, vs the
    reference's summaries at every level."""
    ref, rids, a, ids, _, _ = build((29, 11), 2, 1, 8, 4, fanout=2, dtype=dtype, backend="triton", seed=4,
                                    chunk=3, device=DEV)
    _, _, b, _, _, _ = build((29, 11), 2, 1, 8, 4, fanout=2, dtype=dtype, backend="torch", seed=4, chunk=3,
                             device=DEV)
    for name in ("kmin", "kmax", "kmean", "vnorm"):
        assert torch.equal(getattr(a, name), getattr(b, name)), name
    for s, rs in zip(ids, rids):
        for lvl in range(ref.n_levels(rs)):
            for h in range(2):
                R = ref.summaries(rs, h, lvl)
                n = R.count.shape[0]
                if lvl == 0:
                    pt = torch.tensor(a.page_table(s), device=DEV)
                    got = (a.kmin[pt, h], a.kmax[pt, h], a.kmean[pt, h], a.vnorm[pt, h])
                else:
                    L = a.levels[lvl - 1]
                    got = (L["kmin"][s, :n, h], L["kmax"][s, :n, h], L["kmean"][s, :n, h], L["vnorm"][s, :n, h])
                for x, y, what in zip(got, (R.kmin, R.kmax, R.mean, R.vmax), ("kmin", "kmax", "kmean", "vnorm")):
                    assert_rel_close(x.double(), y, torch.float32, f"{what} level {lvl}")


@pytest.mark.parametrize("hier", [False, True])
def test_stage_kernels_match_torch(hier):
    """block scores (shared top level and per-head lower levels), dropped-block folding, token scores
    and the fused finish kernel, each on the same inputs as its torch twin."""
    _, _, c, ids, _, q = build((53, 38), 2, 4, 16, 4, fanout=2 if hier else None, dtype=torch.bfloat16,
                               backend="torch", seed=12, device=DEV)
    plan = plan_decode(c, ids, 8, 2, 9, scale=0.5, hierarchical=hier, sink_pages=1)
    q32 = q.float()
    calls = []

    def both_scores(plan_, q_, c_, level, parent):
        kt, ut, vt = torch_path.score_blocks(plan_, q_, c_, level, parent)
        kk, uk, vk = triton_path.score_blocks(plan_, q_, c_, level, parent)
        assert torch.equal(kt, kk), f"block keys differ at level {level}"
        v = kt != torch.iinfo(torch.int64).min           # bounds of non-existent blocks are unused
        assert torch.equal(ut[v], uk[v]) and torch.equal(vt[v], vk[v])
        calls.append(level)
        return kt, ut, vt

    def both_select(plan_, level, keys, ub, vn, Wl, acc):
        from vashista_gpu.routing import select_torch
        acc_k = {k: v.clone() for k, v in acc.items()}
        kept_t, ok_t = select_torch(plan_, level, keys, ub, vn, Wl, acc)
        kept_k, ok_k = triton_path.select(plan_, level, keys, ub, vn, Wl, acc_k)
        assert torch.equal(kept_t, kept_k) and torch.equal(ok_t, ok_k.bool())
        assert_rel_close(triton_path.fold_dropped(plan_, level, keys, keys.amax(-1, keepdim=True), ub, vn)[1]
                         .nan_to_num(neginf=0.0),
                         ub.masked_fill((keys >= keys.amax(-1, keepdim=True)) | (keys == torch.iinfo(torch.int64).min),
                                        float("-inf")).amax(-1)
                         .nan_to_num(neginf=0.0), torch.float32, "fold kernel")
        for k in acc:
            assert torch.equal(torch.isinf(acc[k]), torch.isinf(acc_k[k]))
            f = torch.isfinite(acc[k])
            assert_rel_close(acc_k[k][f], acc[k][f], torch.float32, f"select {k}")
        return kept_t, ok_t

    routed = route(plan, q32, c, both_scores, both_select)
    assert calls == list(range(plan.L - 1, -1, -1))
    st, kt = torch_path.score_tokens(plan, q32, c, routed)
    sk, kk = triton_path.score_tokens(plan, q32, c, routed)
    assert torch.equal(kt, kk) and torch.equal(st, sk)          # -inf where invalid, in both
    cvals, cpos = torch.topk(kt, plan.Kc, dim=-1, sorted=True)
    ft = torch_path.finish(plan, q32, c, routed, st, kt, cvals, cpos)
    fk = triton_path.finish(plan, q32, c, routed, sk, kk, cvals, cpos)
    for name in ("out", "weights", "certified_leakage", "certified_error", "gap", "max_score"):
        assert_rel_close(fk[name], ft[name], torch.float32, name)


def test_cache_layout_and_growth():
    c = TorchPagedKVCache(4, 1, 8, fanout=2, num_pages=6, max_seqs=2, dtype=torch.float32, device=DEV)
    s0, s1 = c.add_sequence(), c.add_sequence()
    k = torch.arange(9 * 8, dtype=torch.float32).view(9, 1, 8)
    c.append(s0, k[:5], k[:5])
    c.append(s1, k[:3], k[:3])
    c.append_step([s0, s1], k[5:7], k[5:7])
    assert (c.length(s0), c.length(s1), c.n_pages(s0), c.n_pages(s1)) == (6, 4, 2, 1)
    K, _ = c.gather(s0)
    assert torch.equal(K, torch.cat([k[:5], k[5:6]]).to(DEV))
    c.free_sequence(s1)
    s2 = c.add_sequence()
    assert c.length(s2) == 0 and len(c._free) == 6 - 2
    with pytest.raises(VashistaInputError, match="keys"):
        c.append(s2, torch.zeros(40, 1, 8), torch.zeros(40, 1, 8))      # pool exhausted
    assert c.length(s2) == 0                                             # nothing written


@pytest.mark.parametrize("bad, arg", [
    (dict(q=torch.full((1, 2, 8), float("nan"))), "q"),
    (dict(q=torch.ones(1, 2, 8, dtype=torch.int32)), "q"),
    (dict(q=torch.ones(2, 8)), "q"),
    (dict(q=torch.ones(1, 3, 8)), "q"),                 # 3 query heads, 2 KV heads
    (dict(q=torch.ones(1, 2, 4)), "q"),                 # wrong head dim
    (dict(P=0), "P"), (dict(Kc=0), "Kc"), (dict(Kc=100), "Kc"),
    (dict(sink_pages=-1), "sink_pages"), (dict(router="max"), "router"), (dict(solver="adam"), "solver"),
    (dict(scale=0.0), "scale"), (dict(scale=float("inf")), "scale"),
    (dict(seq_ids=[5]), "seq_ids"), (dict(seq_ids=[0, 0]), "seq_ids"),
    (dict(hierarchical=True), "hierarchical"), (dict(policy="dense"), "policy"), (dict(backend="cuda"), "backend"),
])
def test_bad_input_names_the_argument(bad, arg):
    c = TorchPagedKVCache(4, 2, 8, num_pages=8, max_seqs=2, dtype=torch.float32)
    s = c.add_sequence()
    c.append(s, torch.randn(10, 2, 8), torch.randn(10, 2, 8))
    kw = dict(q=torch.ones(1, 2, 8), seq_ids=[s], P=1, Kc=4)
    kw.update(bad)
    with pytest.raises(VashistaInputError) as e:
        sparse_decode(kw.pop("q"), c, kw.pop("seq_ids"), kw.pop("P"), kw.pop("Kc"), **kw)
    assert e.value.argument == arg


@pytest.mark.parametrize("ctor, arg", [
    (lambda: TorchPagedKVCache(0, 1, 8), "page_size"),
    (lambda: TorchPagedKVCache(4, 1, 8, dtype=torch.float64), "dtype"),
    (lambda: TorchPagedKVCache(4, 1, 8, fanout=1), "fanout"),
    (lambda: TorchPagedKVCache(4, 1, 8, backend="jax"), "backend"),
])
def test_bad_cache_arguments(ctor, arg):
    with pytest.raises(VashistaInputError) as e:
        ctor()
    assert e.value.argument == arg


def test_bad_appends():
    c = TorchPagedKVCache(4, 2, 8, num_pages=8, max_seqs=2, dtype=torch.float32)
    s = c.add_sequence()
    for k, v, arg in [(torch.ones(3, 2, 7), torch.ones(3, 2, 8), "keys"), (torch.ones(3, 2, 8), torch.ones(2, 2, 8), "values"),
                      (torch.full((3, 2, 8), float("inf")), torch.ones(3, 2, 8), "keys"),
                      (torch.ones(0, 2, 8), torch.ones(0, 2, 8), "keys")]:
        with pytest.raises(VashistaInputError) as e:
            c.append(s, k, v)
        assert e.value.argument == arg
    with pytest.raises(VashistaInputError) as e:
        c.append(7, torch.ones(1, 2, 8), torch.ones(1, 2, 8))
    assert e.value.argument == "seq_id"
    with pytest.raises(VashistaInputError) as e:
        sparse_decode(torch.ones(1, 2, 8), c, [s], 1, 1)                 # empty sequence
    assert e.value.argument == "cache"
