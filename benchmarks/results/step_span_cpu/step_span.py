"""Would a quantization step shared over a span of pages loosen the certificate much? (REPORT.md here)

Why ask: at the 1B shape (GQA, 4 query heads per KV head, D 64) the certified int4 scan runs ~3x below
copy bandwidth, bound by integer instructions (docs/ENGINE.md "Not done"), and a tensor-core scan lost
because its operand q ⊙ δ_g changes with every 16-token page. If the per-channel step δ were shared by
a span of pages (offsets still per page), that operand would change once per span.

Settings: the captured Qwen2.5-Coder-0.5B activations of ../cert_forms_cpu/capture.py (post-RoPE K, V,
the last NQ queries, every layer); rows = (file, layer >= 2, query position, query head). Per row and
sketch (bits, group): the real sketch (``vashista_gpu.sketch.quantize_keys``, float16 metadata) of the
query's prefix, and span variants built from it: step_span = the largest step of the span's groups per
channel (so o + L·step_span still covers every group: the sketch's covering rule), codes re-rounded with
it, offsets unchanged. ``sketch_bounds(one_sided=False)`` then gives ŝ and the two-sided e_g with the
sketch's own rounding terms, exactly as for the real sketch (span = group reproduces it bit for bit:
asserted). C = top-Kc of ŝ (stable), Kc = 16·⌈T/256⌉ (budget 1/16); the certificate is the GPU engine's
M = L̂·(max‖v‖ + ‖o_C‖), L̂ = Z̄/(Z_C + Z̄), Z̄ = Σ_{j∉C} e^{ub_j}, ub = scale·(ŝ + e); true = ‖o_C − o*‖;
float64 throughout.

Usage: python step_span.py DATA_DIR [--qstride N] [--tables NAME.md]   (the tables go next to this script)
"""
import argparse
import glob
import math
import os
import sys
import time

import numpy as np
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "..", ".."))
from vashista_gpu.sketch import TorchKeySketch, _pack, by_group, quantize_keys, sketch_bounds  # noqa: E402

torch.set_num_threads(2)
CFGS = {(4, 16): (16, 64, 256, 1024), (8, 64): (64, 256, 1024)}
TS = (0.3, 1.0, 3.0)


