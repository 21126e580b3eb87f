"""Certificate forms on captured Qwen2.5-Coder-0.5B activations (see REPORT.md).
Usage: python analyze.py data/X.pt [more.pt ...]  -> results/<name>.npz (one row per layer, head, query,
sketch config, selection). Everything float64; the bounds are the mathematical forms without the
float32 outward-rounding allowances of the kernels (relative ~1e-6, irrelevant for ratios)."""
import math, os, sys, time
HERE = os.path.dirname(os.path.abspath(__file__))   # the study folder (data/, results/)
import numpy as np
import torch
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", ".."))
from vashista_gpu.sketch import quantize_keys, sketch_bounds, certified_decode

torch.set_num_threads(2)
CFGS = [(4, 16), (8, 64)]
SELS = os.environ.get("SELS", "true,sketch").split(",")
QSTRIDE = int(os.environ.get("QSTRIDE", "1"))   # analyse every QSTRIDE-th captured query (from the last)
PAGES = (16, 64)


def page_max(n, P):
    """n (Hkv, T) -> per-token max of its P-token page (pages aligned at 0)."""
    H, T = n.shape
    G = -(-T // P)
    x = torch.nn.functional.pad(n, (0, G * P - T), value=0.0).view(H, G, P).amax(-1)
    return x.repeat_interleave(P, dim=1)[:, :T]


def best_prefix(base_num, base_den, slack, c):
    """Row-wise max over x_j in [lo_j, hi_j] of (Σ x c)/(Z_C + Σ x) = max over prefixes (c descending)
    of (base_num + Σ_prefix slack·c)/(base_den + Σ_prefix slack); slack = hi − lo (0 on C)."""
    order = torch.sort(-c, dim=-1, stable=True).indices
    cs, ss = c.gather(-1, order), slack.gather(-1, order)
    num = base_num[:, None] + torch.cumsum(ss * cs, -1)
    den = base_den[:, None] + torch.cumsum(ss, -1)
    r = torch.cat([(base_num / base_den)[:, None], num / den], -1)
    return r.amax(-1)


def analyse(path, check_torch_path=False):
    d = torch.load(path)
    T, NQ = d["T"], d["NQ"]
    rows = []
    ident_err = 0.0
    for li, L in enumerate(d["layers"]):
        if li < 2:
            continue
        q_all, k_all, v_all, scale = L["q"].double(), L["k"].double(), L["v"].double(), L["scaling"]
        Hq, Hkv = q_all.shape[0], k_all.shape[0]
        G = Hq // Hkv
        kv = torch.arange(Hq) // G
        for qi in range(NQ - 1, -1, -QSTRIDE):
            Tq = T - NQ + qi + 1
            Q, K, V = q_all[:, qi], k_all[:, :Tq], v_all[:, :Tq]
            Kc = 16 * math.ceil(Tq / 16 / 16)
            s = scale * torch.einsum("hd,htd->ht", Q, K[kv])                 # (Hq, Tq)
            p = torch.softmax(s, -1)
            Vh = V[kv]                                                          # (Hq, Tq, Dv)
            o_star = torch.einsum("ht,htd->hd", p, Vh)
            vn = torch.linalg.vector_norm(V, dim=-1)                            # (Hkv, Tq)
            w_tok = vn[kv]
            w_page = {P: page_max(vn, P)[kv] for P in PAGES}
            vmax_row = vn.amax(-1)[kv]
            for bits, group in CFGS:
                sk = quantize_keys(K.float(), bits=bits, group=group)          # the cache holds float keys
                shat, e_up, e_dn = sketch_bounds(Q.float(), sk, compute_dtype=torch.float64)
                ub, lb = scale * (shat + e_up), scale * (shat - e_dn)
                assert bool((ub >= s - 1e-9).all()) and bool((lb <= s + 1e-9).all())
                for sel in SELS:
                    key = s if sel == "true" else shat
                    cand = torch.sort(key, dim=-1, descending=True, stable=True).indices[:, :Kc]
                    inC = torch.zeros_like(s, dtype=torch.bool).scatter_(1, cand, True)
                    out = ~inC
                    m = torch.maximum(torch.where(inC, s, -math.inf).amax(-1),
                                      torch.where(out, ub, -math.inf).amax(-1))[:, None]
                    eC = torch.where(inC, torch.exp(s - m), 0.0)
                    ZC = eC.sum(-1)
                    Xhi = torch.where(out, torch.exp(ub - m), 0.0)
                    Xlo = torch.where(out, torch.exp(lb - m), 0.0)
                    Xs = torch.where(out, torch.exp(s - m), 0.0)
                    Zbar, Zlo, Zout = Xhi.sum(-1), Xlo.sum(-1), Xs.sum(-1)
                    oC = torch.einsum("ht,htd->hd", eC / ZC[:, None], Vh)
                    r = torch.linalg.vector_norm(oC, dim=-1)
                    true = torch.linalg.vector_norm(oC - o_star, dim=-1)
                    # identity o* − o_C = Σ_{j∉C} p_j (v_j − o_C)
                    pj = Xs / (ZC + Zout)[:, None]
                    ident = torch.einsum("ht,htd->hd", pj, Vh - oC[:, None, :])
                    ident_err = max(ident_err, float(((o_star - oC) - ident).abs().max()))
                    Lhat = Zbar / (ZC + Zbar)
                    Ltrue = Zout / (ZC + Zout)
                    rec = dict(T=Tq, layer=li, head=torch.arange(Hq), qi=qi, bits=bits, group=group, sel=sel,
                               Kc=Kc, true=true, r=r, vmax=vmax_row, Lhat=Lhat, Ltrue=Ltrue,
                               middle=Lhat * (vmax_row + r),
                               # middle with the max over out-of-C pages only (torch path's e_mid)
                               middle_out16=Lhat * (torch.where(out, w_page[16], 0).amax(-1) + r))
                    # decomposition of the slack (true weights p_j): Σ_out p_j(‖v_j‖+r) and Σ_out p_j‖v_j − o_C‖
                    dist = torch.linalg.vector_norm(Vh - oC[:, None, :], dim=-1)
                    rec["tri_tok"] = (pj * (w_tok + r[:, None])).sum(-1)
                    rec["tri_dist"] = (pj * dist).sum(-1)
                    # NOT sound in general (denominator Z_C + Z̄ > Z_C + Z_out): shown for its violations
                    rec["naive_p16"] = ((Xhi * w_page[16]).sum(-1) + r * Zbar) / (ZC + Zbar)
                    ws = dict(p16=w_page[16], p64=w_page[64], tok=w_tok)
                    for name, w in ws.items():
                        A = (Xhi * w).sum(-1)
                        rec[f"simple_{name}"] = A / ZC + Lhat * r                      # only ub needed
                        rec[f"lo_{name}"] = A / (ZC + Zlo) + Lhat * r                   # + a lower-bound sum
                        c = torch.where(out, w + r[:, None], 0.0)
                        rec[f"estar0_{name}"] = best_prefix(torch.zeros_like(ZC), ZC, Xhi, c)      # boxes [0, e^ub]
                        rec[f"estar_{name}"] = best_prefix((Xlo * c).sum(-1), ZC + Zlo, Xhi - Xlo, c)  # [e^lb, e^ub]
                    # oracle: per-token ‖v_j − o_C‖ (needs every value: no page summary gives this)
                    c = torch.where(out, torch.linalg.vector_norm(Vh - oC[:, None, :], dim=-1), 0.0)
                    rec["estar_oracle"] = best_prefix((Xlo * c).sum(-1), ZC + Zlo, Xhi - Xlo, c)
                    if check_torch_path and qi == NQ - 1 and sel == "sketch":
                        tp = certified_decode(Q.float(), K.float(), V.float(), sk, Kc, scale=scale,
                                              compute_dtype=torch.float64)
                        assert torch.equal(torch.sort(cand, -1).values, tp.candidates), "selection differs"
                        rec["tp_middle"], rec["tp_estar"], rec["tp_error"] = (tp.error_middle, tp.error_estar,
                                                                              tp.error)
                    n = Hq
                    rows.append({k: (v.numpy() if torch.is_tensor(v) else np.full(n, v)) for k, v in rec.items()})
        print(f"{os.path.basename(path)} layer {li} done", flush=True)
    keys = set().union(*rows)
    df = {k: np.concatenate([r[k] if k in r else np.full(len(r["true"]), np.nan) for r in rows]) for k in keys}
    df["Tctx"] = np.full(len(df["true"]), T)
    return df, ident_err


if __name__ == "__main__":
    os.makedirs(HERE + "/results", exist_ok=True)
    chk = "--check" in sys.argv
    for path in [a for a in sys.argv[1:] if not a.startswith("--")]:
        t0 = time.time()
        df, ie = analyse(path, check_torch_path=chk)
        name = os.path.basename(path).replace(".pt", "")
        np.savez(f"{HERE}/results/{name}.npz", **df)
        print(name, "rows", len(df), "identity max abs err", ie, "time", time.time() - t0, flush=True)
