"""The quality suite's engine decoder on a GPU, with no model file: a Qwen2.5-0.5B-shaped random model.

What the CPU tests cannot show (``tests/test_longctx_quality.py`` runs the engine's eager host path):
that the CUDA-graph-captured step of ``vashista_app/quality/engine_decoder.py`` (feed or greedy token,
the engine's attention, the float64 shadow, log-probability and argmax, replayed per token) gives the
HF decoder's tokens and log-probabilities, 0 certificate violations, and what a decoded token costs —
the numbers the reduced 32k pass (``benchmarks/longctx_quality.sh first``) is planned from.

For each context: one dense HF prefill, shared; then for each mode the HF decoder (``--hf-max`` caps
the context where it runs: it is the slow path) and the engine decoder twice (the first run compiles
the Triton kernels; the second is timed). Per mode: greedy tokens equal, max |ΔNLL|, steps, fallback
rate, violations, max true error, seconds and ms per decoded token, for both decoders; the engine's
seconds per phase (``DecodeResult.phases``: where a DenseFallback run spends its time). ``--batch N``:
the same item as a batch of N rows (``run_batch``, the suite's ``--batch``): seconds per row, the
speed-up over the single run, and whether each row gives the single run's tokens and counts.

The model: qwen2, 24 layers, hidden 896, 14 query / 2 KV heads, head dim 64, rope θ 1e6 (the 32k
preset's shape), random float32 weights with sharpened queries (random init attends almost
uniformly), a 4096-token vocabulary (the LM head's cost differs from the real 151,936).

Example::

    PYTHONPATH=. python benchmarks/engine_decoder_gpu.py --out /tmp/engine_decoder.json
    PYTHONPATH=. python benchmarks/engine_decoder_gpu.py --device cpu --contexts 512 --layers 2 --feed 8 --new 4
    PYTHONPATH=. python benchmarks/engine_decoder_gpu.py --contexts 32768 --batch 4 8 --hf-max 0
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from vashista_app.quality.decoder import HFDecoder  # noqa: E402
from vashista_app.quality.engine_decoder import EngineDecoder  # noqa: E402
from vashista_app.quality.modes import parse_mode  # noqa: E402

MODES = ("dense", "cert-int8-1/16-fallback", "cert-int4-1/16-report", "paged-1/16", "window-1/16")


def model(layers: int, device: str):
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(0)
    cfg = Qwen2Config(vocab_size=4096, hidden_size=896, intermediate_size=4864, num_hidden_layers=layers,
                      num_attention_heads=14, num_key_value_heads=2, max_position_embeddings=32768 + 1024,
                      rope_theta=1e6, use_sliding_window=False, tie_word_embeddings=True)
    m = Qwen2ForCausalLM(cfg).eval()
    with torch.no_grad():
        for layer in m.model.layers:
            layer.self_attn.q_proj.weight.mul_(4.0)
    return m.to(device)


def stats_of(r) -> dict:
    if r.stats is None:
        return {}
    s = r.stats.summary()
    return dict(steps=s["steps"], fallback_rate=s["fallback_rate"], violations=s["certificate_violations"],
                max_true_error=s.get("max_true_error"))


def profiled(folder, tag: str, fn):
    """``fn()``, under torch.profiler when ``folder`` is given: the top ops by device and by host time
    go to ``folder/profile_<tag>.txt`` (slashes in the tag become underscores)."""
    if not folder:
        return fn()
    from torch.profiler import ProfilerActivity, profile

    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if torch.cuda.is_available() else [])
    with profile(activities=acts) as prof:
        r = fn()
    os.makedirs(folder, exist_ok=True)
    ka = prof.key_averages()
    dev_key = "self_cuda_time_total" if torch.cuda.is_available() else "self_cpu_time_total"
    with open(os.path.join(folder, f"profile_{tag.replace('/', '_')}.txt"), "w") as f:
        f.write(f"phases: {getattr(r, 'phases', None)}\n\n-- by device time --\n")
        f.write(ka.table(sort_by=dev_key, row_limit=30, max_name_column_width=70))
        f.write("\n-- by host time --\n")
        f.write(ka.table(sort_by="cpu_time_total", row_limit=30, max_name_column_width=70))
    return r


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--contexts", type=int, nargs="+", default=[8192, 32768])
    ap.add_argument("--hf-max", type=int, default=8192, help="largest context where the HF decoder also runs")
    ap.add_argument("--layers", type=int, default=24)
    ap.add_argument("--feed", type=int, default=32, help="teacher-forced tokens per run")
    ap.add_argument("--new", type=int, default=8, help="greedy tokens per run")
    ap.add_argument("--modes", nargs="+", default=list(MODES))
    ap.add_argument("--batch", type=int, nargs="*", default=[], metavar="N",
                    help="also decode each mode's item as a batch of N identical rows (EngineDecoder.run_batch, "
                         "the suite's --batch), cold then timed: seconds per row against the single run, and "
                         "whether every row gives its tokens, log-probabilities and statistics")
    ap.add_argument("--out", default=None)
    ap.add_argument("--profile", default=None, metavar="DIR",
                    help="torch.profiler over each mode's timed engine run: DIR/profile_<mode>.txt, the ops "
                         "and kernels by device time and by host time (where a slow mode spends it)")
    a = ap.parse_args(argv)
    if a.device == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = False       # float32 as the quality suite runs it
        torch.backends.cudnn.allow_tf32 = False

    class Tok:
        eos_token_id = None
    t0 = time.time()
    m = model(a.layers, a.device)
    dense_layers = (0, 1)
    hf = HFDecoder(m, Tok(), dense_layers=dense_layers, backend="triton" if a.device == "cuda" else "torch")
    en = EngineDecoder(m, Tok(), dense_layers=dense_layers)
    out = dict(device=torch.cuda.get_device_name(0) if a.device == "cuda" else platform.machine(),
               torch=torch.__version__, layers=a.layers, feed=a.feed, new=a.new, model_s=round(time.time() - t0, 1),
               runs=[])
    ok = True
    for ctx in a.contexts:
        g = torch.Generator().manual_seed(ctx)
        ids = torch.randint(2, 4096, (ctx,), generator=g).tolist()
        n0 = ctx - a.new - a.feed
        t = time.time()
        state = hf.prefill(ids[:n0])
        if a.device == "cuda":
            torch.cuda.synchronize()
        prefill_s = time.time() - t
        for name in a.modes:
            mode = parse_mode(name)
            row = dict(ctx=ctx, mode=name, prefill_s=round(prefill_s, 2))
            feed = ids[n0:n0 + a.feed]
            try:
                cold = en.run(state, mode, ctx, feed, a.new)
                r = profiled(a.profile, f"{ctx}_{name}", lambda: en.run(state, mode, ctx, feed, a.new))
                steps = a.feed + len(r.generated) - 1
                row.update(engine=dict(decoder=r.decoder, s=round(r.seconds, 3), cold_s=round(cold.seconds, 3),
                                       ms_per_token=round(1e3 * r.seconds / steps, 2), tokens=r.generated,
                                       phases=r.phases, cold_phases=cold.phases, **stats_of(r)))
                ok &= (stats_of(r).get("violations") or 0) == 0 and r.generated == cold.generated
                for n in a.batch:
                    en.run_batch([state] * n, mode, ctx, [feed] * n, [a.new] * n)       # cold: B-row shapes
                    rb = en.run_batch([state] * n, mode, ctx, [feed] * n, [a.new] * n)
                    same = all(x.generated == r.generated and stats_of(x).get("steps") == stats_of(r).get("steps")
                               and stats_of(x).get("violations") == stats_of(r).get("violations") for x in rb)
                    row.setdefault("batches", []).append(dict(
                        rows=n, s_per_row=round(rb[0].seconds, 3), speedup=round(r.seconds / rb[0].seconds, 2),
                        same_tokens_and_counts=same, phases_per_row=rb[0].phases,
                        max_abs_dnll=max(abs(x - y) for b in rb for x, y in zip(b.nll, r.nll)),
                        max_true_error=[stats_of(b).get("max_true_error") for b in rb]))
                    ok &= same
                if ctx <= a.hf_max:
                    h = hf.run(state, mode, ctx, feed, a.new)
                    row.update(hf=dict(s=round(h.seconds, 3), ms_per_token=round(1e3 * h.seconds / steps, 2),
                                       tokens=h.generated, **stats_of(h)),
                               same_tokens=h.generated == r.generated,
                               max_abs_dnll=max(abs(x - y) for x, y in zip(h.nll, r.nll)))
                    ok &= (stats_of(h).get("violations") or 0) == 0
                    if name == "dense":
                        ok &= row["same_tokens"]
            except Exception as e:        # one failing mode must not hide the others' numbers
                row["error"] = f"{type(e).__name__}: {e}"
                ok = False
            out["runs"].append(row)
            print(json.dumps(row), flush=True)
    out["ok"] = bool(ok)
    out["seconds"] = round(time.time() - t0, 1)
    if a.out:
        with open(a.out, "w") as f:
            json.dump(out, f, indent=1)
    print(f"ok={ok} in {out['seconds']} s")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
