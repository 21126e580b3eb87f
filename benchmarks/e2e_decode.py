"""End-to-end decode throughput, gpt-fast style: whole-model decode steps of real model shapes with
random bf16 weights (decode speed does not depend on the weights), dense baselines and Vashista's
engine in the same process, on the same card.

Variants (each a full model step: embedding, every layer's projections, RoPE, cache append,
attention, MLP, LM head, argmax):

  hf_eager_sdpa       transformers' forward with a DynamicCache, SDPA attention, eager (what users
                      have today); one host round trip per token
  graph_sdpa_<b>      a static contiguous KV cache (B, Hkv, T_max, D) per layer and the whole step
                      captured in one CUDA graph, SDPA pinned to backend <b> (flash, cudnn, efficient;
                      GQA as G query positions of one KV head, so every backend applies); the best of
                      them is "best dense" for that shape (issue 14: name it)
  graph_flashinfer    the same step with FlashInfer's batch decode (fa2, planned once, CUDA-graph
                      buffers) over HND pages of 16 tokens; FlashInfer is staged here
                      (scripts/stage_flashinfer_for_device.sh) and JIT-built on the device
                      (``source benchmarks/flashinfer_env.sh``), its output checked against SDPA
                      before it is timed; not in the default set (its first plan compiles, ~minutes)
  ours_dense          the engine's dense mode: paged flash-decode straight from our paged cache
  ours_cert_int4_g16  engine certified mode, int4 sketch, group = page = 16, Kc fixed (--kc)
  ours_cert_int8_g64  engine certified mode, int8 sketch, group = page = 64
  ours_cert_int4_g32, ours_cert_int4_g64   int4 with groups = pages of 32 / 64 (not in the default set)
  ours_cert_int4_g16_2s, ours_cert_int4_g32_2s, ours_cert_int8_g64_2s   two-sided token bounds
                      (Engine(one_sided=False), CUDA only; not in the default set)
  ours_paged          engine paged mode (page-box router), page 16, the same Kc
  ours_cert_int4_g16+df  the int4 step with the device DenseFallback at a tolerance nothing exceeds:
                      the policy's fixed cost inside the graph
All graph variants time replays only (CUDA events around --steps replays after capture); ours are the
engine's own captured step (``Engine.step`` under ``cuda_graph.capture``), report-only: on random
weights attention is near uniform and certificates say "uncertified", so certified runs are timed
with ReportOnly and the fallback rate is measured on real weights elsewhere.

The caches are filled with random K/V instead of a prefill (prefilling 128k tokens of 16 rows would
cost the device budget and does not change a decode step): the dense caches by ``normal_``, ours by
one ``append`` per sequence into layer 0's pool (summaries and sketch computed by the cache's own
kernels) and a copy of that pool's state into the other layers (identical page tables: every layer's
pool allocated the same pages).

Bytes per step: weights (every matrix read once; the embedding only one row per token) + attention
bytes: dense K+V of every token; certified the sketch of every token (codes + per-group metadata, from
the cache's own ``nbytes``) + Kc key and value rows per query head; paged the page summaries + P
pages + Kc rows. The floor ratio dense/ours is the speed-up ceiling at equal bandwidth.

``--compile`` gives the graph variants (graph_sdpa_* and ours) the same torch.compile treatment of the
layers' work outside attention (``vashista_gpu/engine/compiled.py``); the first steps compile.

``--profile`` replaces the timing by device time per part of one eager engine step (torch.profiler,
the parts wrapped in ranges) and the top kernels; ``--tune-dense`` first sweeps the paged dense
kernel's launch options against SDPA flash; ``--table e2e.json`` prints the RESULTS.md table.

Output under --out: e2e.json (every measurement and the configuration), e2e.csv, crossover.json (the
smallest context where a Vashista mode beats the best dense graph, per shape and batch), and
tokens_per_s.png. The JSON's env says whether FlashInfer was importable.

    python benchmarks/e2e_decode.py --out benchmarks/results/e2e_h200 --quick
"""
from __future__ import annotations

import argparse
import csv
import gc
import importlib.util
import json
import math
import os
import sys
import time
import traceback

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

SHAPES = {
    # Llama-3.2-1B / Llama-3.1-8B shapes (/work/shared/OFFLINE-RESOURCES.md)
    "llama-1b": dict(num_hidden_layers=16, hidden_size=2048, num_attention_heads=32, num_key_value_heads=8,
                     head_dim=64, intermediate_size=8192, vocab_size=128256),
    "llama-8b": dict(num_hidden_layers=32, hidden_size=4096, num_attention_heads=32, num_key_value_heads=8,
                     head_dim=128, intermediate_size=14336, vocab_size=128256),
    "tiny": dict(num_hidden_layers=2, hidden_size=64, num_attention_heads=4, num_key_value_heads=2,
                 head_dim=16, intermediate_size=128, vocab_size=256),
}
GRAPH_BACKENDS = ("flash", "cudnn", "efficient")
# the targets first (128k), then auto mode's 8k, then 32k for the crossover; 8B batch 16 at
# 128k would need 256 GiB of KV
PRIORITY = ",".join(["llama-1b:131072:1", "llama-1b:131072:4", "llama-1b:131072:16", "llama-8b:131072:1",
                     "llama-8b:131072:4", "llama-1b:8192:1", "llama-1b:8192:4", "llama-1b:8192:16",
                     "llama-8b:8192:1", "llama-8b:8192:4", "llama-1b:32768:1", "llama-1b:32768:4",
                     "llama-1b:32768:16", "llama-8b:32768:1", "llama-8b:32768:4"])
