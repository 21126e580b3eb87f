"""Scan launch variants (issue 8): tokens per program (BM) × warps × one-/two-sided bound, int4 and
int8, paper shapes at 128k (batch 16, 32 heads, D 128, group 64, fp16 metadata, random sketch).
Why: choosing ``sketch_scan_bound``'s defaults (BM = 64 = the group, one warp) from measurements.
Fraction = bytes moved / time / measured copy bandwidth, as in ``sketch_decode_scaling.py``.

    PYTHONPATH=. OUT=/tmp python benchmarks/sketch_scan_variants.py     # CUDA only; writes $OUT/scan_variants.json
"""
import sys, os, json, math, torch
sys.path.insert(0, "benchmarks")
from decode_scaling import bench, graph_of, copy_bandwidth
from sketch_decode_scaling import random_sketch
from vashista_gpu.kernels.sketch_scan import sketch_scan_bound
dev = "cuda"; gen = torch.Generator(device=dev).manual_seed(0)
B, H, T, D, group = 16, 32, 131072, 128, 64
bw = copy_bandwidth(dev)
q32 = torch.randn(B * H, D, device=dev, generator=gen)
out = {}
for bits in (4, 8):
    codes, offset, step = random_sketch(B * H, T, D, bits, group, dev, gen)
    moved = codes.numel() + 2 * offset.numel() * 2 + q32.numel() * 4 + B * H * T * 8 + B * H * T // 4
    for os_ in (False, True):
        for bm, nw in [(64, 1), (32, 1), (16, 1), (64, 2), (32, 2)]:
            try:
                fn = graph_of(lambda: sketch_scan_bound(q32, codes, offset, step, bits=bits, group=group, scale=0.1,
                                                        block_tokens=bm, num_warps=nw, one_sided=os_), True)
                ms = bench(fn, cuda=True)
                out[f"int{bits} {'one' if os_ else 'two'} BM{bm} w{nw}"] = (round(ms, 3), round(moved / ms / 1e9 / (bw / 1e12), 3))
                del fn
            except Exception as e:
                out[f"int{bits} {'one' if os_ else 'two'} BM{bm} w{nw}"] = str(e)[:100]
            print(list(out.items())[-1], flush=True)
    del codes, offset, step
    torch.cuda.empty_cache()
json.dump(dict(copy_TBps=bw / 1e12, variants=out), open(os.environ["OUT"] + "/scan_variants.json", "w"), indent=1)
