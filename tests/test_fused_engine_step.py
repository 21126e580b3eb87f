"""The engine's planned decode step (the path a CUDA graph captures) with the fused kernels —
one-launch append (``kernels/append_step.py``) and statistics (``kernels/step_stats.py``) — against
the same step as it ran before (page summary kernel + torch requantization, torch statistics):
identical tokens, identical cache
contents (pages, sketch codes and metadata, lengths) and statistics (counts and maxima exact, the
error sum to float64 rounding). CPU: Triton kernels under TRITON_INTERPRET=1 (tests/conftest.py)."""
from __future__ import annotations

import pytest
import torch

pytest.importorskip("transformers")


def _model():
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=128, hidden_size=128, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, head_dim=32, max_position_embeddings=256)
    cfg._attn_implementation = "sdpa"
    return LlamaForCausalLM(cfg).eval()


def _run(model, fused: bool, monkeypatch):
    from vashista_core.policies import DenseFallback
    from vashista_gpu.engine import Engine
    from vashista_gpu.kernels import append_step

    # the reference is the step as it ran before the fusion: the page summary kernel, then the torch
    # requantization (append_step_device's unfused branch) and the torch statistics
    monkeypatch.setattr(append_step, "fusable", (lambda cache: False) if not fused else append_step.fusable)

    eng = Engine(model, mode="certified", bits=4, budget=1 / 4, policy=DenseFallback(0.05), max_seqs=2,
                 max_tokens=80, graph=False)
    for p in eng.cache.pools:
        p.backend = "triton"
    eng.runner.cfg.planned = True              # the device-only path
    eng.runner.stats.fused = fused
    g = torch.Generator().manual_seed(1)
    prompts = [torch.randint(0, 128, (n,), generator=g).tolist() for n in (37, 20)]
    with eng:
        seqs = eng.add(prompts, max_new_tokens=4)
        eng.run(3)
        toks = [eng.tokens[s, :4].tolist() for s in seqs]
    return eng, toks


def test_fused_planned_step_equals_unfused_planned_step(monkeypatch):
    model = _model().to("cuda" if torch.cuda.is_available() else "cpu")   # compiled kernels on a GPU
    with monkeypatch.context() as m:
        a, ta = _run(model, False, m)
    b, tb = _run(model, True, monkeypatch)
    assert ta == tb
    for pa, pb in zip(a.cache.pools, b.cache.pools):
        assert torch.equal(pa.seq_lens, pb.seq_lens)
        held = torch.tensor(sorted({p for s in a.cache.seq_ids for p in pa.page_table(s)}))
        for name in ("k_pages", "v_pages"):
            assert torch.equal(getattr(pa, name)[held].nan_to_num(7.0), getattr(pb, name)[held].nan_to_num(7.0)), name
        assert torch.equal(pa.vnorm[held], pb.vnorm[held])
        sa, sb = pa.sketches[4], pb.sketches[4]
        for name in ("codes", "offset", "step"):
            assert torch.equal(getattr(sa, name)[held], getattr(sb, name)[held]), name
    ta_, tb_ = a.runner.stats.t, b.runner.stats.t
    exact = [0, 1, 2, 3, 5, 6, 7]
    assert torch.equal(ta_[:, exact], tb_[:, exact]) and ta_[:, 0].tolist() == [2 * 4 * 3] * 2   # rows · heads · steps per layer
    torch.testing.assert_close(tb_[:, 4], ta_[:, 4], rtol=1e-14, atol=0)
