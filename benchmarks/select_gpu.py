"""The certified step's top-Kc selection on a GPU (issue 14): the one-launch radix select
(``select_candidates(method="radix")``, ``kernels/select_topk.py``) against the torch path it
replaced (``method="topk"``: ``torch.topk`` over int64 tie keys + ``torch.sort``; at long contexts
topk of the block maxima, threshold compaction, topk, sort).

Inputs per shape (R rows = batch · query heads, T tokens, Kc candidates): ŝ float32 (R, T) as the
scan writes it and its maxima of every 16 tokens. Path (``select_candidates``): "threshold" when
T/16 ≥ 8·Kc, else "full" — "full-pruned" when T/16 ≥ 2·Kc (the same kernel pruning by τ, exact).

1. Equality first, on three inputs (random; scores quantized to 1/8: heavy ties; the last quarter of
   the rows −inf past a random length, as in a padded batch): both methods must return the same
   candidates (exactly: the tie rule decides them) on every row the topk path did not overflow, and
   the same overflow mask. A mismatch is printed and the exit status is 1 — before any timing.
2. Time: each method captured in a CUDA graph (``sync=False``, as the engine runs it), median of
   ``triton.testing.do_bench`` replays (``vashista_app.timing``: CUDA events, L2 flushed between
   calls). Radix variants (chunk, warps, bits per radix pass) are timed beside the default.

    PYTHONPATH=. python benchmarks/select_gpu.py --out select.json                      # ~1 min on an H100
    PYTHONPATH=. TRITON_INTERPRET=1 python benchmarks/select_gpu.py --smoke --out /tmp/select.json
"""
from __future__ import annotations

import argparse
import json
import sys

import torch

from vashista_app.timing import bench, graph_of
from vashista_gpu.kernels.select_topk import select_topk
from vashista_gpu.selection import select_candidates

SHAPES = ((32, 8192, 256), (32, 32768, 2048), (32, 131072, 256), (128, 131072, 256), (512, 131072, 256),
          (14, 32768, 2048))
SMOKE = ((4, 1000, 20), (6, 4000, 8), (3, 700, 700))
# (chunk, num_warps, radix bits); the first is select_topk's default
VARIANTS = ((4096, 16, 6), (4096, 8, 8), (4096, 16, 8), (4096, 16, 5), (2048, 8, 6))
SUB = 16                                                        # tokens per block maximum (the scan's)


def scores(R, T, kind, dev, seed=0):
    """(ŝ, block maxima) of one input kind (module doc)."""
    g = torch.Generator(device=dev).manual_seed(seed)
    s = torch.randn(R, T, device=dev, generator=g) * 3
    if kind == "ties":
        s = torch.round(s * 8) / 8
    elif kind == "padded":
        n = torch.randint(T // 2, T + 1, (R,), device=dev, generator=g)
        tail = torch.arange(T, device=dev)[None, :] >= n[:, None]
        tail[: 3 * R // 4] = False
        s = s.masked_fill(tail, float("-inf"))
    pad = torch.full((R, -(-T // SUB) * SUB - T), float("-inf"), device=dev)
    bmax = torch.cat([s, pad], 1).view(R, -1, SUB).amax(-1)
    return s.contiguous(), bmax.contiguous()


def check(R, T, Kc, dev) -> dict:
    """Mismatched rows and overflowed rows per input kind (all mismatch counts must be 0)."""
    res = {}
    for kind in ("random", "ties", "padded"):
        s, bmax = scores(R, T, kind, dev, seed=R + T + Kc)
        ref, ref_over = select_candidates(s, bmax, Kc, 4 * Kc, False, method="topk")
        cand, over = select_candidates(s, bmax, Kc, 4 * Kc, False, method="radix")
        bad = ((cand != ref).any(-1) & ~ref_over) | (over != ref_over)
        res[kind] = dict(mismatched_rows=int(bad.sum()), overflowed_rows=int(ref_over.sum()))
    return res


def timing(R, T, Kc, dev, cuda, variants) -> dict:
    s, bmax = scores(R, T, "random", dev)
    NB = bmax.shape[1]
    # select_candidates' choice (selection.py): threshold (flags), full pruned by τ (exact), full
    path = "threshold" if NB >= 8 * Kc else "full-pruned" if NB >= 2 * Kc else "full"
    kw = {} if path == "full" else dict(bmax=bmax, cap=4 * Kc, flag=path == "threshold")
    fns = {"topk_us": lambda: select_candidates(s, bmax, Kc, 4 * Kc, False, method="topk"),
           "radix_us": lambda: select_candidates(s, bmax, Kc, 4 * Kc, False, method="radix")}
    for chunk, warps, bits in variants:
        fns[f"radix_c{chunk}_w{warps}_b{bits}_us"] = (lambda c=chunk, w=warps, b=bits: select_topk(
            s, Kc, chunk=c, num_warps=w, radix_bits=b, **kw))
    out = {"path": path}
    for name, fn in fns.items():
        out[name] = 1e3 * bench(graph_of(fn, cuda), cuda=cuda)
    out["speedup"] = out["topk_us"] / out["radix_us"]
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", required=True, help="JSON file for the full results")
    ap.add_argument("--smoke", action="store_true", help="tiny shapes (CPU, TRITON_INTERPRET=1)")
    ap.add_argument("--variants", type=int, default=len(VARIANTS) - 1, help="how many radix variants to time")
    a = ap.parse_args(argv)
    cuda = torch.cuda.is_available()
    dev = "cuda" if cuda else "cpu"
    res = dict(device=torch.cuda.get_device_name() if cuda else "cpu", torch=torch.__version__, shapes={})
    shapes = SMOKE if a.smoke else SHAPES
    ok = True
    for R, T, Kc in shapes:                      # equality before any timing
        c = check(R, T, Kc, dev)
        res["shapes"][f"R{R}_T{T}_Kc{Kc}"] = dict(R=R, T=T, Kc=Kc, check=c)
        if any(v["mismatched_rows"] for v in c.values()):
            ok = False
            print(f"MISMATCH R={R} T={T} Kc={Kc}: {c}")
    res["equal"] = ok
    if ok:
        for R, T, Kc in shapes:
            res["shapes"][f"R{R}_T{T}_Kc{Kc}"].update(timing(R, T, Kc, dev, cuda, VARIANTS[1:1 + a.variants]))
    with open(a.out, "w") as f:
        json.dump(res, f, indent=1)
    print(f"device: {res['device']}   equal: {ok}")
    if ok:
        names = [k for k in next(iter(res["shapes"].values())) if k.startswith("radix_c")]
        print("| R | T | Kc | path | topk µs | radix µs | speedup | " + " | ".join(n[6:-3] for n in names) + " |")
        print("|---" * (7 + len(names)) + "|")
        for r in res["shapes"].values():
            print(f"| {r['R']} | {r['T']} | {r['Kc']} | {r['path']} | {r['topk_us']:.1f} | {r['radix_us']:.1f} | "
                  f"{r['speedup']:.1f}x | " + " | ".join(f"{r[n]:.1f}" for n in names) + " |")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
