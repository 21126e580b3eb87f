"""One-sided vs two-sided sketch token bounds: how much looser is the GPU engine's certificate
M = L̂·(max‖v‖ + ‖o_C‖) on real activations?  (See REPORT.md in this folder.)

Follows ../cert_forms_cpu/analyze.py (the captured Qwen2.5-Coder-0.5B activations: post-RoPE K, V and the
last NQ queries of every layer). For every (file, layer >= 2, query position, query head) row and every
sketch setting (bits, group):

    C      = top-Kc of the sketch score ŝ (stable: ties to the lower index), Kc = 16·⌈T/256⌉ (budget 1/16)
    ub     = scale·(ŝ + e_up) with e_up from vashista_gpu.sketch.sketch_bounds(one_sided=True / False)
    Z̄      = Σ_{j∉C} e^{ub_j},  Z_C = Σ_{j∈C} e^{s_j} (exact scores),  L̂ = Z̄/(Z_C + Z̄)
    cert   = L̂·(max‖v‖ + ‖o_C‖)  (max over the row's KV head),  true = ‖o_C − o*‖  (all float64)

C does not depend on the side choice (ŝ is the same). Everything float64; the bounds are the
mathematical forms without the kernels' float32 outward-rounding allowances (relative ~1e-6).

Usage:  python cert_sides.py [DATA_DIR] [--qstride8192 N] [--qstride4096 N] [--files a.pt,b.pt]
        DATA_DIR defaults to /work/study_vnorm/data; writes rows.npz and tables.md next to this script
        (--out elsewhere). --tables-only rebuilds tables.md from rows.npz.
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
from vashista_gpu.sketch import quantize_keys, sketch_bounds  # noqa: E402

torch.set_num_threads(2)
CFGS = [(4, 16), (4, 32), (8, 64)]
TS = (0.1, 0.3, 1.0, 3.0)


def analyse(path, qstride):
    d = torch.load(path)
    T, NQ = d["T"], d["NQ"]
    out = {c: [] for c in CFGS}
    viol = {c: [0, 0] for c in CFGS}
    for li, L in enumerate(d["layers"]):
        if li < 2:
            continue
        q_all, k_all, v_all, scale = L["q"].double(), L["k"].double(), L["v"].double(), L["scaling"]
        Hq, Hkv = q_all.shape[0], k_all.shape[0]
        kv = torch.arange(Hq) // (Hq // Hkv)
        for qi in range(NQ - 1, -1, -qstride):
            Tq = T - NQ + qi + 1
            Q, K, V = q_all[:, qi], k_all[:, :Tq], v_all[:, :Tq]
            Kc = 16 * math.ceil(Tq / 256)
            s = scale * torch.einsum("hd,htd->ht", Q, K[kv])                  # (Hq, Tq) exact scores
            p = torch.softmax(s, -1)
            Vh = V[kv]
            o_star = torch.einsum("ht,htd->hd", p, Vh)
            vmax = torch.linalg.vector_norm(V, dim=-1).amax(-1)[kv]            # (Hq,)
            for bits, group in CFGS:
                sk = quantize_keys(K.float(), bits=bits, group=group)          # the cache holds float keys
                shat, e1, d1 = sketch_bounds(Q.float(), sk, compute_dtype=torch.float64, one_sided=True)
                shat2, e2, d2 = sketch_bounds(Q.float(), sk, compute_dtype=torch.float64, one_sided=False)
                assert torch.equal(shat, shat2)
                assert bool((e2 >= e1).all())
                cand = torch.sort(shat, dim=-1, descending=True, stable=True).indices[:, :Kc]
                inC = torch.zeros_like(s, dtype=torch.bool).scatter_(1, cand, True)
                outC = ~inC
                eC_m = torch.where(inC, s, -math.inf).amax(-1)
                oC = None
                rec = dict(T=np.full(Hq, Tq), layer=np.full(Hq, li), qi=np.full(Hq, qi), head=np.arange(Hq))
                for side, e_up in (("one", e1), ("two", e2)):
                    ub = scale * (shat + e_up)
                    viol_ub = int((ub < s - 1e-9).sum())
                    assert viol_ub == 0, f"ub below the true score ({side}-sided)"
                    m = torch.maximum(eC_m, torch.where(outC, ub, -math.inf).amax(-1))[:, None]
                    eC = torch.where(inC, torch.exp(s - m), 0.0)
                    ZC = eC.sum(-1)
                    Zbar = torch.where(outC, torch.exp(ub - m), 0.0).sum(-1)
                    if oC is None:
                        oC = torch.einsum("ht,htd->hd", eC / ZC[:, None], Vh)
                        r = torch.linalg.vector_norm(oC, dim=-1)
                        true = torch.linalg.vector_norm(oC - o_star, dim=-1)
                        Zout = torch.where(outC, torch.exp(s - m), 0.0).sum(-1)
                        rec["true"] = true.numpy()
                        rec["Ltrue"] = (Zout / (ZC + Zout)).numpy()
                    Lhat = Zbar / (ZC + Zbar)
                    cert = Lhat * (vmax + r)
                    rec[f"Lhat_{side}"] = Lhat.numpy()
                    rec[f"cert_{side}"] = cert.numpy()
                    # mean over out-of-C tokens of the scaled bound width ub - s (the looseness per token)
                    rec[f"gap_{side}"] = (torch.where(outC, ub - s, 0.0).sum(-1) / outC.sum(-1)).numpy()
                    viol[(bits, group)][0 if side == "one" else 1] += int((cert < true - 1e-12).sum())
                out[(bits, group)].append(rec)
        print(f"{os.path.basename(path)} layer {li} done", flush=True)
    res = {}
    for c, recs in out.items():
        res[c] = {k: np.concatenate([r[k] for r in recs]) for k in recs[0]}
        res[c]["Tctx"] = np.full(len(res[c]["true"]), T)
        res[c]["file"] = np.full(len(res[c]["true"]), os.path.basename(path))
    return res, viol


def fmt(x):
    return f"{x:.3g}"


def tables(allres):
    lines = []
    for c in CFGS:
        R = allres[c]
        bits, group = c
        n = len(R["true"])
        t, c1, c2 = R["true"], R["cert_one"], R["cert_two"]
        ok = t > 0                      # as ../cert_forms_cpu/report_tables.py (2 rows have true = 0 exactly)
        ratio = c2 / c1
        lines.append(f"#### int{bits} group {group}  (n = {n} rows; true error median {fmt(np.median(t))}, "
                     f"mean {fmt(t.mean())}; true leak median {fmt(np.median(R['Ltrue']))}; "
                     f"L̂ median one-sided {fmt(np.median(R['Lhat_one']))}, two-sided {fmt(np.median(R['Lhat_two']))})\n")
        lines.append("| side | median cert | mean cert | median cert/true | mean cert/true | "
                     "median L̂/true leak | t=0.1 | t=0.3 | t=1 | t=3 | violations |")
        lines.append("|---|---|---|---|---|---|---|---|---|---|---|")
        for side, cc in (("one-sided", c1), ("two-sided", c2)):
            key = "one" if side == "one-sided" else "two"
            q = cc[ok] / t[ok]
            lr = R[f"Lhat_{key}"][R["Ltrue"] > 0] / R["Ltrue"][R["Ltrue"] > 0]
            fb = [fmt((cc > th).mean()) for th in TS]
            v = int((cc < t - 1e-12).sum())
            lines.append(f"| {side} | {fmt(np.median(cc))} | {fmt(cc.mean())} | {fmt(np.median(q))} | {fmt(q.mean())} | "
                         f"{fmt(np.median(lr))} | " + " | ".join(fb) + f" | {v} |")
        lines.append("| (true error) | " + f"{fmt(np.median(t))} | {fmt(t.mean())} | 1 | 1 | – | "
                     + " | ".join(fmt((t > th).mean()) for th in TS) + " | – |")
        lines.append("")
        lines.append(f"Certificate ratio two-sided/one-sided (per row): min {fmt(ratio.min())}, median {fmt(np.median(ratio))}, "
                     f"mean {fmt(ratio.mean())}, geo-mean {fmt(np.exp(np.log(ratio).mean()))}, "
                     f"p90 {fmt(np.quantile(ratio, 0.9))}, max {fmt(ratio.max())}; "
                     f"ratio of means {fmt(c2.mean() / c1.mean())}, ratio of medians {fmt(np.median(c2) / np.median(c1))}. "
                     f"Mean out-of-C bound width ub − s (scaled logits), median over rows: one-sided "
                     f"{fmt(np.median(R['gap_one']))}, two-sided {fmt(np.median(R['gap_two']))}.")
        lines.append("")
        # per file
        lines.append("| file | rows | median ratio | mean ratio | one t=1 | two t=1 | one t=3 | two t=3 |")
        lines.append("|---|---|---|---|---|---|---|---|")
        for f in sorted(set(R["file"])):
            m = R["file"] == f
            lines.append(f"| {f} | {m.sum()} | {fmt(np.median(ratio[m]))} | {fmt(ratio[m].mean())} | "
                         f"{fmt((c1[m] > 1).mean())} | {fmt((c2[m] > 1).mean())} | "
                         f"{fmt((c1[m] > 3).mean())} | {fmt((c2[m] > 3).mean())} |")
        lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("data", nargs="?", default="/work/study_vnorm/data")
    ap.add_argument("--qstride4096", type=int, default=1)
    ap.add_argument("--qstride8192", type=int, default=2)
    ap.add_argument("--files", default="")
    ap.add_argument("--out", default=HERE)
    ap.add_argument("--tables-only", action="store_true", help="rebuild tables.md from OUT/rows.npz")
    a = ap.parse_args()
    if a.tables_only:
        z = np.load(os.path.join(a.out, "rows.npz"))
        allres = {(b, g): {k.split("_", 1)[1]: z[k] for k in z.files if k.startswith(f"int{b}g{g}_")} for b, g in CFGS}
        head = open(os.path.join(a.out, "tables.md")).readline() if os.path.exists(os.path.join(a.out, "tables.md")) else ""
        txt = tables(allres)
        with open(os.path.join(a.out, "tables.md"), "w") as f:
            f.write(head + "\n" + txt + "\n")
        print(txt)
        sys.exit(0)
    paths = ([os.path.join(a.data, f) for f in a.files.split(",")] if a.files
             else sorted(glob.glob(os.path.join(a.data, "*.pt"))))
    allres = {c: [] for c in CFGS}
    allviol = {c: [0, 0] for c in CFGS}
    t0 = time.time()
    for path in paths:
        t1 = time.time()
        d_T = int(os.path.basename(path).rsplit("_", 1)[1].split(".")[0])
        res, viol = analyse(path, a.qstride8192 if d_T >= 8192 else a.qstride4096)
        for c in CFGS:
            allres[c].append(res[c])
            allviol[c][0] += viol[c][0]
            allviol[c][1] += viol[c][1]
        print(path, "time", round(time.time() - t1, 1), "violations", viol, flush=True)
    allres = {c: {k: np.concatenate([r[k] for r in v]) for k in v[0]} for c, v in allres.items()}
    np.savez_compressed(os.path.join(a.out, "rows.npz"),
                        **{f"int{b}g{g}_{k}": v for (b, g), R in allres.items() for k, v in R.items()})
    desc = ", ".join(os.path.basename(p) for p in paths)
    txt = tables(allres)
    with open(os.path.join(a.out, "tables.md"), "w") as f:
        f.write(f"Files: {desc}; query stride 4096: {a.qstride4096}, 8192: {a.qstride8192}; "
                f"total time {time.time() - t0:.0f} s\n\n" + txt + "\n")
    print(txt)
