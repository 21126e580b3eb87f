"""The engine's paged sketch scan, old launch vs new (issue 14), CUDA only, < 90 s on an H100.

The engine's certified step scans the page sketch through the page table
(``kernels/sketch_scan.py::paged_sketch_scan_bound``; quantization group = page). Old: one page per
program, outputs pre-filled with −inf by three ``torch.full`` (emulated here as exactly that: the
three fills, then the kernel at ``pages_per_program=1`` — with full-length rows the kernel writes
nothing past a row's end, so this is the old work). New: ``pages_per_program`` pages per program
(default 64 tokens' worth) and −inf written by the kernel (no fills). Swept: pages per program and
warps, to pick the default on the card.

Shapes (random codes and float16 metadata, shuffled physical pages, every row at full length T):
  1B: B 1 and 4, T 128k, 8 KV heads, G 4 (32 query heads), D 64 — int4 page 16 and int8 page 64;
  MHA: B 16, T 128k, 32 heads, G 1, D 128 — int4 page 16 and int8 page 64.
Each variant is one CUDA graph of the launch(es), timed by ``triton.testing.do_bench`` (median).
``frac_of_copy`` = bytes moved (codes + metadata + q + ŝ/ub written + smax) / time / the copy
bandwidth measured in the same process. ``same_bits`` = every variant's (ŝ, ub, smax) equal to the
old launch's bit for bit on this card (the arithmetic of a token is the same; the compiled
reductions over channels could in principle be ordered differently for another tile shape).

    PYTHONPATH=. python benchmarks/scan_variants_gpu.py --out /tmp/scan_variants.json
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from types import SimpleNamespace

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))


def make_case(B, Hkv, G, D, T, bits, S, dev, gen):
    """A paged sketch store and page table with every row at length T (shuffled physical pages)."""
    n_pages = T // S
    N = B * n_pages
    W = D * bits // 8
    codes = torch.randint(0, 256, (N, Hkv, S, W), dtype=torch.uint8, device=dev, generator=gen)
    offset = (-torch.rand((N, Hkv, D), device=dev, generator=gen) * 3).half()
    step = (torch.rand((N, Hkv, D), device=dev, generator=gen) * 6 / ((1 << bits) - 1) + 1e-3).half()
    perm = torch.randperm(N, device=dev, generator=gen).to(torch.int32)
    table = perm.view(B, n_pages).contiguous()
    store = SimpleNamespace(codes=codes, offset=offset, step=step, bits=bits)
    cache = SimpleNamespace(block_table=table, seq_lens=torch.full((B,), T, dtype=torch.int32, device=dev))
    q = torch.randn(B * Hkv * G, D, device=dev, generator=gen)
    seq_idx = torch.arange(B, dtype=torch.int32, device=dev)
    moved = codes.numel() + 2 * offset.numel() * 2 + q.numel() * 4 + B * Hkv * G * T * (8 + 4 / 16)
    return store, cache, q, seq_idx, moved


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", required=True, help="JSON file to write")
    ap.add_argument("--T", type=int, default=131072)
    ap.add_argument("--rep-ms", type=int, default=60)
    ap.add_argument("--budget-s", type=float, default=75.0, help="variants past this wall time are skipped")
    ap.add_argument("--smoke", action="store_true", help="CPU check of the script (TRITON_INTERPRET=1, tiny T)")
    a = ap.parse_args(argv)
    cuda = torch.cuda.is_available() and not a.smoke
    if not cuda and not a.smoke:
        sys.exit("scan_variants_gpu.py needs a CUDA device (or --smoke on CPU under TRITON_INTERPRET=1)")
    from vashista_app.timing import bench, copy_bandwidth, graph_of
    from vashista_gpu.kernels.sketch_scan import SUB, paged_sketch_scan_bound

    t0 = time.time()
    dev = "cuda" if cuda else "cpu"
    gen = torch.Generator(device=dev).manual_seed(0)
    bw = copy_bandwidth(dev) if cuda else 1e12
    T = a.T if not a.smoke else 64
    shapes = [  # name, B, Hkv, G, D, bits, page
        ("1b_int4_g16_b1", 1, 8, 4, 64, 4, 16), ("1b_int4_g16_b4", 4, 8, 4, 64, 4, 16),
        ("1b_int8_g64_b1", 1, 8, 4, 64, 8, 64), ("1b_int8_g64_b4", 4, 8, 4, 64, 8, 64),
        ("mha_d128_int4_g16_b16", 16, 32, 1, 128, 4, 16), ("mha_d128_int8_g64_b16", 16, 32, 1, 128, 8, 64),
    ]
    OLD, NEW = "old (fills + 1 page/program)", "new default"
    cases, rows = {}, {}
    for name, B, Hkv, G, D, bits, S in shapes:
        if a.smoke:
            B, Hkv = 1, 1
        store, cache, q, seq_idx, moved = make_case(B, Hkv, G, D, T, bits, S, dev, gen)

        def old(q=q, store=store, cache=cache, seq_idx=seq_idx):
            # the old wrapper's three fills, then one page per program
            R = q.shape[0]
            torch.full((R, T), float("-inf"), dtype=torch.float32, device=dev)
            torch.full((R, T), float("-inf"), dtype=torch.float32, device=dev)
            torch.full((R, -(-T // SUB)), float("-inf"), dtype=torch.float32, device=dev)
            return paged_sketch_scan_bound(q, store, cache, seq_idx, T, scale=0.125, pages_per_program=1)

        variants = {OLD: old, NEW: lambda q=q, store=store, cache=cache, seq_idx=seq_idx:
                    paged_sketch_scan_bound(q, store, cache, seq_idx, T, scale=0.125)}
        default = max(1, 64 // S)
        sweep = [(1, 1), (default, 1), (default, 2), (default, 4), (2 * default, 1), (2 * default, 2)]
        for ng, nw in dict.fromkeys(sweep):
            variants[f"{ng} pages/program, {nw} warps"] = (
                lambda ng=ng, nw=nw, q=q, store=store, cache=cache, seq_idx=seq_idx:
                paged_sketch_scan_bound(q, store, cache, seq_idx, T, scale=0.125, pages_per_program=ng, num_warps=nw))
        if a.smoke:
            variants = dict(list(variants.items())[:3])
        cases[name] = (variants, [x.clone() for x in old()], moved)
        rows[name] = dict(B=B, Hkv=Hkv, G=G, D=D, bits=bits, page=S, T=T, GB_moved=round(moved / 1e9, 3), variants={})

    def run(name, vname):
        variants, ref, moved = cases[name]
        if time.time() - t0 > a.budget_s:
            rows[name]["variants"][vname] = f"skipped: past the {a.budget_s} s budget"
            return
        fn = variants[vname]
        try:
            got = fn()
            same = all(torch.equal(x, y) for x, y in zip(got, ref))
            max_dub = float((got[1] - ref[1]).abs().max())
            del got
            g = graph_of(fn, cuda)
            ms = bench(g, cuda=cuda, rep_ms=a.rep_ms)
            r = dict(ms=round(ms, 4), frac_of_copy=round(moved / (ms * 1e-3) / bw, 3), same_bits=same,
                     max_abs_dub=max_dub)
            del g
        except Exception as e:  # noqa: BLE001 — record and go on
            r = f"{type(e).__name__}: {e}"[:300]
        rows[name]["variants"][vname] = r
        print(name, vname, r, flush=True)

    # old vs new default on every shape first, then the sweep (what the time budget may cut)
    for name in cases:
        run(name, OLD)
        run(name, NEW)
        o, n = rows[name]["variants"][OLD], rows[name]["variants"][NEW]
        rows[name]["speedup_new_default"] = round(o["ms"] / n["ms"], 3) \
            if isinstance(o, dict) and isinstance(n, dict) else None
    for name in cases:
        for vname in cases[name][0]:
            if vname not in (OLD, NEW):
                run(name, vname)
    import triton

    meta = dict(device=torch.cuda.get_device_name() if cuda else "cpu (smoke)", torch=torch.__version__,
                triton=triton.__version__, copy_TBps=round(bw / 1e12, 3), date=time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
                wall_s=round(time.time() - t0, 1))
    os.makedirs(os.path.dirname(os.path.abspath(a.out)), exist_ok=True)
    with open(a.out, "w") as f:
        json.dump(dict(meta=meta, shapes=rows), f, indent=1)
    print(json.dumps({k: v["speedup_new_default"] for k, v in rows.items()}), f"wall {meta['wall_s']} s")


if __name__ == "__main__":
    main()