OURS = ("ours_dense", "ours_cert_int4_g16", "ours_cert_int8_g64", "ours_paged", "ours_cert_int4_g16+df")
# variant -> (engine mode, sketch bits, page size = quantization group, one-sided token bounds). int4
# with pages of 32 / 64 tokens (not in the default set): fewer per-page setups in the scan, for a coarser
# sketch; "_2s": two-sided bounds (about half the scan's instructions per code, a looser certificate)
OURS_SETTINGS = dict(ours_dense=("dense", 4, 16, True), ours_cert_int4_g16=("certified", 4, 16, True),
                     ours_cert_int4_g32=("certified", 4, 32, True), ours_cert_int4_g64=("certified", 4, 64, True),
                     ours_cert_int8_g64=("certified", 8, 64, True), ours_paged=("paged", 4, 16, True),
                     ours_cert_int4_g16_2s=("certified", 4, 16, False), ours_cert_int4_g32_2s=("certified", 4, 32, False),
                     ours_cert_int8_g64_2s=("certified", 8, 64, False))


def build_model(shape: str, device):
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(**SHAPES[shape], max_position_embeddings=1 << 18, rope_theta=500000.0,
                      tie_word_embeddings=False)
    torch.manual_seed(0)
    with torch.device(device):
        model = LlamaForCausalLM(cfg).to(torch.bfloat16 if device.type == "cuda" else torch.float32).eval()
    return model


def dims(model):
    c = model.config
    return c.num_hidden_layers, c.num_attention_heads, c.num_key_value_heads, c.head_dim


def weight_bytes_per_step(model) -> int:
    """Every parameter read once per step, except the input embedding (one row per token)."""
    emb = model.model.embed_tokens.weight
    return sum(p.numel() * p.element_size() for p in model.parameters()) - emb.numel() * emb.element_size()


def sync(dev):
    if dev.type == "cuda":
        torch.cuda.synchronize()


def time_fn(fn, steps: int, dev) -> float:
    """Seconds per call of ``fn`` (already warm), CUDA events on GPU."""
    if dev.type == "cuda":
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        for _ in range(steps):
            fn()
        b.record()
        b.synchronize()
        return a.elapsed_time(b) / 1e3 / steps
    t0 = time.perf_counter()
    for _ in range(steps):
        fn()
    return (time.perf_counter() - t0) / steps


def graphed(fn, dev):
    """The replay of ``fn`` captured in a CUDA graph (warm-up inside), or ``fn`` itself on CPU."""
    if dev.type != "cuda":
        fn()
        return fn
    from vashista_gpu.cuda_graph import capture
    return capture(fn)


# ---------------------------------------------------------------------------------------------- dense
def cache_arg(model) -> str:
    import inspect
    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


def run_hf_eager(model, B, ctx, steps, dev):
    """transformers forward + DynamicCache (filled with random K/V), SDPA, one token per call."""
    from transformers import DynamicCache

    L, Hq, Hkv, D = dims(model)
    model.set_attn_implementation("sdpa")
    cache = DynamicCache()
    for i in range(L):
        k = torch.empty((B, Hkv, ctx, D), dtype=next(model.parameters()).dtype, device=dev).normal_()
        cache.update(k, torch.empty_like(k).normal_(), i)
    tok = torch.zeros((B, 1), dtype=torch.long, device=dev)
    state = dict(pos=ctx)

    def step():
        pos = torch.full((B, 1), state["pos"], dtype=torch.long, device=dev)
        logits = model(input_ids=tok, position_ids=pos, use_cache=True, logits_to_keep=1,
                       **{cache_arg(model): cache}).logits
        tok.copy_(logits[:, -1].argmax(-1, keepdim=True))
        state["pos"] += 1
        sync(dev)                              # the host reads the token (a generate loop does)

    with torch.no_grad():
        step()
        s = time_fn(step, steps, dev)
    return dict(s_per_token=s)


def is_graph_dense(variant: str) -> bool:
    """The dense baselines under our graph treatment (graph_sdpa_<backend>, graph_flashinfer): the
    fastest of them in a run is its "best dense"."""
    return variant.startswith("graph_")


def _norm_in(layer, x):
    return layer.input_layernorm(x)


def _mlp_block(layer, x, attn_out):
    x = x + attn_out
    return x + layer.mlp(layer.post_attention_layernorm(x))


class StaticDense:
    """gpt-fast's step on the HF model's own modules: a static (L, B, Hkv, T_max, D) cache, the new
    token written at a device position, attention over the first ctx + 1 slots (a static slice: the
    timed window's lengths differ by < --steps tokens, so every replay attends to ctx + 1 tokens).
    ``compile=True`` gives it the treatment of ``Engine(compile=True)`` (``engine/compiled.py``): the
    same layer parts through torch.compile — the input norm, and residual + norm + MLP + residual —
    with the attention (projections, rotary, append, SDPA, output projection) eager in both."""

    def __init__(self, model, B, ctx, dev, compile=False):
        L, Hq, Hkv, D = dims(model)
        self.m, self.B, self.ctx = model, B, ctx
        dt = next(model.parameters()).dtype
        self.K, self.V = self.alloc_cache(L, B, Hkv, D, dt, dev)
        self.pos = torch.full((B, 1), ctx, dtype=torch.long, device=dev)
        self.tok = torch.zeros((B, 1), dtype=torch.long, device=dev)
        self.scale = D ** -0.5
        self.norm_in, self.mlp_block, self.final_norm = _norm_in, _mlp_block, model.model.norm
        if compile:
            self.norm_in, self.mlp_block = torch.compile(_norm_in), torch.compile(_mlp_block)
            self.final_norm = torch.compile(model.model.norm)

    def step(self):
        from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

        m, B = self.m.model, self.B
        L, Hq, Hkv, D = dims(self.m)
        x = m.embed_tokens(self.tok)
        cos, sin = m.rotary_emb(x, self.pos)
        slot = self.pos[0]
        for i, layer in enumerate(m.layers):
            a = layer.self_attn
            h = self.norm_in(layer, x)
            q = a.q_proj(h).view(B, 1, Hq, D).transpose(1, 2)
            k = a.k_proj(h).view(B, 1, Hkv, D).transpose(1, 2)
            v = a.v_proj(h).view(B, 1, Hkv, D).transpose(1, 2)
            q, k = apply_rotary_pos_emb(q, k, cos, sin)
            o = self.append_attend(i, slot, q[:, :, 0], k, v)
            x = self.mlp_block(layer, x, a.o_proj(o.reshape(B, 1, Hq * D)))
        logits = self.m.lm_head(self.final_norm(x)[:, -1])
        self.tok.copy_(logits.argmax(-1, keepdim=True))

    def alloc_cache(self, L, B, Hkv, D, dt, dev):
        K = torch.empty((L, B, Hkv, self.ctx + 16, D), dtype=dt, device=dev).normal_()
        return K, torch.empty_like(K).normal_()

    def append_attend(self, i, slot, q, k, v):
        """Layer i: write the token's k, v (B, Hkv, 1, D) at ``slot`` and attend q (B, Hq, D) over the
        first ctx + 1 slots with SDPA; (B, Hq, D)."""
        from vashista_gpu.dense import sdpa_decode

        self.K[i].index_copy_(2, slot, k)
        self.V[i].index_copy_(2, slot, v)
        n = self.ctx + 1
        return sdpa_decode(q, self.K[i][:, :, :n], self.V[i][:, :, :n], self.scale)


