"""Scan variants (issue 8): how the certified-mode scan's arithmetic and launch order set its speed.
Paper shapes at 128k (batch 16, 32 heads (MHA), D 128, float16 metadata, random sketch), int4 and int8:

* bound: one-sided (the reference's default) or two-sided (SPEC 3b's e_g);
* dot: ``float`` (codes turned into float32 and FMA-accumulated) or ``int`` (q·δ rounded to int16
  per group and the dot taken in exact int32 with PTX ``dp2a``, the rounding residual added to the
  bound; one-sided savings as a second integer dot over zero-byte indicators — ``kernels/sketch_scan.py``);
* group: quantization group 64, 32 or 16 tokens (int4; metadata 8, 16, 32 B/token/head).

Fraction = bytes moved (codes + metadata + q + outputs) / time / copy bandwidth measured in the same
process, as in ``sketch_decode_scaling.py``.

    PYTHONPATH=. OUT=/tmp python benchmarks/sketch_scan_variants.py     # CUDA only; writes $OUT/scan_variants.json
"""
import json
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from decode_scaling import bench, copy_bandwidth, graph_of  # noqa: E402
from sketch_decode_scaling import random_sketch  # noqa: E402

from vashista_gpu.kernels.sketch_scan import sketch_scan_bound  # noqa: E402

dev = "cuda"
gen = torch.Generator(device=dev).manual_seed(0)
B, H, T, D = 16, 32, int(os.environ.get("SCAN_T", 131072)), 128
bw = copy_bandwidth(dev)
q32 = torch.randn(B * H, D, device=dev, generator=gen)
out = {}
for bits, groups in ((4, (64, 32, 16)), (8, (64,))):
    for group in groups:
        codes, offset, step = random_sketch(B * H, T, D, bits, group, dev, gen)
        moved = codes.numel() + 2 * offset.numel() * 2 + q32.numel() * 4 + B * H * T * 8 + B * H * T // 4
        for one_sided in (True, False):
            for int_dot in (False, True):
                name = f"int{bits} g{group} {'one' if one_sided else 'two'}-sided {'int' if int_dot else 'float'}"
                try:
                    fn = graph_of(lambda: sketch_scan_bound(q32, codes, offset, step, bits=bits, group=group, scale=0.1,
                                                            one_sided=one_sided, int_dot=int_dot), True)
                    ms = bench(fn, cuda=True)
                    out[name] = dict(ms=round(ms, 4), frac_of_copy=round(moved / ms / 1e9 / (bw / 1e12), 3),
                                     GB_moved=round(moved / 1e9, 3))
                    del fn
                except Exception as e:  # noqa: BLE001 — record and go on
                    out[name] = f"{type(e).__name__}: {e}"[:200]
                print(name, out[name], flush=True)
        del codes, offset, step
        torch.cuda.empty_cache()
meta = dict(device=torch.cuda.get_device_name(), torch=torch.__version__, T=T, B=B, H=H, D=D, copy_TBps=bw / 1e12)
try:
    import triton
    meta["triton"] = triton.__version__
except ImportError:
    pass
json.dump(dict(meta=meta, variants=out), open(os.path.join(os.environ.get("OUT", "."), "scan_variants.json"), "w"), indent=1)
