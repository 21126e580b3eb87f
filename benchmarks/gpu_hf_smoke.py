"""Smoke test of the transformers integration on a device, with no model file: a tiny random Llama.

Run before a long real-model quality run (``benchmarks/gpu_quality.sh smoke``) to learn in seconds
whether the device path works — model on the device, the Triton sparse decode behind the HF hook,
the quality suite's decode loop (``vashista_app.quality.decode_loop``), the float64 dense shadow — and
what one decoded token costs there. Checks (exit status 1 if any fails):

1. full coverage (P and Kc covering the context) reproduces dense decode logits, for the paper's
   paged mode (router ``bound``) and certified mode (router ``sketch``, int8), within the float32
   tolerance of ``tests/helpers.py`` (relative error ‖out − ref‖/‖ref‖, SPEC 4);
2. a sparse budget (1/8 of the context) with statistics and the dense shadow: 0 certificate
   violations (certified error ≥ true error beyond rounding), for both routers;
3. greedy ``model.generate`` runs under both routers; per-token times are printed for dense, sparse
   and sparse + statistics + shadow (the quality suite's configuration), and the extra cost per
   sparse layer, from which a real model's per-token cost is estimated (dense + layers x extra).

The model: Llama with GQA (6 query heads, 2 KV heads, head dim 64), 4 layers, random weights with
sharpened queries (random init attends almost uniformly, where sparsity would never matter).

Example::

    PYTHONPATH=. python benchmarks/gpu_hf_smoke.py --device cuda
    PYTHONPATH=. python benchmarks/gpu_hf_smoke.py --device cpu --context 256 --new 4
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests"))
try:
    from helpers import REL_TOL   # the one tolerance table of the test suite
except ImportError:              # a copy of the tree without tests/: the same numbers
    REL_TOL = {"float32": 1e-5}

from vashista_gpu.hf import disable_vashista, enable_vashista  # noqa: E402
from vashista_app.quality.decode_loop import decode_tokens, prefill  # noqa: E402
from vashista_app.quality.tasks import budget_setting  # noqa: E402

LAYERS, HQ, HKV, D, VOCAB = 4, 6, 2, 64, 512


def versions(device: str) -> dict:
    import transformers
    try:
        import triton
        tv = triton.__version__
    except ImportError:
        tv = None
    name = torch.cuda.get_device_name(0) if device == "cuda" else platform.machine()
    return dict(device=device, device_name=name, torch=torch.__version__, triton=tv,
                transformers=transformers.__version__, python=platform.python_version())


def tiny_llama(device: str, max_pos: int):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=VOCAB, hidden_size=HQ * D, intermediate_size=2 * HQ * D,
                      num_hidden_layers=LAYERS, num_attention_heads=HQ, num_key_value_heads=HKV, head_dim=D,
                      max_position_embeddings=max_pos, pad_token_id=0, bos_token_id=1,
                      eos_token_id=None)               # no end token: generation runs its full length
    m = LlamaForCausalLM(cfg)
    with torch.no_grad():
        for layer in m.model.layers:
            layer.self_attn.q_proj.weight.mul_(6.0)
    return m.to(device=device, dtype=torch.float32).eval()


def rel_error(out: torch.Tensor, ref: torch.Tensor) -> float:
    out, ref = out.double().cpu(), ref.double().cpu()
    if not torch.isfinite(out).all():
        return float("inf")
    d = float(ref.norm())
    return float((out - ref).norm()) / d if d > 0 else float((out - ref).norm())


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


@torch.no_grad()
def decode_logits(model, cache, tokens, setting=None, stats=False):
    """Logits of every decode step after ``cache`` (the quality suite's loop); optional Vashista setting."""
    h = None
    if setting is not None:
        h = enable_vashista(model, collect_stats=stats, shadow_dense=stats, **setting)
    try:
        logits = []
        hook = model.register_forward_hook(lambda mod, a, out: logits.append(out.logits[0, -1].clone()))
        try:
            decode_tokens(model, cache, tokens)
        finally:
            hook.remove()
    finally:
        if setting is not None:
            disable_vashista(model)
    return torch.stack(logits), (h.stats if h is not None else None)


@torch.no_grad()
def time_decode(model, cache, tokens, device, setting=None, stats=False) -> float:
    """ms per decoded token of the quality suite's loop (after one warm-up pass for Triton's compile)."""
    if setting is not None:
        enable_vashista(model, collect_stats=stats, shadow_dense=stats, **setting)
    try:
        decode_tokens(model, cache, tokens[:2])
        sync(device)
        t0 = time.perf_counter()
        decode_tokens(model, cache, tokens)
        sync(device)
        return 1000 * (time.perf_counter() - t0) / len(tokens)
    finally:
        if setting is not None:
            disable_vashista(model)


@torch.no_grad()
def time_generate(model, ids, new: int, device, setting=None) -> tuple[float, list[int]]:
    if setting is not None:
        enable_vashista(model, **setting)
    try:
        model.generate(ids, max_new_tokens=2, do_sample=False)           # warm-up
        sync(device)
        t0 = time.perf_counter()
        out = model.generate(ids, max_new_tokens=new, do_sample=False, min_new_tokens=new)
        sync(device)
        return 1000 * (time.perf_counter() - t0) / new, out[0, ids.shape[1]:].tolist()
    finally:
        if setting is not None:
            disable_vashista(model)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--context", type=int, default=2048, help="prefill length of the timing runs")
    p.add_argument("--new", type=int, default=16, help="decoded tokens of the timing runs")
    p.add_argument("--page-size", type=int, default=16)
    p.add_argument("--budget", type=float, default=1 / 8, help="(Kc + pages·S)/context of the sparse runs")
    args = p.parse_args(argv)
    device = ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    if device == "cuda":
        if not torch.cuda.is_available():
            print("gpu_hf_smoke: --device cuda but torch sees no CUDA device", file=sys.stderr)
            return 2
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
    backend = "triton" if device == "cuda" else "torch"
    print("versions:", json.dumps(versions(device)), flush=True)
    tol = REL_TOL["float32"]
    S = args.page_size
    model = tiny_llama(device, max_pos=max(4096, 2 * args.context))
    g = torch.Generator().manual_seed(1)
    failures = []

    def check(ok: bool, what: str) -> None:
        print(("PASS " if ok else "FAIL ") + what, flush=True)
        if not ok:
            failures.append(what)

    # 1. full coverage == dense, through the quality suite's prefill / decode loop
    ids = torch.randint(2, VOCAB, (1 + 300 + 24,), generator=g)
    cache, _ = prefill(model, ids[None, :300])
    ref, _ = decode_logits(model, cache, ids[300:])
    for name, s in (("bound", dict(P=4096, Kc=1 << 16)), ("sketch int8", dict(P=2, Kc=1 << 16, router="sketch",
                                                                              bits=8))):
        got, _ = decode_logits(model, cache, ids[300:], dict(page_size=S, dense_layers=(), backend=backend, **s))
        err = rel_error(got, ref)
        check(err <= tol, f"full coverage == dense, router {name}: relative error {err:.2e} (tolerance {tol:.0e})")

    # 2. sparse budget (default 1/8): certified error >= true error on every step, layer and head
    T = args.context
    ids = torch.randint(2, VOCAB, (T + args.new,), generator=g)
    cache, _ = prefill(model, ids[None, :T])
    base = dict(page_size=S, dense_layers=(), backend=backend)
    modes = {"bound": dict(base, **budget_setting(T, args.budget, S)),
             "sketch int8": dict(base, **budget_setting(T, args.budget, S, router="sketch"), bits=8)}
    dense_logits, _ = decode_logits(model, cache, ids[T:])
    for name, s in modes.items():
        got, st = decode_logits(model, cache, ids[T:], s, stats=True)
        summ = st.summary()
        check(summ["steps"] == LAYERS * HQ * args.new and summ["certificate_violations"] == 0,
              f"sparse {args.budget:g} (P={s['P']}, Kc={s['Kc']}), router {name}: {summ['steps']} steps checked, "
              f"{summ['certificate_violations']} certificate violations, max true error "
              f"{summ['max_true_error']:.3g} <= max certified {summ['max_certified_error']:.3g}; "
              f"logits vs dense {rel_error(got, dense_logits):.2e}")

    # 3. timings (ms per decoded token) at context T
    t = {"dense": time_decode(model, cache, ids[T:], device)}
    for name, s in modes.items():
        t[name] = time_decode(model, cache, ids[T:], device, s)
        t[name + " + stats + shadow"] = time_decode(model, cache, ids[T:], device, s, stats=True)
    gen = {}
    prompt = ids[None, :T].to(device)
    gen["dense"] = time_generate(model, prompt, args.new, device)
    for name, s in modes.items():
        gen[name] = time_generate(model, prompt, args.new, device, s)
        check(len(gen[name][1]) == args.new, f"generate, router {name}: {len(gen[name][1])} tokens")
    print(f"timings at context {T}, {args.new} tokens, {LAYERS} sparse layers ({device}, backend {backend}):")
    for k, v in t.items():
        extra = "" if k == "dense" else f"  (+{(v - t['dense']) / LAYERS:.1f} ms per sparse layer)"
        print(f"  decode loop  {k:28s} {v:9.2f} ms/token{extra}")
    for k, (v, toks) in gen.items():
        print(f"  generate     {k:28s} {v:9.2f} ms/token  tokens {toks[:8]}")
    # what benchmarks/gpu_quality.sh's plan would take on SmolLM2 (28 sparse layers of 30) at this cost:
    # decoded tokens per step (each once dense, once sparse), dense token ~ 30/LAYERS of this dense
    per_layer = {k: (v - t["dense"]) / LAYERS for k, v in t.items() if k.endswith("shadow")}
    dense_tok = t["dense"] * 30 / LAYERS / 1000
    tok = {"ppl 8k": 64, "passkey grid": 216, "ppl 2k+4k": 128}
    est = {f"{part} {mode.split()[0] if mode.startswith('bound') else 'sketch'}":
           round(n * (dense_tok + (dense_tok + 28 * ms / 1000)), 1)
           for mode, ms in per_layer.items() for part, n in tok.items()}
    print("estimated seconds of the quality plan's steps on SmolLM2 at this per-layer cost (decode only, "
          "no prefill/load):", json.dumps(est), "total", round(sum(est.values()), 1))
    print(json.dumps(dict(decode_ms_per_token=t, generate_ms_per_token={k: v for k, (v, _) in gen.items()},
                          per_sparse_layer_ms={k: (v - t["dense"]) / LAYERS for k, v in t.items() if k != "dense"},
                          context=T, new=args.new, failures=failures)))
    if failures:
        print(f"gpu_hf_smoke: {len(failures)} check(s) failed", file=sys.stderr)
        return 1
    print("gpu_hf_smoke: all checks passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
