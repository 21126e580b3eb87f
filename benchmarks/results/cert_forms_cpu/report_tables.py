"""Tables for REPORT.md from results/*.npz.  Usage: python report_tables.py [results/*.npz] > tables.md"""
import os
HERE = os.path.dirname(os.path.abspath(__file__))   # the study folder (results/)
import glob, sys
import numpy as np

files = sys.argv[1:] or sorted(glob.glob(HERE + "/results/*.npz"))
D = [dict(np.load(f, allow_pickle=True)) for f in files]
texts = [f.split("/")[-1].replace(".npz", "") for f in files]


def forms(d):
    M = d["middle"]
    f = dict(middle=M, middle_outpages16=d["middle_out16"])
    for w in ("p16", "p64", "tok"):
        f[f"simple_{w}"] = np.minimum(M, d[f"simple_{w}"])
    f["lo_p16"] = np.minimum(M, d["lo_p16"])
    f["estar0_p16"] = d["estar0_p16"]
    for w in ("p16", "p64", "tok"):
        f[f"estar_{w}"] = d[f"estar_{w}"]
    f["estar_oracle"] = d["estar_oracle"]
    return f


NAMES = {"middle": "M: L̂(max‖v‖+‖o_C‖) (fused today)",
         "middle_outpages16": "M': L̂(max over out-of-C 16-pages vnorm + ‖o_C‖)",
         "simple_p16": "S16 = min(M, A16/Z_C + L̂‖o_C‖)  [recommended, ub only]",
         "simple_p64": "S64 = min(M, A64/Z_C + L̂‖o_C‖)",
         "simple_tok": "Stok = min(M, Atok/Z_C + L̂‖o_C‖)  [per-token ‖v_j‖, limit]",
         "lo_p16": "L16 = min(M, A16/(Z_C+Z_lo) + L̂‖o_C‖)  [needs lb sum]",
         "estar0_p16": "E0_16: exact max over x∈[0,e^ub] (sort), 16-pages",
         "estar_p16": "E16: exact max over x∈[e^lb,e^ub], 16-pages (torch path's E*)",
         "estar_p64": "E64: same, 64-pages",
         "estar_tok": "Etok: same, per-token ‖v_j‖",
         "estar_oracle": "Eorc: same, per-token ‖v_j−o_C‖ (oracle, needs all values)"}


def sub(d, m):
    return {k: v[m] for k, v in d.items()}


def summary(d, label):
    f = forms(d)
    t = d["true"]
    ok = t > 0
    out = [f"\n#### {label}  (n = {len(t)} (layer, head, query) rows; true error median {np.median(t):.3g}, "
           f"mean {t.mean():.3g}; L̂ median {np.median(d['Lhat']):.3g}, true leak median {np.median(d['Ltrue']):.3g})\n",
           "| form | median cert | mean cert | median cert/true | mean cert/true | gain M/form median | gain mean | gain geo-mean | violations |",
           "|---|---|---|---|---|---|---|---|---|"]
    for k, v in f.items():
        ratio = v[ok] / t[ok]
        gain = f["middle"] / v
        out.append(f"| {NAMES[k]} | {np.median(v):.4g} | {v.mean():.4g} | {np.median(ratio):.3g} | {ratio.mean():.3g} | "
                   f"{np.median(gain):.3g} | {gain.mean():.3g} | {np.exp(np.log(gain).mean()):.3g} | {int((v < t - 1e-12).sum())} |")
    if "naive_p16" in d:
        nv = d["naive_p16"]
        out.append(f"\n(unsound) (A16 + ‖o_C‖Z̄)/(Z_C + Z̄): median gain {np.median(f['middle'] / nv):.3g}, "
                   f"rows below the true error: {int((nv < t - 1e-12).sum())}")
    if "tri_tok" in d:
        fac = [("L̂ / true leak (sketch ub looseness)", d["Lhat"] / d["Ltrue"]),
               ("(max‖v‖+‖o_C‖) / p-avg(‖v_j‖+‖o_C‖) (vmax factor: what vnorm attacks)", d["Ltrue"] * (d["vmax"] + d["r"]) / d["tri_tok"]),
               ("p-avg(‖v_j‖+‖o_C‖) / p-avg‖v_j−o_C‖ (triangle)", d["tri_tok"] / d["tri_dist"]),
               ("Σp_j‖v_j−o_C‖ / ‖Σp_j(v_j−o_C)‖ (cancellation)", d["tri_dist"] / t)]
        good = t > 1e-12
        out.append("\nWhere M's slack comes from (M/true = product of the four; rows with true > 1e-12):\n")
        out.append("| factor | median | geo-mean |\n|---|---|---|")
        for name, x in fac:
            out.append(f"| {name} | {np.median(x[good]):.3g} | {np.exp(np.log(x[good]).mean()):.3g} |")
        out.append(f"| product = M/true | {np.median((f['middle'] / t)[good]):.3g} | {np.exp(np.log((f['middle'] / t)[good]).mean()):.3g} |")
    out.append("\nDenseFallback rate (fraction of rows with certificate > t):\n")
    ts = (0.1, 0.3, 1, 3)
    out.append("| form | " + " | ".join(f"t={x}" for x in ts) + " |")
    out.append("|---|" + "---|" * len(ts))
    for k in ("middle", "simple_p16", "simple_p64", "simple_tok", "lo_p16", "estar0_p16", "estar_p16", "estar_tok",
              "estar_oracle"):
        out.append(f"| {k} | " + " | ".join(f"{(f[k] > x).mean():.3f}" for x in ts) + " |")
    out.append(f"| (true error) | " + " | ".join(f"{(t > x).mean():.3f}" for x in ts) + " |")
    return "\n".join(out)