def span_sketch(K, sk, span):
    """``sk`` (the real sketch of K (Hkv, M, D)) with each channel's step raised to its span's largest."""
    H, M, D = K.shape
    Gr = sk.step.shape[1]
    per = span // sk.group
    ns = -(-Gr // per)
    st = torch.nn.functional.pad(sk.step, (0, 0, 0, ns * per - Gr))
    st = st.view(H, ns, per, D).amax(2, keepdim=True).expand(H, ns, per, D).reshape(H, ns * per, D)[:, :Gr]
    K64 = by_group(K.double(), sk.group)
    s64 = st.double()[:, :, None, :]
    t = torch.where(s64 > 0, (K64 - sk.offset.double()[:, :, None, :]) / torch.where(s64 > 0, s64, 1.0), 0.0)
    codes = torch.round(t).clamp(0, sk.levels).to(torch.uint8).view(H, Gr * sk.group, D)[:, :M]
    return TorchKeySketch(bits=sk.bits, group=sk.group, codes=_pack(codes, sk.bits).contiguous(),
                          offset=sk.offset, step=st.contiguous(), head_dim=D)


def analyse(path, qstride):
    d = torch.load(path)
    T, NQ = d["T"], d["NQ"]
    rows = {(c, sp): [] for c, spans in CFGS.items() for sp in spans}
    for li, Ld in enumerate(d["layers"]):
        if li < 2:
            continue
        q_all, k_all, v_all, scale = Ld["q"].double(), Ld["k"].double(), Ld["v"].double(), Ld["scaling"]
        Hq, Hkv = q_all.shape[0], k_all.shape[0]
        kv = torch.arange(Hq) // (Hq // Hkv)
        for qi in range(NQ - 1, -1, -qstride):
            Tq = T - NQ + qi + 1
            Q, K, V = q_all[:, qi], k_all[:, :Tq], v_all[:, :Tq]
            Kc = 16 * math.ceil(Tq / 256)
            s = scale * torch.einsum("hd,htd->ht", Q, K[kv])
            Vh = V[kv]
            o_star = torch.einsum("ht,htd->hd", torch.softmax(s, -1), Vh)
            vmax = torch.linalg.vector_norm(V, dim=-1).amax(-1)[kv]
            for (bits, group), spans in CFGS.items():
                sk = quantize_keys(K.float(), bits=bits, group=group)
                same = span_sketch(K.float(), sk, group)   # the re-rounding path reproduces the real sketch
                assert torch.equal(same.codes, sk.codes) and torch.equal(same.step, sk.step)
                for span in spans:
                    sks = span_sketch(K.float(), sk, span)
                    shat, e_up, _ = sketch_bounds(Q.float(), sks, compute_dtype=torch.float64, one_sided=False)
                    cand = torch.sort(shat, dim=-1, descending=True, stable=True).indices[:, :Kc]
                    inC = torch.zeros_like(s, dtype=torch.bool).scatter_(1, cand, True)
                    ub = scale * (shat + e_up)
                    assert bool((ub >= s - 1e-9).all()), "ub below the true score"
                    m = torch.maximum(torch.where(inC, s, -math.inf).amax(-1),
                                      torch.where(~inC, ub, -math.inf).amax(-1))[:, None]
                    eC = torch.where(inC, torch.exp(s - m), 0.0)
                    ZC = eC.sum(-1)
                    Zbar = torch.where(~inC, torch.exp(ub - m), 0.0).sum(-1)
                    oC = torch.einsum("ht,htd->hd", eC / ZC[:, None], Vh)
                    true = torch.linalg.vector_norm(oC - o_star, dim=-1)
                    cert = Zbar / (ZC + Zbar) * (vmax + torch.linalg.vector_norm(oC, dim=-1))
                    width = torch.where(~inC, ub - s, 0.0).sum(-1) / (~inC).sum(-1)
                    rows[((bits, group), span)].append(np.stack([cert.numpy(), true.numpy(), width.numpy()], 1))
        print(f"{os.path.basename(path)} layer {li} done", flush=True)
    return {k: np.concatenate(v) for k, v in rows.items()}


def fmt(x):
    return f"{x:.3g}"


def tables(res):
    out = []
    for (bits, group), spans in CFGS.items():
        base = res[((bits, group), spans[0])][:, 0]
        out.append(f"#### int{bits} group (page) {group}, two-sided bounds, n = {len(base)} rows\n")
        out.append("| step shared over | median cert | mean cert | median cert / page's | median cert/true | "
                   "median width ub − s | " + " | ".join(f"fallback t={t:g}" for t in TS)
                   + " | true error median | violations |")
        out.append("|" + "---|" * (8 + len(TS)))
        for span in spans:
            r = res[((bits, group), span)]
            cert, true, width = r[:, 0], r[:, 1], r[:, 2]
            ok = true > 0
            out.append(f"| {span} tokens{' (the page: today)' if span == group else ''} | {fmt(np.median(cert))} | "
                       f"{fmt(cert.mean())} | {fmt(np.median(cert / base))} | {fmt(np.median(cert[ok] / true[ok]))} | "
                       f"{fmt(np.median(width))} | " + " | ".join(fmt((cert > t).mean()) for t in TS)
                       + f" | {fmt(np.median(true))} | {int((cert < true - 1e-12).sum())} |")
        out.append("")
    return "\n".join(out)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("data")
    ap.add_argument("--qstride", type=int, default=1)
    ap.add_argument("--tables", default="tables.md", help="file name of the tables, next to this script")
    a = ap.parse_args()
    t0 = time.time()
    allres = None
    for p in sorted(glob.glob(os.path.join(a.data, "*.pt"))):
        r = analyse(p, a.qstride)
        allres = r if allres is None else {k: np.concatenate([allres[k], r[k]]) for k in r}
    txt = tables(allres)
    with open(os.path.join(HERE, a.tables), "w") as f:
        f.write(txt + "\n")
    print(txt)
    print(f"{time.time() - t0:.0f} s")


if __name__ == "__main__":
    main()
