"""The paged dense flash-decode kernel (``vashista_gpu.kernels.paged_dense``) against torch SDPA on
the gathered keys and values: odd lengths, partial last pages, shuffled physical pages, GQA with one
and several KV heads, explicit and default splits, the pairs (DenseFallback) mode patching only the
listed heads, empty serving slots, lengths that grow under a fixed launch, and bad input named.
Outputs are poisoned with NaN before the kernel writes them, so an unwritten head cannot pass."""
from __future__ import annotations

import math

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("triton")

from vashista_gpu.dense import sdpa_decode  # noqa: E402
from vashista_gpu.kernels.paged_dense import cache_dense_decode, paged_dense_decode  # noqa: E402
from vashista_gpu.paged_cache import TorchPagedKVCache  # noqa: E402
from vashista_core.errors import VashistaInputError  # noqa: E402

DEV = "cuda" if torch.cuda.is_available() else "cpu"


def _cache(lens, Hkv, D, Dv, page, seed, dtype=torch.float32, spare=0):
    g = torch.Generator().manual_seed(seed)
    ks = [torch.randn(T, Hkv, D, generator=g) * 1.5 for T in lens]
    vs = [torch.randn(T, Hkv, Dv, generator=g) for T in lens]
    cache, ids = TorchPagedKVCache.from_dense(ks, vs, page, shuffle_seed=seed, dtype=dtype, device=DEV,
                                             backend="torch", spare_pages=spare)
    return cache, ids


def _reference(q, cache, ids, scale):
    """SDPA in float64 on each sequence's gathered K/V (GQA by dense.sdpa_decode)."""
    out = []
    for b, s in enumerate(ids):
        k, v = cache.gather(s)
        out.append(sdpa_decode(q[b:b + 1].double(), k.permute(1, 0, 2)[None].double(),
                               v.permute(1, 0, 2)[None].double(), scale)[0])
    return torch.stack(out)


def _poisoned(B, Hq, Dv, dtype):
    return torch.full((B, Hq, Dv), float("nan"), dtype=dtype, device=DEV)


@pytest.mark.parametrize("lens,Hkv,G,D,Dv,page,splits", [
    ([37, 1, 100], 2, 3, 16, 16, 16, None),     # odd lengths, a 1-token row, partial pages, GQA
    ([70, 129], 1, 4, 32, 16, 8, 3),             # one KV head for 4 query heads, several splits
    ([64, 65], 2, 1, 16, 32, 16, 5),             # MHA, Dv != D, a split boundary on a page boundary
])
def test_dense_matches_sdpa(lens, Hkv, G, D, Dv, page, splits):
    cache, ids = _cache(lens, Hkv, D, Dv, page, seed=len(lens) + G)
    B, Hq = len(lens), Hkv * G
    q = torch.randn(B, Hq, D, generator=torch.Generator().manual_seed(1)).to(DEV)
    seq_idx = torch.tensor(ids, dtype=torch.int32, device=DEV)
    out = _poisoned(B, Hq, Dv, torch.float32)
    scale = 0.3
    paged_dense_decode(q, cache.k_pages, cache.v_pages, cache.block_table, seq_idx, cache.seq_lens,
                       max_tokens=max(lens) + 7, scale=scale, out=out, num_splits=splits, block_n=16)
    ref = _reference(q, cache, ids, scale)
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out.double().cpu(), ref.cpu(), rtol=2e-5, atol=2e-5)


def test_batch_rows_in_any_order_and_default_scale():
    """Batch row b reads sequence seq_idx[b], not sequence b; default scale is 1/sqrt(D)."""
    cache, ids = _cache([23, 90, 41], 2, 16, 16, 16, seed=5)
    order = [ids[2], ids[0], ids[1]]
    q = torch.randn(3, 4, 16, generator=torch.Generator().manual_seed(2)).to(DEV)
    out = cache_dense_decode(q, cache, torch.tensor(order, dtype=torch.int32, device=DEV), max_tokens=96,
                             block_n=16)
    torch.testing.assert_close(out.double().cpu(), _reference(q, cache, order, 1 / math.sqrt(16)).cpu(),
                               rtol=2e-5, atol=2e-5)


def test_bf16_pool_matches_sdpa_at_bf16_accuracy():
    cache, ids = _cache([77, 50], 2, 32, 32, 16, seed=3, dtype=torch.bfloat16)
    q = torch.randn(2, 4, 32, generator=torch.Generator().manual_seed(3)).to(DEV, torch.bfloat16)
    out = cache_dense_decode(q, cache, torch.tensor(ids, dtype=torch.int32, device=DEV), max_tokens=80,
                             block_n=16)
    assert out.dtype == torch.bfloat16
    ref = _reference(q, cache, ids, 1 / math.sqrt(32))
    # bf16 scores and probabilities (as SDPA's flash kernel): a few bf16 ulps of the output scale
    torch.testing.assert_close(out.double().cpu(), ref.cpu(), rtol=2e-2, atol=2e-2)


def test_pairs_patch_only_listed_heads():
    lens, Hkv, G, D = [45, 113], 2, 2, 16
    cache, ids = _cache(lens, Hkv, D, D, 16, seed=7)
    B, Hq = 2, Hkv * G
    q = torch.randn(B, Hq, D, generator=torch.Generator().manual_seed(4)).to(DEV)
    seq_idx = torch.tensor(ids, dtype=torch.int32, device=DEV)
    pairs = torch.tensor([[1, 3], [-1, -1], [0, 0], [1, 0], [-1, -1]], dtype=torch.int32, device=DEV)
    out = _poisoned(B, Hq, D, torch.float32)
    paged_dense_decode(q, cache.k_pages, cache.v_pages, cache.block_table, seq_idx, cache.seq_lens,
                       max_tokens=128, out=out, pairs=pairs, num_splits=2, block_n=16)
    ref = _reference(q, cache, ids, 1 / math.sqrt(D)).cpu()
    listed = {(1, 3), (0, 0), (1, 0)}
    for b in range(B):
        for h in range(Hq):
            if (b, h) in listed:
                torch.testing.assert_close(out[b, h].double().cpu(), ref[b, h], rtol=2e-5, atol=2e-5)
            else:
                assert torch.isnan(out[b, h]).all(), f"({b}, {h}) is not listed and must stay untouched"


