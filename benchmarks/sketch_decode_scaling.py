"""Certified-mode decode benchmark (issue 8): dense SDPA flash vs the fused certified step
(``vashista_gpu.sketch.fused_sketch_step``) with the certificate computed for every query.

Shapes (paper): batch 16, 32 heads (MHA), head dim 128, bf16 K/V, T ∈ {8k, 32k, 128k}, Kc = 256,
int4 and int8 sketches. Quantization group: 64 tokens × 1 channel, metadata (step, offset) in
float16 — 4 bytes per channel per 64 tokens = 8 bytes/token/head, i.e. 1/8 of the int4 codes
(64 B/token/head) and 1/16 of int8 (128 B); a 16-token group (one page) would make metadata
half the int4 codes' size, float32 metadata double it again.

The sketch here is random (codes uniform, positive float16 steps): the scan's cost does not depend
on the values, and the certificate's soundness is tested on real values in
tests/test_gpu_sketch_fused.py; the numbers below time the same kernels on the same bytes.

The step runs with ``sync=False`` (no host synchronisation, so it can be graph-captured); rows whose
threshold selection overflowed are counted and reported (``overflow_rows``) — on these inputs none.
Also timed alone: the scan variants (block size, warps, without the one-sided savings), the
threshold selection, a full ``topk`` of every token's tie key (what the selection replaced), and the
certificate's one-pass log-sum-exp.

Timing: ``triton.testing.do_bench`` medians of CUDA-graph replays (``decode_scaling.graph_of``),
dense flash rerun in the same process, copy bandwidth measured in the same process
(``decode_scaling.copy_bandwidth``). Bytes:

* sketch = codes + metadata (steps and offsets), read once per KV head;
* scan moved = sketch + q + the scan's outputs (float32 score + float32 bound per token and query
  head, and the maxima of every 16 scores, written once) — what the scan kernel actually moves with
  token bounds; the two-sided step's scan (``bounds="slack"``, timed as ``w1_two_sided_slack``)
  writes the score and one float per group instead of the bound;
* floor = sketch + q + the candidates' keys and values (Kc·(D+Dv)·2 bytes per query head) + output.

Usage::

    PYTHONPATH=. python benchmarks/sketch_decode_scaling.py --out sketch.json
    PYTHONPATH=. TRITON_INTERPRET=1 python benchmarks/sketch_decode_scaling.py --smoke   # tiny, CPU
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from decode_scaling import bench, copy_bandwidth, graph_of  # noqa: E402

from vashista_gpu.dense import sdpa_decode  # noqa: E402
from vashista_gpu.kernels.row_lse import row_lse_upper  # noqa: E402
from vashista_gpu.kernels.sketch_scan import sketch_scan_bound  # noqa: E402
from vashista_gpu.selection import tie_keys  # noqa: E402
from vashista_gpu.selection import select_candidates  # noqa: E402
from vashista_gpu.sketch import fused_sketch_step, quantize_keys  # noqa: E402


def random_sketch(RK, T, D, bits, group, dev, gen):
    W = D * bits // 8
    codes = torch.randint(0, 256, (RK, T, W), dtype=torch.uint8, device=dev, generator=gen)
    Gr = -(-T // group)
    offset = (-torch.rand((RK, Gr, D), device=dev, generator=gen) * 3).half()
    step = (torch.rand((RK, Gr, D), device=dev, generator=gen) * 6 / ((1 << bits) - 1) + 1e-3).half()
    return codes, offset, step


def key_sketch(K, bits, group):
    """The sketch of the keys K (B, H, T, D) themselves (``quantize_keys``, float16 metadata), one batch row
    at a time (its float64 work is ~4x the row's keys): the fused step checks that a caller's sketch was
    built from its keys (``sketch.sketch_mismatch``) and certifies nothing (error +inf) for a foreign
    one, so a random sketch would time a step whose certificates are all infinite."""
    parts = [quantize_keys(K[b], bits=bits, group=group) for b in range(K.shape[0])]
    return (torch.cat([p.codes for p in parts]), torch.cat([p.offset for p in parts]),
            torch.cat([p.step for p in parts]))


def run_T(B, H, T, D, Kc, group, dev, cuda, bits_list, rows, bw):
    gen = torch.Generator(device=dev).manual_seed(T)
    dt = torch.bfloat16
    K = torch.randn(B, H, T, D, device=dev, dtype=dt, generator=gen)
    V = torch.randn(B, H, T, D, device=dev, dtype=dt, generator=gen)
    q = torch.randn(B, H, D, device=dev, dtype=dt, generator=gen)
    scale = 1 / math.sqrt(D)
    if cuda:
        from torch.nn.attention import SDPBackend, sdpa_kernel

        def dense_fn():
            with sdpa_kernel([SDPBackend.FLASH_ATTENTION]):
                return sdpa_decode(q, K, V, scale)
    else:
        def dense_fn():
            return sdpa_decode(q, K, V, scale)
    dense_ms = bench(dense_fn, cuda=cuda)
    cudnn_ms = None
    if cuda:          # the strongest dense backend at this shape in earlier runs (issue 14): same process
        def cudnn_fn():
            with sdpa_kernel([SDPBackend.CUDNN_ATTENTION]):
                return sdpa_decode(q, K, V, scale)
        try:
            cudnn_ms = bench(cudnn_fn, cuda=cuda)
        except Exception as e:  # noqa: BLE001 — no cuDNN attention on this build or card: say so
            cudnn_ms = f"{type(e).__name__}: {e}"[:200]
    dense_bytes = 2 * B * H * T * D * 2
    vmax = torch.linalg.vector_norm(V.float(), dim=-1).amax(-1) if T <= 32768 else torch.stack(
        [torch.linalg.vector_norm(V[b].float(), dim=-1).amax(-1) for b in range(B)])
    for bits in bits_list:
        codes, offset, step = key_sketch(K, bits, group)
        sketch_bytes = codes.numel() + 2 * offset.numel() * offset.element_size()
        q32 = q.float().reshape(B * H, D)
        # scan variants: warps, with / without the one-sided savings (SPEC 3b's two-sided e_g)
        variants = {}
        for nw, os_ in [(1, True), (2, True), (4, True), (1, False), (2, False)]:
            try:
                fn = graph_of(lambda: sketch_scan_bound(q32, codes, offset, step, bits=bits, group=group, scale=scale,
                                                        num_warps=nw, one_sided=os_), cuda)
                variants[f"w{nw}_{'one' if os_ else 'two'}_sided"] = bench(fn, cuda=cuda)
                del fn
            except Exception as e:  # noqa: BLE001 — record and go on
                variants[f"w{nw}_{'one' if os_ else 'two'}_sided"] = f"{type(e).__name__}: {e}"[:200]
        # the two-sided step's scan: each group's slack instead of ub per token and query head
        fn = graph_of(lambda: sketch_scan_bound(q32, codes, offset, step, bits=bits, group=group, scale=scale,
                                                one_sided=False, bounds="slack"), cuda)
        variants["w1_two_sided_slack"] = bench(fn, cuda=cuda)
        del fn
        scan_ms = variants["w1_one_sided"]          # the defaults of sketch_scan_bound
        scan_two_ms = variants["w1_two_sided"]
        s_, ub_, bmax_ = sketch_scan_bound(q32, codes, offset, step, bits=bits, group=group, scale=scale)
        sel = graph_of(lambda: select_candidates(s_, bmax_, Kc, 4 * Kc, False), cuda)
        select_ms = bench(sel, cuda=cuda)
        _, ovf = select_candidates(s_, bmax_, Kc, 4 * Kc, False)
        full_keys = tie_keys(s_, torch.arange(T, device=dev))
        topk_full = graph_of(lambda: torch.topk(full_keys, Kc, dim=-1, sorted=False), cuda)
        topk_full_ms = bench(topk_full, cuda=cuda)
        lse = graph_of(lambda: row_lse_upper(ub_), cuda)
        lse_ms = bench(lse, cuda=cuda)
        del s_, ub_, bmax_, sel, full_keys, topk_full, lse
        holder = {}
        step_ms = {}
        for os_ in (True, False):
            def step_fn():
                holder["r"] = fused_sketch_step(q, K, V, codes, offset, step, vmax, bits=bits, group=group, Kc=Kc,
                                                scale=scale, sync=False, one_sided=os_)
            ours = graph_of(step_fn, cuda)
            step_ms[os_] = bench(ours, cuda=cuda)
            holder[os_] = holder["r"]
            del ours
        ours_ms, ours_two_ms = step_ms[True], step_ms[False]
        r, r2 = holder[True], holder[False]
        scan_moved = sketch_bytes + q32.numel() * 4 + B * H * T * 8 + B * H * T // 4
        floor = sketch_bytes + B * H * D * 2 + B * H * Kc * 2 * D * 2 + B * H * D * 4
        row = dict(T=T, bits=bits, B=B, H=H, D=D, Kc=Kc, group=group, meta_dtype="float16",
                   dense_flash_ms=dense_ms, dense_TBps=dense_bytes / dense_ms / 1e9, dense_cudnn_ms=cudnn_ms,
                   speedup_vs_cudnn=(cudnn_ms / ours_ms if isinstance(cudnn_ms, float) else None),
                   speedup_two_sided_vs_cudnn=(cudnn_ms / ours_two_ms if isinstance(cudnn_ms, float) else None),
                   ours_ms=ours_ms, speedup=dense_ms / ours_ms,
                   ours_two_sided_ms=ours_two_ms, speedup_two_sided=dense_ms / ours_two_ms,
                   scan_two_sided_ms=scan_two_ms,
                   scan_two_sided_frac_of_copy=(scan_moved / scan_two_ms / 1e9) / (bw / 1e12) if bw else None,
                   leakage_median_two_sided=float(r2.certified_leakage.float().median()),
                   scan_ms=scan_ms, scan_variants_ms=variants, select_ms=select_ms,
                   full_topk_ms_for_comparison=topk_full_ms, lse_ms=lse_ms,
                   glue_ms=ours_ms - scan_ms - select_ms,
                   overflow_rows=int(ovf.sum()), overflow_rows_in_step=int(r.overflow.sum()),
                   sketch_bytes=sketch_bytes, metadata_bytes=2 * offset.numel() * 2,
                   floor_bytes=floor, floor_ms_at_copy_bw=floor / bw * 1e3 if bw else None,
                   ours_floor_TBps=floor / ours_ms / 1e9,
                   scan_moved_bytes=scan_moved, scan_TBps=scan_moved / scan_ms / 1e9,
                   scan_sketch_only_TBps=sketch_bytes / scan_ms / 1e9,
                   scan_frac_of_copy=(scan_moved / scan_ms / 1e9) / (bw / 1e12) if bw else None,
                   leakage_median=float(r.certified_leakage.float().median()),
                   certificate_finite=bool(torch.isfinite(r.certified_error).all()))
        rows.append(row)
        print(json.dumps(row), flush=True)
        del codes, offset, step, holder, r, r2
        if cuda:
            torch.cuda.empty_cache()
    del K, V
    if cuda:
        torch.cuda.empty_cache()


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=None)
    ap.add_argument("--smoke", action="store_true", help="tiny shapes on any device")
    ap.add_argument("--T", type=int, nargs="*", default=[8192, 32768, 131072])
    ap.add_argument("--bits", type=int, nargs="*", default=[4, 8], choices=[4, 8])
    ap.add_argument("--group", type=int, default=64, help="quantization group (tokens); metadata = 4 B/channel/group")
    a = ap.parse_args(argv)
    cuda = torch.cuda.is_available()
    dev = "cuda" if cuda else "cpu"
    rows = []
    meta = dict(date=time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), torch=torch.__version__,
                device=torch.cuda.get_device_name() if cuda else "cpu")
    try:
        import triton
        meta["triton"] = triton.__version__
    except ImportError:
        pass
    bw = copy_bandwidth(dev) if cuda else None
    meta["copy_TBps"] = bw / 1e12 if bw else None
    print(json.dumps(meta), flush=True)
    if a.smoke:
        run_T(2, 2, 256, 16, 16, 64, dev, cuda, [4, 8], rows, bw)
    else:
        for T in a.T:
            try:
                run_T(16, 32, T, 128, 256, a.group, dev, cuda, a.bits, rows, bw)
            except Exception as e:  # noqa: BLE001 — record and go on to the next shape
                rows.append(dict(T=T, error=f"{type(e).__name__}: {e}"[:500]))
                print(rows[-1], flush=True)
                if cuda:
                    torch.cuda.empty_cache()
    if a.out:
        with open(a.out, "w") as f:
            json.dump(dict(meta=meta, rows=rows), f, indent=1)


if __name__ == "__main__":
    main()
