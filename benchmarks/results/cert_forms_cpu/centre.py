"""Would a per-sequence value centre tighten the fused certificate? (thirteenth session; REPORT.md)

The fused form is M = L̂·(max‖v‖ + ‖o_C‖), from ‖v_j − o_C‖ ≤ ‖v_j‖ + ‖o_C‖. With a centre c fixed per
sequence and KV head (here the mean of the prompt's values) and R = max_j ‖v_j − c‖, kept like max‖v‖
(a running maximum on append, no bytes per token), ‖v_j − o_C‖ ≤ R + ‖c − o_C‖ gives
C = L̂·(R + ‖c − o_C‖). Any form of the type L̂·(a bound on max_{j∉C} ‖v_j − o_C‖) is at best
"limit" = L̂·max_{j∉C} ‖v_j − o_C‖ (needs every value; shown for scale). Float64, no rounding
allowances (ratios only). Usage: python centre.py data/X.pt [more.pt ...]  (data from capture.py).
"""
import math
import os
import sys

import numpy as np
import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", ".."))
from vashista_gpu.sketch import quantize_keys, sketch_bounds  # noqa: E402

torch.set_num_threads(2)
res = {}
for path in sys.argv[1:]:
    d = torch.load(path)
    T, NQ = d["T"], d["NQ"]
    for li, L in enumerate(d["layers"]):
        if li < 2:                                   # the quality suite keeps layers 0 and 1 dense
            continue
        q_all, k_all, v_all, scale = L["q"].double(), L["k"].double(), L["v"].double(), L["scaling"]
        Hq, Hkv = q_all.shape[0], k_all.shape[0]
        kv = torch.arange(Hq) // (Hq // Hkv)
        cen = v_all[:, : T - NQ].mean(1)             # fixed from the prompt
        for qi in range(NQ - 1, -1, -2):
            Tq = T - NQ + qi + 1
            Q, K, V = q_all[:, qi], k_all[:, :Tq], v_all[:, :Tq]
            Kc = 16 * math.ceil(Tq / 256)            # budget 1/16
            s = scale * torch.einsum("hd,htd->ht", Q, K[kv])
            Vh = V[kv]
            o_star = torch.einsum("ht,htd->hd", torch.softmax(s, -1), Vh)
            vn = torch.linalg.vector_norm(V, dim=-1)
            R = torch.linalg.vector_norm(V - cen[:, None], dim=-1)
            for bits, group in [(4, 16), (8, 64)]:
                sk = quantize_keys(K.float(), bits=bits, group=group)
                shat, e_up, _ = sketch_bounds(Q.float(), sk, compute_dtype=torch.float64)
                ub = scale * (shat + e_up)
                cand = torch.sort(shat, dim=-1, descending=True, stable=True).indices[:, :Kc]
                inC = torch.zeros_like(s, dtype=torch.bool).scatter_(1, cand, True)
                out = ~inC
                m = torch.maximum(torch.where(inC, s, -math.inf).amax(-1), torch.where(out, ub, -math.inf).amax(-1))[:, None]
                eC = torch.where(inC, torch.exp(s - m), 0.0)
                ZC = eC.sum(-1)
                Zbar = torch.where(out, torch.exp(ub - m), 0.0).sum(-1)
                oC = torch.einsum("ht,htd->hd", eC / ZC[:, None], Vh)
                Lh = Zbar / (ZC + Zbar)
                row = dict(true=torch.linalg.vector_norm(oC - o_star, dim=-1),
                           middle=Lh * (vn.amax(-1)[kv] + torch.linalg.vector_norm(oC, dim=-1)),
                           centre=Lh * (R.amax(-1)[kv] + torch.linalg.vector_norm(oC - cen[kv], dim=-1)),
                           limit=Lh * torch.where(out, torch.linalg.vector_norm(Vh - oC[:, None], dim=-1), 0).amax(-1))
                for k, x in row.items():
                    res.setdefault(bits, {}).setdefault(k, []).append(x.numpy())

print("| sketch | median M/true | median C/true | median limit/true | gain M/C median | geo-mean | "
      "fallback at t = 0.3: M / C / limit | t = 1: M / C / limit |")
print("|---|---|---|---|---|---|---|---|")
np.seterr(divide="ignore", invalid="ignore")     # rows with true = 0 are masked out below
for bits, cols in res.items():
    a = {k: np.concatenate(v) for k, v in cols.items()}
    assert (a["centre"] >= a["true"] - 1e-12).all() and (a["limit"] >= a["true"] - 1e-12).all()
    ok = a["true"] > 1e-12
    med = lambda x: float(np.median(x[ok]))  # noqa: E731
    fb = lambda t: " / ".join(f"{np.mean(a[k] > t):.3f}" for k in ("middle", "centre", "limit"))  # noqa: E731
    print(f"| int{bits} g{16 if bits == 4 else 64} | {med(a['middle'] / a['true']):.2f} | {med(a['centre'] / a['true']):.2f} | "
          f"{med(a['limit'] / a['true']):.2f} | {med(a['middle'] / a['centre']):.3f} | "
          f"{float(np.exp(np.mean(np.log(a['middle'][ok] / a['centre'][ok])))):.3f} | {fb(0.3)} | {fb(1.0)} |")
print(f"rows per sketch: {len(a['true'])} (layer, head, query)")