def test_empty_slot_gives_zero_and_lengths_grow_under_one_launch_shape():
    """A freed serving slot (length 0) yields 0, not NaN; appending tokens and relaunching with the
    same max_tokens and splits (what a graph replay does) attends to the new tokens."""
    cache, ids = _cache([30, 20], 1, 16, 16, 16, seed=9, spare=4)
    cache.free_sequence(ids[1])
    seq_idx = torch.tensor(ids, dtype=torch.int32, device=DEV)
    q = torch.randn(2, 2, 16, generator=torch.Generator().manual_seed(5)).to(DEV)
    launch = dict(max_tokens=64, num_splits=2, block_n=16)
    out = cache_dense_decode(q, cache, seq_idx, out=_poisoned(2, 2, 16, torch.float32), **launch)
    assert (out[1] == 0).all()
    torch.testing.assert_close(out[0].double().cpu(), _reference(q[:1], cache, ids[:1], 0.25)[0].cpu(),
                               rtol=2e-5, atol=2e-5)
    g = torch.Generator().manual_seed(6)
    cache.append(ids[0], torch.randn(25, 1, 16, generator=g).to(DEV), torch.randn(25, 1, 16, generator=g).to(DEV))
    out = cache_dense_decode(q, cache, seq_idx, out=_poisoned(2, 2, 16, torch.float32), **launch)
    torch.testing.assert_close(out[0].double().cpu(), _reference(q[:1], cache, ids[:1], 0.25)[0].cpu(),
                               rtol=2e-5, atol=2e-5)


def test_bad_input_named():
    cache, ids = _cache([20], 2, 16, 16, 16, seed=11)
    seq_idx = torch.tensor(ids, dtype=torch.int32, device=DEV)
    q = torch.randn(1, 2, 16, device=DEV)
    assert cache_dense_decode(q, cache, seq_idx, max_tokens=32, block_n=16).shape == (1, 2, 16)
    with pytest.raises(VashistaInputError, match="out"):
        cache_dense_decode(q, cache, seq_idx, max_tokens=32,
                           pairs=torch.full((2, 2), -1, dtype=torch.int32, device=DEV))
    with pytest.raises(VashistaInputError, match="pairs"):
        cache_dense_decode(q, cache, seq_idx, max_tokens=32, out=torch.zeros(1, 2, 16, device=DEV),
                           pairs=torch.zeros(2, 3, dtype=torch.int32, device=DEV))
    with pytest.raises(VashistaInputError, match="max_tokens"):
        cache_dense_decode(q, cache, seq_idx, max_tokens=10 ** 6)
    with pytest.raises(VashistaInputError, match="seq_idx"):
        cache_dense_decode(q, cache, seq_idx.long(), max_tokens=32)
    with pytest.raises(VashistaInputError, match="out"):
        cache_dense_decode(q, cache, seq_idx, max_tokens=32, out=torch.zeros(1, 2, 8, device=DEV))
    with pytest.raises(VashistaInputError, match="q"):
        cache_dense_decode(torch.randn(1, 3, 16, device=DEV), cache, seq_idx, max_tokens=32)
    with pytest.raises(VashistaInputError, match="q"):
        cache_dense_decode(torch.randn(1, 2, 8, device=DEV), cache, seq_idx, max_tokens=32)


def test_crossover_lookup_for_auto_mode():
    """engine/dense_paged.crossover_context: the entry of the same shape with the largest measured
    batch <= B; never crossed -> inf (auto stays dense); unmeasured shape -> None; the shipped table
    parses and names its card."""
    from transformers import LlamaConfig

    from vashista_gpu.engine.dense_paged import crossover_context, load_table, shape_key

    cfg = LlamaConfig(num_hidden_layers=2, hidden_size=64, num_attention_heads=4, num_key_value_heads=2, head_dim=16)
    key = shape_key(cfg)
    assert key == dict(layers=2, hidden=64, q_heads=4, kv_heads=2, head_dim=16)
    table = {"entries": [dict(shape=key, batch=1, variant="ours_cert_int4_g16", crossover_context=None),
                         dict(shape=key, batch=4, variant="ours_cert_int4_g16", crossover_context=30000),
                         dict(shape=key, batch=16, variant="ours_cert_int4_g16", crossover_context=9000),
                         dict(shape=key, batch=4, variant="ours_paged", crossover_context=100)]}
    assert crossover_context(cfg, 1, table=table) == math.inf
    assert crossover_context(cfg, 8, table=table) == 30000
    assert crossover_context(cfg, 64, table=table) == 9000
    assert crossover_context(cfg, 4, variant="ours_paged", table=table) == 100
    assert crossover_context(cfg, 2, variant="ours_paged", table=table) is None
    other = LlamaConfig(num_hidden_layers=3, hidden_size=64, num_attention_heads=4, num_key_value_heads=2, head_dim=16)
    assert crossover_context(other, 4, table=table) is None
    with pytest.raises(VashistaInputError, match="batch"):
        crossover_context(cfg, 0, table=table)
    shipped = load_table()
    assert shipped["card"] and shipped["date"] and shipped["entries"]
