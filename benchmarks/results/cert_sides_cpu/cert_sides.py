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

Third side "hyb" (eighth session: the GPU certificate's hybrid): a token whose 16-token block (j // 16,
absolute index) holds at least one candidate of C uses the two-sided e_up, every other token the one-sided
one. Also recorded: the share of the prefix's tokens in such marked blocks (mark_tok) and of the out-of-C
tokens in them (mark_out: the tokens whose bound the hybrid loosens).

Usage:  python cert_sides.py [DATA_DIR] [--qstride8192 N] [--qstride4096 N] [--files a.pt,b.pt]
        DATA_DIR defaults to /work/study_vnorm/data; writes rows.npz and tables.md next to this script
        (--out elsewhere; --tables-name another name for tables.md; --rows another path for rows.npz).
        --tables-only rebuilds the tables from rows.npz.
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
BLOCK = 16                      # the hybrid's block: tokens j with j // BLOCK equal
SIDES = (("one", "one-sided"), ("hyb", "hybrid"), ("two", "two-sided"))
TS = (0.1, 0.3, 1.0, 3.0)


def analyse(path, qstride):
    d = torch.load(path)
    T, NQ = d["T"], d["NQ"]
    out = {c: [] for c in CFGS}
    viol = {c: [0, 0, 0] for c in CFGS}
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
                # hybrid: two-sided in every 16-token block that holds a candidate, one-sided elsewhere
                nblk = -(-Tq // BLOCK)
                blk = torch.arange(Tq) // BLOCK
                bmark = torch.zeros(Hq, nblk, dtype=torch.bool).scatter_(1, cand // BLOCK, True)
                marked = bmark[:, blk]                                          # (Hq, Tq)
                eh = torch.where(marked, e2, e1)
                rec["mark_tok"] = marked.double().mean(-1).numpy()
                rec["mark_out"] = ((marked & outC).sum(-1) / outC.sum(-1)).double().numpy()
                rec["mark_blk"] = bmark.double().mean(-1).numpy()
                for side, e_up in (("one", e1), ("hyb", eh), ("two", e2)):
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
                    viol[(bits, group)][("one", "hyb", "two").index(side)] += int((cert < true - 1e-12).sum())
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
        t = R["true"]
        cs = {k: R[f"cert_{k}"] for k, _ in SIDES}
        c1, ch, c2 = cs["one"], cs["hyb"], cs["two"]
        ok = t > 0                      # as ../cert_forms_cpu/report_tables.py (2 rows have true = 0 exactly)
        lines.append(f"#### int{bits} group {group}  (n = {n} rows; true error median {fmt(np.median(t))}, "
                     f"mean {fmt(t.mean())}; true leak median {fmt(np.median(R['Ltrue']))}; L̂ median "
                     + ", ".join(f"{name} {fmt(np.median(R[f'Lhat_{k}']))}" for k, name in SIDES) + ")\n")
        lines.append("| side | median cert | mean cert | median cert/true | mean cert/true | "
                     "median L̂/true leak | t=0.1 | t=0.3 | t=1 | t=3 | violations |")
        lines.append("|---|---|---|---|---|---|---|---|---|---|---|")
        for key, side in SIDES:
            cc = cs[key]
            q = cc[ok] / t[ok]
            lr = R[f"Lhat_{key}"][R["Ltrue"] > 0] / R["Ltrue"][R["Ltrue"] > 0]
            fb = [fmt((cc > th).mean()) for th in TS]
            v = int((cc < t - 1e-12).sum())
            lines.append(f"| {side} | {fmt(np.median(cc))} | {fmt(cc.mean())} | {fmt(np.median(q))} | {fmt(q.mean())} | "
                         f"{fmt(np.median(lr))} | " + " | ".join(fb) + f" | {v} |")
        lines.append("| (true error) | " + f"{fmt(np.median(t))} | {fmt(t.mean())} | 1 | 1 | – | "
                     + " | ".join(fmt((t > th).mean()) for th in TS) + " | – |")
        lines.append("")
        for key, name in (("hyb", "hybrid"), ("two", "two-sided")):
            cc = cs[key]
            ratio = cc / c1
            lines.append(f"Certificate ratio {name}/one-sided (per row): min {fmt(ratio.min())}, median {fmt(np.median(ratio))}, "
                         f"mean {fmt(ratio.mean())}, geo-mean {fmt(np.exp(np.log(ratio).mean()))}, "
                         f"p90 {fmt(np.quantile(ratio, 0.9))}, max {fmt(ratio.max())}; "
                         f"ratio of means {fmt(cc.mean() / c1.mean())}, ratio of medians {fmt(np.median(cc) / np.median(c1))}.")
            lines.append("")
        rh = (ch - c1) / np.where(c2 > c1, c2 - c1, np.nan)
        lines.append(f"Hybrid's share of the two-sided loosening (cert_hyb − cert_one)/(cert_two − cert_one), rows with "
                     f"cert_two > cert_one: median {fmt(np.nanmedian(rh))}, mean {fmt(np.nanmean(rh))}. "
                     f"Order one ≤ hybrid ≤ two-sided (rel. 1e-12) broken on "
                     f"{int((ch < c1 * (1 - 1e-12)).sum() + (ch > c2 * (1 + 1e-12)).sum())} rows.")
        lines.append("")
        mt, mo, mb = R["mark_tok"], R["mark_out"], R["mark_blk"]
        lines.append(f"Marked 16-token blocks (holding ≥ 1 candidate): share of blocks median {fmt(np.median(mb))}, "
                     f"mean {fmt(mb.mean())}; share of the prefix's tokens in marked blocks median {fmt(np.median(mt))}, "
                     f"mean {fmt(mt.mean())} (p10 {fmt(np.quantile(mt, 0.1))}, p90 {fmt(np.quantile(mt, 0.9))}); "
                     f"share of out-of-C tokens in marked blocks (the ones the hybrid loosens) median {fmt(np.median(mo))}, "
                     f"mean {fmt(mo.mean())} (p10 {fmt(np.quantile(mo, 0.1))}, p90 {fmt(np.quantile(mo, 0.9))}).")
        lines.append("")
        lines.append("Mean out-of-C bound width ub − s (scaled logits), median over rows: "
                     + ", ".join(f"{name} {fmt(np.median(R[f'gap_{k}']))}" for k, name in SIDES) + ".")
        lines.append("")
        # per file
        lines.append("| file | rows | median hyb/one | p90 hyb/one | median two/one | marked tok (median) | "
                     "one t=1 | hyb t=1 | two t=1 | one t=3 | hyb t=3 | two t=3 |")
        lines.append("|---|---|---|---|---|---|---|---|---|---|---|---|")
        for f in sorted(set(R["file"])):
            m = R["file"] == f
            lines.append(f"| {f} | {m.sum()} | {fmt(np.median(ch[m] / c1[m]))} | {fmt(np.quantile(ch[m] / c1[m], 0.9))} | "
                         f"{fmt(np.median(c2[m] / c1[m]))} | {fmt(np.median(mt[m]))} | "
                         + " | ".join(fmt((cs[k][m] > th).mean()) for th in (1, 3) for k, _ in SIDES) + " |")
        lines.append("")
        # fallback row counts
        lines.append("DenseFallback row counts one / hybrid / two-sided (of %d), t = 0.1 / 0.3 / 1 / 3: " % n
                     + "; ".join(f"t={th:g}: " + " / ".join(str(int((cs[k] > th).sum())) for k, _ in SIDES) for th in TS)
                     + ".")
        lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("data", nargs="?", default="/work/study_vnorm/data")
    ap.add_argument("--qstride4096", type=int, default=1)
    ap.add_argument("--qstride8192", type=int, default=2)
    ap.add_argument("--files", default="")
    ap.add_argument("--out", default=HERE)
    ap.add_argument("--tables-name", default="tables.md")
    ap.add_argument("--rows", default="", help="rows file (default OUT/rows.npz)")
    ap.add_argument("--tables-only", action="store_true", help="rebuild the tables from the rows file")
    a = ap.parse_args()
    rows_path = a.rows or os.path.join(a.out, "rows.npz")
    tpath = os.path.join(a.out, a.tables_name)
    if a.tables_only:
        z = np.load(rows_path)
        allres = {(b, g): {k.split("_", 1)[1]: z[k] for k in z.files if k.startswith(f"int{b}g{g}_")} for b, g in CFGS}
        head = open(tpath).readline() if os.path.exists(tpath) else ""
        txt = tables(allres)
        with open(tpath, "w") as f:
            f.write(head + "\n" + txt + "\n")
        print(txt)
        sys.exit(0)
    paths = ([os.path.join(a.data, f) for f in a.files.split(",")] if a.files
             else sorted(glob.glob(os.path.join(a.data, "*.pt"))))
    allres = {c: [] for c in CFGS}
    allviol = {c: [0, 0, 0] for c in CFGS}
    t0 = time.time()
    for path in paths:
        t1 = time.time()
        d_T = int(os.path.basename(path).rsplit("_", 1)[1].split(".")[0])
        res, viol = analyse(path, a.qstride8192 if d_T >= 8192 else a.qstride4096)
        for c in CFGS:
            allres[c].append(res[c])
            allviol[c] = [x + y for x, y in zip(allviol[c], viol[c])]
        print(path, "time", round(time.time() - t1, 1), "violations", viol, flush=True)
    allres = {c: {k: np.concatenate([r[k] for r in v]) for k in v[0]} for c, v in allres.items()}
    np.savez_compressed(rows_path,
                        **{f"int{b}g{g}_{k}": v for (b, g), R in allres.items() for k, v in R.items()})
    desc = ", ".join(os.path.basename(p) for p in paths)
    txt = tables(allres)
    with open(tpath, "w") as f:
        f.write(f"Files: {desc}; query stride 4096: {a.qstride4096}, 8192: {a.qstride8192}; "
                f"total time {time.time() - t0:.0f} s; violations (one, hybrid, two) "
                + "; ".join(f"int{b} g{g}: {v}" for (b, g), v in allviol.items()) + "\n\n" + txt + "\n")
    print(txt)