class StaticFlashInfer(StaticDense):
    """StaticDense with FlashInfer's batch decode (its fa2 CUDA-core kernel, the one vLLM and SGLang
    call for decode; split-KV as its planner decides) instead of SDPA: the same step, the cache as
    FlashInfer's HND pages of ``PAGE`` tokens (sequence b owns pages b·P … b·P + P − 1), planned once on
    the host for rows of ctx + 1 tokens, its buffers fixed for CUDA graphs (``use_cuda_graph``)."""

    PAGE = 16

    def __init__(self, model, B, ctx, dev, compile=False):
        import flashinfer

        super().__init__(model, B, ctx, dev, compile=compile)
        L, Hq, Hkv, D = dims(model)
        n = ctx + 1
        used = -(-n // self.PAGE)
        indptr = torch.arange(B + 1, dtype=torch.int32) * used
        indices = (torch.arange(B, dtype=torch.int32)[:, None] * self.P
                   + torch.arange(used, dtype=torch.int32)[None]).flatten()
        last = torch.full((B,), n - (used - 1) * self.PAGE, dtype=torch.int32)
        self.workspace = torch.zeros(256 << 20, dtype=torch.uint8, device=dev)
        self.wrapper = flashinfer.BatchDecodeWithPagedKVCacheWrapper(
            self.workspace, "HND", use_cuda_graph=True, backend="fa2",
            paged_kv_indptr_buffer=indptr.to(dev), paged_kv_indices_buffer=indices.to(dev),
            paged_kv_last_page_len_buffer=last.to(dev))
        dt = self.K.dtype
        self.wrapper.plan(indptr, indices, last, Hq, Hkv, D, self.PAGE, pos_encoding_mode="NONE",
                          q_data_type=dt, kv_data_type=dt, sm_scale=self.scale)
        self.page, self.off = ctx // self.PAGE, ctx % self.PAGE
        self.o = torch.empty((B, Hq, D), dtype=dt, device=dev)

    def alloc_cache(self, L, B, Hkv, D, dt, dev):
        self.P = -(-(self.ctx + 16) // self.PAGE)
        K = torch.empty((L, B * self.P, Hkv, self.PAGE, D), dtype=dt, device=dev).normal_()
        return K, torch.empty_like(K).normal_()

    def _pages(self, X, i):
        return X[i].view(self.B, self.P, *X.shape[2:])

    def append_attend(self, i, slot, q, k, v):
        # the write position is static (every replay decodes at ctx), as StaticDense's slice is
        self._pages(self.K, i)[:, self.page, :, self.off].copy_(k[:, :, 0])
        self._pages(self.V, i)[:, self.page, :, self.off].copy_(v[:, :, 0])
        return self.wrapper.run(q.contiguous(), (self.K[i], self.V[i]), out=self.o)

    def contiguous_kv(self, i):
        """Layer i's first ctx + 1 keys and values as (B, Hkv, ctx + 1, D): SDPA's view of them."""
        def flat(X):
            p = self._pages(X, i)                                   # (B, P, Hkv, PAGE, D)
            return p.permute(0, 2, 1, 3, 4).reshape(self.B, p.shape[2], -1, p.shape[-1])[:, :, :self.ctx + 1]
        return flat(self.K), flat(self.V)


def flashinfer_check(st, dev) -> float:
    """max |FlashInfer − SDPA in float32| / max |SDPA| on layer 0's cache, before timing: over random
    keys and values a wrong plan (other pages, other lengths) returns an output of the same size, so
    only a relative difference tells it apart (bf16 rounding: ~1e-2 at most)."""
    from vashista_gpu.dense import sdpa_decode

    L, Hq, Hkv, D = dims(st.m)
    q = 4 * torch.randn((st.B, Hq, D), dtype=st.K.dtype, device=dev)     # peaked enough to tell tokens apart
    o = st.wrapper.run(q, (st.K[0], st.V[0])).float()
    k, v = st.contiguous_kv(0)
    ref = sdpa_decode(q.float(), k.float(), v.float(), st.scale)
    return float((o - ref).abs().max() / ref.abs().max())


def run_graph_flashinfer(model, B, ctx, steps, dev, compile=False):
    st = StaticFlashInfer(model, B, ctx, dev, compile=compile)
    err = flashinfer_check(st, dev)
    if not err < 5e-2:
        raise RuntimeError(f"FlashInfer's decode differs from SDPA by {err:.3g} (relative): not timed")
    _reset_peak(dev)
    with torch.no_grad():
        replay = graphed(st.step, dev)
        s = time_fn(replay, steps, dev)
    import flashinfer
    return dict(s_per_token=s, decode_peak_GiB=_peak_GiB(dev), flashinfer_version=flashinfer.__version__,
                flashinfer_rel_diff_vs_sdpa=err)


def run_graph_dense(model, B, ctx, steps, dev, backend, compile=False):
    from torch.nn.attention import SDPBackend, sdpa_kernel

    be = dict(flash=SDPBackend.FLASH_ATTENTION, cudnn=SDPBackend.CUDNN_ATTENTION,
              efficient=SDPBackend.EFFICIENT_ATTENTION)[backend]
    st = StaticDense(model, B, ctx, dev, compile=compile)
    _reset_peak(dev)
    with torch.no_grad(), sdpa_kernel([be]):
        replay = graphed(st.step, dev)
        s = time_fn(replay, steps, dev)
    return dict(s_per_token=s, decode_peak_GiB=_peak_GiB(dev))


def _reset_peak(dev):
    """Start the decode's peak memory here: the caches are filled, the graph is not yet captured. The
    whole run's peak (peak_GiB) also holds the fill's transients (random K/V in float32, the sketch's
    quantization of a whole context at once), which a real prefill in chunks does not need."""
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
        torch.cuda.reset_peak_memory_stats(dev)


def _peak_GiB(dev):
    return torch.cuda.max_memory_allocated(dev) / 2 ** 30 if dev.type == "cuda" else None


# ---------------------------------------------------------------------------------------------- ours
def _fill_engine(engine, B, ctx, max_new, dev):
    """Admit B sequences holding ctx random tokens each (module doc): append into layer 0's pool, copy
    its state into the other layers' pools."""
    cache = engine.cache
    L, Hq, Hkv, D = cache.n_layers, cache.n_q_heads, cache.n_kv_heads, cache.head_dim
    seqs = [cache.add_sequence(ctx + max_new) for _ in range(B)]
    p0 = cache.pools[0]
    g = torch.Generator(device=dev).manual_seed(1)
    for s in seqs:
        k = torch.randn((ctx, Hkv, D), generator=g, device=dev).to(p0.dtype)
        p0.append(s, k, torch.randn((ctx, Hkv, D), generator=g, device=dev).to(p0.dtype))
        engine.reserved[s] = ctx + max_new
        engine.max_new[s] = max_new
    for p in cache.pools[1:]:
        assert torch.equal(p.block_table, p0.block_table), "pools allocated different pages"
        for name in ("k_pages", "v_pages", "kmin", "kmax", "kmean", "vnorm", "kabs", "vabs", "seq_lens"):
            if getattr(p0, name, None) is not None:       # caches without key summaries hold None
                getattr(p, name).copy_(getattr(p0, name))
        p._lens = list(p0._lens)
        for bits, st in p.sketches.items():
            for name, t in vars(p0.sketches[bits]).items():
                if isinstance(t, torch.Tensor):
                    getattr(st, name).copy_(t)
    return seqs


def run_ours(model, variant, B, ctx, steps, dev, kc, dense_layers, compile=False):
    from vashista_gpu.engine import Engine
    from vashista_core.policies import DenseFallback

    # "+df": DenseFallback with a tolerance nothing exceeds — the device policy's fixed cost (flag,
    # compaction, an idle pairs launch) on top of the certified step
    base, df = variant.split("+")[0], variant.endswith("+df")
    mode, bits, page, one_sided = OURS_SETTINGS[base]
    max_new = steps + 8
    max_tokens = page * math.ceil((ctx + max_new) / page)
    budget = min(1.0, kc / ctx)
    eng = Engine(model, mode=mode, bits=bits, budget=budget, max_seqs=B, max_tokens=max_tokens, page_size=page,
                 graph=dev.type == "cuda", dense_layers=dense_layers, progress=False,
                 policy=DenseFallback(1e30) if df else None, one_sided=one_sided, compile=compile)
    with eng, torch.no_grad():
        seqs = _fill_engine(eng, B, ctx, max_new, dev)
        _reset_peak(dev)
        eng.plan_segment(seqs)
        replay = graphed(eng.step, dev)
        s = time_fn(replay, steps, dev)
        decode_peak = _peak_GiB(dev)
        stats = eng.runner.stats.summary()
        nbytes = eng.cache.nbytes()
        dense_kv = eng.cache.dense_kv_bytes(B * ctx)
        Kc, P = eng.runner.Kc, eng.runner.P
    cfg = dict(mode=mode, bits=bits if mode == "certified" else None, group=page if mode == "certified" else None,
               one_sided=one_sided if mode == "certified" else None,
               page_size=page, Kc=Kc, P=P if mode == "paged" else None, budget=budget,
               dense_layers=list(dense_layers), policy="DenseFallback(1e30)" if df else "ReportOnly", compile=compile)
    del eng
    return dict(s_per_token=s, cache_bytes=nbytes, dense_kv_bytes=dense_kv, stats=stats, config=cfg,
                decode_peak_GiB=decode_peak)


# ---------------------------------------------------------------------------------------------- bytes
def attention_bytes(variant, model, B, ctx, r) -> int:
    """Attention bytes per step (module doc), all layers."""
    L, Hq, Hkv, D = dims(model)
    kv_row = 2 * D * 2                                    # one token's K and V row of one KV head, bf16
    dense = L * B * ctx * Hkv * kv_row
    if not variant.startswith("ours") or variant == "ours_dense":
        return dense
    cfg = r["config"]
    dl = len(cfg["dense_layers"])
    per_layer_dense = dense // L
    exact = B * Hq * cfg["Kc"] * kv_row                    # Kc rows per query head, no GQA sharing
    pool_tokens = r["cache_bytes"]["kv"] // (L * Hkv * kv_row)
    if variant.startswith("ours_cert"):
        scan = r["cache_bytes"]["sketch"] * (B * ctx) // max(1, pool_tokens)   # the live tokens' share
        return dl * per_layer_dense + (L - dl) * exact + scan * (L - dl) // L
    meta = r["cache_bytes"]["metadata"] * (B * ctx) // max(1, pool_tokens)
    pages = B * Hkv * (cfg["P"] + 2) * cfg["page_size"] * kv_row
    return dl * per_layer_dense + (L - dl) * (exact + pages) + meta * (L - dl) // L


# ---------------------------------------------------------------------------------------------- driver
def fits(variant, model, B, ctx, dev) -> str | None:
    """None if the variant's caches fit in free device memory (with margin), else why not."""
    if dev.type != "cuda":
        return None
    L, Hq, Hkv, D = dims(model)
    kv = L * B * (ctx + 64) * Hkv * 2 * D * 2
    factor = {"hf_eager_sdpa": 1.0 + 2.0 / L}.get(variant, 1.0)
    if variant.startswith("ours_cert"):        # sketch (int8 g64: 0.27) + value norms
        factor = 1.3
    elif variant.startswith("ours_paged"):     # key boxes and means
        factor = 1.15
    elif variant.startswith("ours"):
        factor = 1.05
    need = kv * factor + 3 * 2 ** 30
    free = torch.cuda.mem_get_info(dev)[0]
    if need > free:
        return f"needs ~{need / 2 ** 30:.1f} GiB, {free / 2 ** 30:.1f} GiB free"
    return None


def paged_dense_check(dev) -> dict:
    """The paged flash-decode kernel against SDPA on gathered K/V, bf16, on this card (compiled path:
    the device-bounded loop the interpreter tests cannot reach)."""
    from vashista_gpu.dense import sdpa_decode
    from vashista_gpu.kernels.paged_dense import cache_dense_decode
    from vashista_gpu.paged_cache import TorchPagedKVCache

    g = torch.Generator().manual_seed(0)
    lens, Hkv, G, D = ([4097, 1, 30000, 777], 2, 4, 128) if dev.type == "cuda" else ([97, 1, 300, 77], 2, 4, 32)
    ks = [torch.randn(T, Hkv, D, generator=g) for T in lens]
    vs = [torch.randn(T, Hkv, D, generator=g) for T in lens]
    cache, ids = TorchPagedKVCache.from_dense(ks, vs, 16, shuffle_seed=1, dtype=torch.bfloat16, device=dev,
                                             backend="torch")
    q = torch.randn(len(lens), Hkv * G, D, generator=g).to(dev, torch.bfloat16)
    out = torch.full((len(lens), Hkv * G, D), float("nan"), dtype=torch.bfloat16, device=dev)
    cache_dense_decode(q, cache, torch.tensor(ids, dtype=torch.int32, device=dev), max_tokens=max(lens), out=out)
    err = 0.0
    for b, s in enumerate(ids):
        k, v = cache.gather(s)
        ref = sdpa_decode(q[b:b + 1].float(), k.permute(1, 0, 2)[None].float(), v.permute(1, 0, 2)[None].float(),
                          D ** -0.5)[0]
        err = max(err, float((out[b].float() - ref).abs().max()))
    return dict(max_abs_err_vs_fp32_sdpa=err, finite=bool(torch.isfinite(out).all()))


def crossover(rows) -> list:
    """Per (shape, batch, mode): the smallest measured context where the Vashista mode's tokens/s ≥
    the best dense graph's, and the log-linear interpolation of the ratio between the bracketing
    contexts (None when it never crosses in the measured range)."""
    out = []
    keys = sorted({(r["shape"], r["batch"]) for r in rows})
    for shape, B in keys:
        sel = [r for r in rows if r["shape"] == shape and r["batch"] == B and r.get("s_per_token")]
        ctxs = sorted({r["context"] for r in sel})
        for v in ("ours_cert_int4_g16", "ours_cert_int8_g64", "ours_paged"):
            ratios = []
            for c in ctxs:
                dense = [r["s_per_token"] for r in sel if r["context"] == c and is_graph_dense(r["variant"])]
                ours = [r["s_per_token"] for r in sel if r["context"] == c and r["variant"] == v]
                if dense and ours:
                    ratios.append((c, min(dense) / ours[0]))
            cross = None
            for i, (c, r) in enumerate(ratios):
                if r >= 1.0:
                    if i == 0:
                        cross = dict(context=c, below_measured=True)
                    else:
                        (c0, r0) = ratios[i - 1]
                        t = (1.0 - r0) / (r - r0)
                        cross = dict(context=int(round(math.exp(math.log(c0) + t * (math.log(c) - math.log(c0))))),
                                     below_measured=False)
                    break
            out.append(dict(shape=shape, batch=B, variant=v, ratios=ratios, crossover=cross))
    return out


def plot(rows, path):
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    keys = sorted({(r["shape"], r["batch"]) for r in rows})
    fig, axes = plt.subplots(1, len(keys), figsize=(4.2 * len(keys), 3.6), squeeze=False)
    for ax, (shape, B) in zip(axes[0], keys):
        sel = [r for r in rows if r["shape"] == shape and r["batch"] == B and r.get("tokens_per_s")]
        for v in sorted({r["variant"] for r in sel}):
            pts = sorted((r["context"], r["tokens_per_s"]) for r in sel if r["variant"] == v)
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=v)
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_title(f"{shape}, batch {B}")
        ax.set_xlabel("context (tokens)")
        ax.set_ylabel("tokens/s (all rows)")
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    return True


ANNOTATE = [("vashista_gpu.paged_cache", "TorchPagedKVCache.append_step_device"),
            ("vashista_gpu.summaries", "update_page_summaries"),
            ("vashista_gpu.sketch", "TorchPageSketchStore.update_pages"),
            ("vashista_gpu.kernels.sketch_scan", "paged_sketch_scan_bound"),
            ("vashista_gpu.sketch", "_select_candidates"),
            ("vashista_gpu.kernels.rescore", "rescore_paged"),
            ("vashista_gpu.sketch", "_certificate"),
            ("vashista_gpu.sketch_plan", "row_vmax"),
            ("vashista_gpu.sketch_plan", "run_sketch_plan"),
            ("vashista_gpu.decode", "run_plan"),
            ("vashista_gpu.kernels.paged_dense", "cache_dense_decode"),
            ("vashista_gpu.engine.step", "StepStats.add"),
            ("vashista_gpu.engine.step", "Runner.decode")]


def _annotate():
    """Wrap the step's parts in profiler ranges (module attributes and methods, looked up at call
    time by their callers), so the profile attributes device time to them."""
    from torch.profiler import record_function

    for mod, name in ANNOTATE:
        m = importlib.import_module(mod)
        owner, attr = (m, name) if "." not in name else (getattr(m, name.split(".")[0]), name.split(".")[1])
        f = getattr(owner, attr, None)
        if f is None or getattr(f, "_annotated", False):
            continue

        def wrap(fn, label=name):
            def g(*a, **k):
                with record_function("vs::" + label):
                    return fn(*a, **k)
            g._annotated = True
            return g
        setattr(owner, attr, wrap(f))


def profile_ours(model, variant, B, ctx, dev, kc, dense_layers, steps=3) -> str:
    """Device time of one eager engine step by part (ANNOTATE ranges) and the top kernels: where the
    graph replay's time goes (a replay runs the same kernels without the host gaps)."""
    from torch.profiler import ProfilerActivity, profile

    from vashista_gpu.engine import Engine

    _annotate()
    base = variant.split("+")[0]
    mode, bits, page, one_sided = OURS_SETTINGS[base]
    eng = Engine(model, mode=mode, bits=bits, budget=min(1.0, kc / ctx), max_seqs=B,
                 max_tokens=page * math.ceil((ctx + 16) / page), page_size=page, graph=False,
                 dense_layers=dense_layers, progress=False, one_sided=one_sided)
    with eng, torch.no_grad():
        seqs = _fill_engine(eng, B, ctx, 16, dev)
        eng.plan_segment(seqs)
        eng.step()
        eng.step()
        sync(dev)
        with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
            for _ in range(steps):
                eng.step()
            sync(dev)
    ka = prof.key_averages()

    def dev_us(e):
        return getattr(e, "device_time_total", None) or getattr(e, "cuda_time_total", 0.0)
    parts = sorted([e for e in ka if e.key.startswith("vs::")], key=dev_us, reverse=True)
    kern = sorted([e for e in ka if not e.key.startswith("vs::") and dev_us(e) > 0 and e.device_type.name == "CUDA"],
                  key=dev_us, reverse=True)
    total = sum(dev_us(e) for e in kern)
    lines = [f"== {variant} {model.config.num_hidden_layers}L B={B} ctx={ctx}: device time per step "
             f"{total / steps / 1e3:.3f} ms in {sum(e.count for e in kern) // steps} kernels"]
    lines += [f"  part {e.key[4:]:<45} {dev_us(e) / steps / 1e3:8.3f} ms/step  calls/step {e.count // steps}"
              for e in parts]
    lines += [f"  kernel {e.key[:70]:<70} {dev_us(e) / steps / 1e3:8.3f} ms/step  n/step {e.count // steps}"
              for e in kern[:25]]
    del eng
    return "\n".join(lines)


def tune_dense(dev, shapes) -> list:
    """The paged flash-decode kernel's launch options against SDPA flash on the same K/V (contiguous),
    one attention call, CUDA-graph replays: which defaults to ship."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    from vashista_gpu.dense import sdpa_decode
    from vashista_gpu.kernels.paged_dense import paged_dense_decode

    out = []
    for B, Hkv, G, D, T in shapes:
        S = 16
        npg = B * T // S
        kp = torch.randn((npg, Hkv, S, D), dtype=torch.bfloat16, device=dev)
        vp = torch.randn_like(kp)
        table = torch.randperm(npg, device=dev).to(torch.int32).view(B, T // S)
        lens = torch.full((B,), T, dtype=torch.int32, device=dev)
        seq = torch.arange(B, dtype=torch.int32, device=dev)
        q = torch.randn((B, Hkv * G, D), dtype=torch.bfloat16, device=dev)
        K = torch.randn((B, Hkv, T, D), dtype=torch.bfloat16, device=dev)
        V = torch.randn_like(K)
        with sdpa_kernel([SDPBackend.FLASH_ATTENTION]):
            ref = time_fn(graphed(lambda: sdpa_decode(q, K, V, D ** -0.5), dev), 50, dev)
        kv_bytes = 2 * B * Hkv * T * D * 2
        out.append(dict(shape=(B, Hkv, G, D, T), variant="sdpa_flash", ms=ref * 1e3, TBps=kv_bytes / ref / 1e12))
        for bn in (64, 128):
            for nw in (4, 8):
                for st in (2, 3, 4):
                    for mult in (1, 2):
                        from vashista_gpu.kernels.paged_dense import default_splits
                        ns = default_splits(B * Hkv, T, bn, dev) * mult
                        try:
                            t = time_fn(graphed(lambda: paged_dense_decode(
                                q, kp, vp, table, seq, lens, max_tokens=T, num_splits=ns, block_n=bn,
                                num_warps=nw, num_stages=st), dev), 50, dev)
                            out.append(dict(shape=(B, Hkv, G, D, T), variant=f"bn{bn}_w{nw}_s{st}_x{mult}",
                                            ms=t * 1e3, TBps=kv_bytes / t / 1e12))
                        except Exception as e:
                            out.append(dict(shape=(B, Hkv, G, D, T), variant=f"bn{bn}_w{nw}_s{st}_x{mult}",
                                            error=str(e)[:200]))
        del kp, vp, K, V
        torch.cuda.empty_cache()
    return out


def markdown(result) -> str:
    """The RESULTS.md tables: ms/token per variant, the speed-up of each Vashista mode over the best
    dense graph (named), peak memory and our cache bytes over the dense KV bytes."""
    rows = [r for r in result["rows"] if r.get("ms_per_token")]
    keys = sorted({(r["shape"], r["context"], r["batch"]) for r in result["rows"]})
    names = ["hf_eager_sdpa", "graph_sdpa_flash", "graph_sdpa_cudnn", "graph_flashinfer", "ours_dense", "ours_cert_int4_g16",
             "ours_cert_int8_g64", "ours_paged", "ours_cert_int4_g16+df"]
    names = [n for n in names if n != "graph_flashinfer" or any(r["variant"] == n for r in result["rows"])]
    out = ["| shape | context | batch | " + " | ".join(names) + " | best dense | int4 × | int8 × | paged × "
           "| peak GiB dense graph / int4 | int4 cache / dense KV |",
           "|" + "---|" * (len(names) + 9)]
    for shape, ctx, B in keys:
        sel = {r["variant"]: r for r in rows if (r["shape"], r["context"], r["batch"]) == (shape, ctx, B)}
        skipped = {r["variant"]: r.get("skipped") or r.get("error") for r in result["rows"]
                   if (r["shape"], r["context"], r["batch"]) == (shape, ctx, B) and not r.get("ms_per_token")}
        if not sel:
            continue
        cells = [f"{sel[n]['ms_per_token']:.2f}" if n in sel else ("skip" if n in skipped else "–") for n in names]
        dense = {n: sel[n]["ms_per_token"] for n in sel if is_graph_dense(n)}
        best = min(dense, key=dense.get) if dense else None
        sp = [f"{dense[best] / sel[n]['ms_per_token']:.2f}" if best and n in sel else "–"
              for n in ("ours_cert_int4_g16", "ours_cert_int8_g64", "ours_paged")]
        pk = [f"{sel[n]['peak_GiB']:.1f}" if n in sel and sel[n].get("peak_GiB") else "–" for n in (best, "ours_cert_int4_g16")]
        i4 = sel.get("ours_cert_int4_g16")
        mem = f"{i4['cache_bytes']['total'] / i4['dense_kv_bytes']:.2f}" if i4 else "–"
        out.append(f"| {shape} | {ctx // 1024}k | {B} | " + " | ".join(cells) +
                   f" | {best.replace('graph_sdpa_', '') if best else '–'} | " + " | ".join(sp) +
                   f" | {' / '.join(pk)} | {mem} |")
    return "\n".join(out)


def variant_table(result) -> str:
    """One row per (configuration, variant): ms/token, speed over the best dense graph of the same run
    (the fastest of SDPA flash, SDPA cuDNN and our paged dense kernel, named), decode peak memory, our
    cache over the dense KV bytes, and the certified error's mean (random weights: a shape check, not a
    quality number). Any variant the run had, the g32/g64 and two-sided ones included."""
    out = ["| shape | context | batch | variant | ms/token | × best dense | best dense | decode peak GiB "
           "| cache / dense KV | certified error mean |", "|" + "---|" * 10]
    keys = sorted({(r["shape"], r["context"], r["batch"]) for r in result["rows"]})
    for key in keys:
        sel = [r for r in result["rows"] if (r["shape"], r["context"], r["batch"]) == key]
        dense = {r["variant"]: r["ms_per_token"] for r in sel if r.get("ms_per_token")
                 and (is_graph_dense(r["variant"]) or r["variant"] == "ours_dense")}
        best = min(dense, key=dense.get) if dense else None
        for r in sel:
            ms = r.get("ms_per_token")
            why = r.get("skipped") or r.get("error")
            cb = r.get("cache_bytes")
            mem = f"{cb['total'] / r['dense_kv_bytes']:.2f}" if cb and r.get("dense_kv_bytes") else "–"
            err = (r.get("stats") or {}).get("certified_error_mean")
            speed = f"{ms:.2f} | {dense[best] / ms:.2f} | {best}" if ms and best else f"{why or '–'} | – | –"
            peak = f"{r['decode_peak_GiB']:.2f}" if r.get("decode_peak_GiB") else "–"
            e = f"{err:.3g}" if isinstance(err, float) else "–"
            out.append(f"| {key[0]} | {key[1] // 1024}k | {key[2]} | {r['variant']} | {speed} | {peak} | {mem} | {e} |")
    return "\n".join(out)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out")
    ap.add_argument("--configs", default=PRIORITY,
                    help="shape:context:batch,... in the order to run (the time budget cuts the tail)")
    ap.add_argument("--variants", default="hf_eager_sdpa,graph_sdpa_flash,graph_sdpa_cudnn," + ",".join(OURS),
                    help="also graph_sdpa_efficient (slower than flash and cuDNN on H100/H200 in earlier runs)")
    ap.add_argument("--steps", type=int, default=20, help="timed replays per graph variant")
    ap.add_argument("--eager-steps", type=int, default=4)
    ap.add_argument("--kc", type=int, default=256, help="exact-read tokens per query head (certified, paged)")
    ap.add_argument("--dense-layers", default="", help="layers decoded densely in our modes, e.g. 0")
    ap.add_argument("--quick", action="store_true", help="llama-1b at 8k and 32k, batch 1 and 4")
    ap.add_argument("--time-budget", type=float, default=1e9, help="stop starting new runs after this many s")
    ap.add_argument("--check", action="store_true", help="first check the paged dense kernel against SDPA")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--table", help="print the markdown tables of an e2e.json and exit")
    ap.add_argument("--profile", action="store_true",
                    help="instead of timing: device time by part of one eager engine step (--configs, our --variants)")
    ap.add_argument("--tune-dense", action="store_true", help="first time the paged dense kernel's launch options")
    ap.add_argument("--compile", action="store_true",
                    help="torch.compile the layers' norms, MLP and residual adds in graph_sdpa_* and ours alike "
                         "(Engine(compile=True); hf_eager_sdpa stays as users have it)")
    args = ap.parse_args(argv)
    if args.table:
        with open(args.table) as f:
            res = json.load(f)
        print(markdown(res) + "\n\n" + variant_table(res))
        return
    if args.quick:
        args.configs = "llama-1b:8192:1,llama-1b:8192:4,llama-1b:32768:1,llama-1b:32768:4"
    configs = [(c.split(":")[0], int(c.split(":")[1]), int(c.split(":")[2])) for c in args.configs.split(",") if c]
    if not args.out:
        ap.error("--out is required")
    dev = torch.device(args.device)
    os.makedirs(args.out, exist_ok=True)
    t_start = time.time()
    variants = [v for v in args.variants.split(",") if v]
    dense_layers = tuple(int(x) for x in args.dense_layers.split(",") if x)
    env = dict(torch=torch.__version__, triton=importlib.import_module("triton").__version__,
               transformers=importlib.import_module("transformers").__version__,
               card=torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu",
               date=time.strftime("%Y-%m-%d", time.gmtime()),
               flashinfer=("importable" if importlib.util.find_spec("flashinfer") else
                           "not importable: stage it with scripts/stage_flashinfer_for_device.sh and source "
                           "benchmarks/flashinfer_env.sh on the machine"),
               kc=args.kc, steps=args.steps, dense_layers=list(dense_layers), compile=args.compile)
    print(json.dumps(env), flush=True)
    result = dict(env=env, rows=[])
    if args.check:
        result["paged_dense_check"] = paged_dense_check(dev)
        print("paged dense check:", result["paged_dense_check"], flush=True)
    if args.tune_dense:
        tune = tune_dense(dev, [(1, 8, 4, 64, 131072), (4, 8, 4, 64, 131072), (1, 8, 4, 128, 131072),
                                (16, 8, 4, 64, 8192)])
        with open(os.path.join(args.out, "tune_dense.json"), "w") as f:
            json.dump(tune, f, indent=1)
        for t in tune:
            print("tune", t, flush=True)
    if args.profile:
        models = {}
        with open(os.path.join(args.out, "profile.txt"), "w") as f:
            for shape, ctx, B in configs:
                models.setdefault(shape, build_model(shape, dev))
                for v in variants:
                    if time.time() - t_start > args.time_budget:
                        break
                    try:
                        txt = profile_ours(models[shape], v, B, ctx, dev, args.kc, dense_layers)
                    except Exception as e:
                        txt = f"== {v} {shape} {ctx} {B}: {type(e).__name__}: {str(e)[:300]}"
                    print(txt, flush=True)
                    f.write(txt + "\n")
                    gc.collect()
                    torch.cuda.empty_cache()
        return

    def save():
        with open(os.path.join(args.out, "e2e.json"), "w") as f:
            json.dump(result, f, indent=1)

    models = {}
    for shape, ctx, B in configs:
        if shape not in models:
            models[shape] = build_model(shape, dev)
        model = models[shape]
        wbytes = weight_bytes_per_step(model)
        for v in variants:
            row = dict(shape=shape, context=ctx, batch=B, variant=v)
            result["rows"].append(row)
            if time.time() - t_start > args.time_budget:
                row["skipped"] = "time budget"
                continue
            why = fits(v, model, B, ctx, dev)
            if why:
                row["skipped"] = why
                print(shape, ctx, B, v, "skipped:", why, flush=True)
                continue
            if dev.type == "cuda":
                torch.cuda.reset_peak_memory_stats(dev)
            try:
                if v == "hf_eager_sdpa":
                    r = run_hf_eager(model, B, ctx, args.eager_steps, dev)
                elif v == "graph_flashinfer":
                    r = run_graph_flashinfer(model, B, ctx, args.steps, dev, compile=args.compile)
                elif v.startswith("graph_sdpa_"):
                    r = run_graph_dense(model, B, ctx, args.steps, dev, v[len("graph_sdpa_"):], compile=args.compile)
                else:
                    r = run_ours(model, v, B, ctx, args.steps, dev, args.kc, dense_layers, compile=args.compile)
                row.update(r)
                row["ms_per_token"] = r["s_per_token"] * 1e3
                row["tokens_per_s"] = B / r["s_per_token"]
                ab = attention_bytes(v, model, B, ctx, r)
                row["bytes_per_step"] = wbytes + ab
                row["attention_bytes_per_step"] = ab
                row["dense_floor_bytes"] = wbytes + attention_bytes("dense", model, B, ctx, r)
                row["achieved_GBps"] = (wbytes + ab) / r["s_per_token"] / 1e9
                if dev.type == "cuda":
                    row["peak_GiB"] = torch.cuda.max_memory_allocated(dev) / 2 ** 30
            except Exception as e:          # a backend refusing a shape is a result, not a crash
                row["error"] = f"{type(e).__name__}: {str(e)[:300]}"
                traceback.print_exc(limit=3)
            gc.collect()
            if dev.type == "cuda":
                torch.cuda.empty_cache()
            print(shape, ctx, B, v, {k: row.get(k) for k in ("ms_per_token", "tokens_per_s", "peak_GiB", "decode_peak_GiB", "error")},
                  flush=True)
            save()
    result["crossover"] = crossover(result["rows"])
    save()
    from vashista_gpu.engine.dense_paged import shape_key
    table = dict(card=env["card"], date=env["date"], kc=args.kc, dense_layers=list(dense_layers), compile=args.compile,
                 source="benchmarks/e2e_decode.py: best dense = fastest SDPA backend under the same CUDA graph",
                 entries=[dict(name=c["shape"], shape=shape_key(models[c["shape"]].config), batch=c["batch"],
                               variant=c["variant"], ratios=c["ratios"],
                               crossover_context=c["crossover"]["context"] if c["crossover"] else None)
                          for c in result["crossover"] if c["ratios"]])
    with open(os.path.join(args.out, "crossover.json"), "w") as f:
        json.dump(table, f, indent=1)
    with open(os.path.join(args.out, "e2e.csv"), "w", newline="") as f:
        cols = ["shape", "context", "batch", "variant", "ms_per_token", "tokens_per_s", "peak_GiB", "decode_peak_GiB",
                "bytes_per_step", "dense_floor_bytes", "achieved_GBps", "skipped", "error"]
        w = csv.DictWriter(f, fieldnames=cols, extrasaction="ignore")
        w.writeheader()
        for r in result["rows"]:
            w.writerow(r)
    plot([r for r in result["rows"] if r.get("tokens_per_s")], os.path.join(args.out, "tokens_per_s.png"))
    print("crossover:", json.dumps(result["crossover"]), flush=True)


if __name__ == "__main__":
    main()
