"""The certified step's certificate tail on a GPU: the fused kernels (``certificate.fused_certificate``:
−∞ scatter + ``row_lse`` chunks + ``cert_tail`` finish, three launches) against the float32 torch tail
they replaced (frozen in ``tests/test_cert_tail.py::_torch_tail``, ~95 small ops).

1. Agreement on CUDA (libdevice exp/log, not the interpreter's NumPy): on random rows at score
   magnitudes 10⁻³⁰ … 3·10⁴, the kernel's leakage and error must be ≥ the torch tail's on the same
   inputs, never NaN, and the gap equal — the counts of violations are written (all must be 0).
2. Time per call, both captured in a CUDA graph (``vashista_app.timing``: do_bench medians of graph
   replays), at engine shapes: R = batch·query heads rows of T bounds, Kc candidates.

    PYTHONPATH=. python benchmarks/cert_tail_gpu.py --out cert_tail.json          # < 1 min on an H100
    PYTHONPATH=. TRITON_INTERPRET=1 python benchmarks/cert_tail_gpu.py --smoke --out /tmp/ct.json
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests"))
from test_cert_tail import _rows, _torch_tail  # noqa: E402  (the frozen torch tail: one copy)

from vashista_app.timing import bench, graph_of  # noqa: E402
from vashista_gpu.certificate import fused_certificate  # noqa: E402
from vashista_gpu.kernels.row_lse import BLOCK, row_lse_chunks  # noqa: E402


def agreement(dev, R, T, Kc, Dv, mags, seeds):
    bad = dict(leak_below_torch=0, error_below_torch=0, nan=0, gap_differs=0, rows=0,
               worst_error_shortfall=0.0, worst_at=None)
    for mag in mags:
        for seed in range(seeds):
            ub, cand, lb, out, m_c, zsum, vm, eps = (t.to(dev) for t in _rows(seed, R=R, T=T, Kc=Kc, Dv=Dv, mag=mag))
            q_ok = torch.ones(R, dtype=torch.bool, device=dev)
            x = ub.clone()
            o = out.clone()
            ln, en, gn = fused_certificate(x, cand, o, m_c, zsum, vm, eps, q_ok=q_ok)
            m_ch, z_ch = row_lse_chunks(x)
            lo, eo, go = _torch_tail(m_ch, z_ch, T, Kc, out, m_c, zsum, vm, eps, q_ok, block=BLOCK)
            fin = go.abs() < 3.4e38
            bad["leak_below_torch"] += int((ln < lo).sum())
            bad["error_below_torch"] += int((en < eo).sum())
            below = en < eo
            if bool(below.any()):          # by how much (relative), and on which row: ulps or a real gap?
                rel = ((eo - en) / eo.abs().clamp(min=1e-38)).where(below, torch.zeros_like(en))
                i = int(rel.argmax())
                if float(rel[i]) > bad["worst_error_shortfall"]:
                    bad["worst_error_shortfall"] = float(rel[i])
                    bad["worst_at"] = dict(mag=mag, seed=seed, row=i, kernel=float(en[i]), torch=float(eo[i]),
                                           leak_kernel=float(ln[i]), leak_torch=float(lo[i]), vm=float(vm[i]),
                                           eps=float(eps[i]), onorm=float(out[i].double().norm()))
            bad["nan"] += int(torch.isnan(ln).sum() + torch.isnan(en).sum())
            bad["gap_differs"] += int((gn[fin] != go[fin]).sum())
            bad["rows"] += R
    return bad


def timing(dev, cuda, R, T, Kc, Dv):
    ub, cand, lb, out, m_c, zsum, vm, eps = (t.to(dev) for t in _rows(0, R=R, T=T, Kc=Kc, Dv=Dv, mag=5.0))
    q_ok = torch.ones(R, dtype=torch.bool, device=dev)

    def fused():
        fused_certificate(ub, cand, out, m_c, zsum, vm, eps, q_ok=q_ok)

    def torch_tail():
        ub.scatter_(1, cand, -math.inf)
        m_ch, z_ch = row_lse_chunks(ub)
        _torch_tail(m_ch, z_ch, T, Kc, out, m_c, zsum, vm, eps, q_ok, block=BLOCK)

    res = {}
    for name, fn in (("fused_ms", fused), ("torch_tail_ms", torch_tail)):
        res[name] = bench(graph_of(fn, cuda), cuda=cuda)
    return res


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--smoke", action="store_true", help="tiny shapes (CPU, TRITON_INTERPRET=1)")
    a = ap.parse_args(argv)
    cuda = torch.cuda.is_available()
    dev = "cuda" if cuda else "cpu"
    res = dict(device=torch.cuda.get_device_name() if cuda else "cpu", torch=torch.__version__)
    if a.smoke:
        res["agreement"] = agreement(dev, 8, 300, 8, 16, (1.0, 300.0), 1)
        res["timing"] = {"R8_T300_Kc8": timing(dev, cuda, 8, 300, 8, 16)}
    else:
        res["agreement"] = agreement(dev, 256, 20000, 64, 128, (1e-30, 1.0, 5.0, 30.0, 300.0, 3e4), 4)
        res["timing"] = {f"R{R}_T{T}_Kc{Kc}_Dv{Dv}": timing(dev, cuda, R, T, Kc, Dv)
                         for R, T, Kc, Dv in ((32, 32768, 16, 64), (128, 131072, 64, 64), (512, 131072, 256, 128))}
    ok = all(v == 0 for k, v in res["agreement"].items() if k != "rows")
    res["agreement_ok"] = ok
    print(json.dumps(res, indent=1))
    with open(a.out, "w") as f:
        json.dump(res, f, indent=1)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