def per_layer(d, label):
    f = forms(d)
    t = d["true"]
    out = [f"\n#### Per layer: {label}\n",
           "| layer | true med | M med | S16 med | S64 med | Stok med | E16 med | M/true med | S16/true med | Stok/true med | E16/true med | gain M/S16 med | mean | gain M/S64 med | gain M/Stok med | gain M/E16 med | mean |",
           "|" + "---|" * 17]
    for li in np.unique(d["layer"]):
        m = d["layer"] == li
        tt = t[m]
        g = lambda k: f[k][m]
        out.append(f"| {li} | {np.median(tt):.3g} | {np.median(g('middle')):.3g} | {np.median(g('simple_p16')):.3g} | "
                   f"{np.median(g('simple_p64')):.3g} | {np.median(g('simple_tok')):.3g} | {np.median(g('estar_p16')):.3g} | "
                   f"{np.median(g('middle') / tt):.3g} | {np.median(g('simple_p16') / tt):.3g} | "
                   f"{np.median(g('simple_tok') / tt):.3g} | {np.median(g('estar_p16') / tt):.3g} | "
                   f"{np.median(g('middle') / g('simple_p16')):.3g} | {np.mean(g('middle') / g('simple_p16')):.3g} | "
                   f"{np.median(g('middle') / g('simple_p64')):.3g} | {np.median(g('middle') / g('simple_tok')):.3g} | "
                   f"{np.median(g('middle') / g('estar_p16')):.3g} | {np.mean(g('middle') / g('estar_p16')):.3g} |")
    return "\n".join(out)


def cat(ds):
    return {k: np.concatenate([d[k] for d in ds]) for k in ds[0] if all(k in d for d in ds)}


print("# Tables (generated by report_tables.py)\n")
print("Files: " + ", ".join(texts))
for d, name in zip(D, texts):
    for bits, group in ((4, 16), (8, 64)):
        for sel in ("sketch", "true"):
            m = (d["bits"] == bits) & (d["sel"] == sel)
            if m.sum() == 0:
                continue
            print(summary(sub(d, m), f"{name}, int{bits} g{group}, C = top-Kc by {'sketch ŝ' if sel == 'sketch' else 'true score'}"))
    if False:
        m = ~np.isnan(d["tp_estar"].astype(float))
        dd = sub(d, m)
        print(f"\nCross-check vs vashista_gpu.sketch.certified_decode (float64, last query, sketch selection; "
              f"{m.sum()} rows): max |E16 − tp.error_estar|/tp = "
              f"{np.max(np.abs(dd['estar_p16'][dd['bits'] == 4] - dd['tp_estar'][dd['bits'] == 4]) / dd['tp_estar'][dd['bits'] == 4]):.2e} (int4 g16); "
              f"max |E64 − tp|/tp = {np.max(np.abs(dd['estar_p64'][dd['bits'] == 8] - dd['tp_estar'][dd['bits'] == 8]) / dd['tp_estar'][dd['bits'] == 8]):.2e} (int8 g64); "
              f"median tp.error_middle / M' = {np.median(dd['tp_middle'] / dd['middle_out16']):.4f}")
allD = cat(D)
for Tc in np.unique(allD["Tctx"]):
    m = (allD["bits"] == 4) & (allD["sel"] == "sketch") & (allD["Tctx"] == Tc)
    print(summary(sub(allD, m), f"ALL texts at T = {Tc}, int4 g16, sketch selection"))
for bits, group in ((4, 16), (8, 64)):
    m = (allD["bits"] == bits) & (allD["sel"] == "sketch")
    print(summary(sub(allD, m), f"ALL files pooled, int{bits} g{group}, sketch selection"))
    print(per_layer(sub(allD, m), f"ALL files pooled, int{bits} g{group}, sketch selection"))
