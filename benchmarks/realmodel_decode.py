"""Decode speed and fallback rate on the real long-context model (issue 14's "honest number").

Qwen2.5-Coder-0.5B-Instruct (the 32k preset of the quality suite, real weights) decodes a ``--context``
token prompt (the start of a long public text, the same for every mode) through
``vashista_gpu.engine.generate`` — the engine's own cache, the whole step in one CUDA graph — in each
``--modes`` entry, and reports per mode: decode ms per token and tokens/s, the fallback rate and the
certificate summary of the statistics, prefill and capture seconds, cache bytes against the dense KV
cache. Unlike ``e2e_decode.py`` (random weights, fallback forced off), the fallback rate here is the
one real attention produces, so a DenseFallback mode's time includes the dense recomputations its
tolerance asks for. Every mode runs twice: the first run compiles the kernels (its time is not
reported); the second is timed.

Modes: ``dense``, ``cert-int8`` / ``cert-int4`` (report only, one-sided bounds), ``cert-int8@T`` /
``cert-int4@T`` (DenseFallback at tolerance T), ``...-2s`` (two-sided bounds), ``paged``; budget
``--budget`` (1/16); layers 0 and 1 dense as in the quality suite.

Example (on the device, after ``benchmarks/longctx_quality.sh`` staged the model)::

    VASHISTA_MODEL_DIR=/tmp/vlong/model VASHISTA_TEXT_DIR=/tmp/vlong/texts \\
        python benchmarks/realmodel_decode.py --out /tmp/real.json
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

from vashista_app.quality import haystacks  # noqa: E402
from vashista_app.quality.longctx_model import load_model_preset  # noqa: E402
from vashista_core.policies import DenseFallback  # noqa: E402
from vashista_gpu.engine import generate  # noqa: E402

MODES = ("dense", "cert-int8", "cert-int8@1", "cert-int8@3", "cert-int4", "cert-int4@1", "paged",
         "cert-int8-2s", "cert-int4-2s")


def settings(name: str) -> dict:
    """generate() keyword arguments of a mode name (module doc)."""
    base, _, tol = name.partition("@")
    if base == "dense" or base == "paged":
        kw = dict(mode=base)
    elif base in ("cert-int8", "cert-int4", "cert-int8-2s", "cert-int4-2s"):
        kw = dict(mode="certified", bits=int(base[8]), one_sided=not base.endswith("-2s"))
    else:
        raise SystemExit(f"unknown mode {name!r}; modes: {', '.join(MODES)}")
    if tol:
        if kw["mode"] != "certified":
            raise SystemExit(f"{name!r}: a tolerance needs a certified mode")
        kw["policy"] = DenseFallback(float(tol))
    return kw


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--context", type=int, default=32768 - 160, help="prompt tokens")
    ap.add_argument("--new", type=int, default=128, help="decoded tokens per run")
    ap.add_argument("--batch", type=int, default=1, help="sequences (the same prompt at different offsets)")
    ap.add_argument("--budget", type=float, default=1 / 16)
    ap.add_argument("--modes", nargs="+", default=list(MODES))
    ap.add_argument("--text", default="stdlib-code")
    ap.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"])
    ap.add_argument("--device", default="cuda", help="cpu: a smoke test (the host path, no graph)")
    ap.add_argument("--out", required=True)
    a = ap.parse_args(argv)
    dev = torch.device(a.device)
    t0 = time.time()
    model, tok, info = load_model_preset("qwen2.5-coder-0.5b", device=dev, dtype=getattr(torch, a.dtype))
    ids = tok(haystacks.load(a.text)).input_ids
    need = a.context + 64 * (a.batch - 1)
    if len(ids) < need:
        raise SystemExit(f"{a.text} has {len(ids)} tokens, fewer than {need}")
    prompts = [ids[64 * b: 64 * b + a.context] for b in range(a.batch)]
    res = dict(device=torch.cuda.get_device_name(dev) if dev.type == "cuda" else platform.processor() or "cpu", torch=torch.__version__, python=platform.python_version(),
               model=os.path.basename(info["path"]), sha256=info["sha256"], load_s=round(time.time() - t0, 1),
               context=a.context, new=a.new, batch=a.batch, budget=a.budget, dtype=a.dtype, text=a.text,
               dense_layers=[0, 1], rows=[])
    print(json.dumps({k: v for k, v in res.items() if k != "rows"}), flush=True)
    dense_tokens = None
    for name in a.modes:
        kw = settings(name)
        row = dict(mode=name)
        try:
            for rep in range(2):                          # the first run compiles; the second is timed
                r = generate(model, prompts, budget=a.budget, max_new_tokens=a.new, dense_layers=(0, 1),
                             progress=False, **kw)
            row.update(ms_per_token=r.ms_per_token, tokens_per_s=r.tokens_per_s, prefill_s=r.prefill_s,
                       capture_s=r.capture_s, cache_bytes=r.cache_bytes, dense_cache_bytes=r.dense_cache_bytes,
                       stats=r.stats, config=r.config)
            if name == "dense":
                dense_tokens = r.tokens
            elif dense_tokens is not None:                # where greedy decoding first left dense's tokens
                row["first_divergence"] = [next((i for i, (x, y) in enumerate(zip(t, d)) if x != y), len(t))
                                           for t, d in zip(r.tokens, dense_tokens)]
        except Exception as e:                            # noqa: BLE001 — one mode must not end the run
            row["error"] = f"{type(e).__name__}: {str(e)[:400]}"
        res["rows"].append(row)
        print(json.dumps({k: row.get(k) for k in ("mode", "ms_per_token", "tokens_per_s", "error")}
                         | {"fallback_rate": row.get("stats", {}).get("fallback_rate")}), flush=True)
        with open(a.out, "w") as f:
            json.dump(res, f, indent=1)
        if dev.type == "cuda":
            torch.cuda.empty_cache()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
