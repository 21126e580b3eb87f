"""The paper notebook's sparse decode step, re-implemented in plain PyTorch: the baseline that
``benchmarks/decode_scaling.py`` and ``vashista repro`` time against (issue 5 describes it).

It routes with page *means* and certifies nothing; it lives in the package (not under benchmarks/)
so that the installed ``vashista repro`` can import it.

Example
-------
>>> import torch
>>> B, H, NP, S, D = 1, 2, 4, 4, 8
>>> Kp, Vp = torch.randn(B, H, NP, S, D), torch.randn(B, H, NP, S, D)
>>> notebook_baseline(torch.randn(B, H, D), Kp, Vp, Kp.mean(3), P=2, Kc=4, scale=D ** -0.5).shape
torch.Size([1, 2, 8])
"""
from __future__ import annotations

import torch

__all__ = ["notebook_baseline"]


def notebook_baseline(q, Kp, Vp, means, P, Kc, scale):
    """The paper notebook's sparse step re-implemented in plain PyTorch from its description:
    mean-key page summaries; einsum of q against every page mean; torch.topk over pages; index the
    selected pages' keys, einsum, torch.topk over tokens; softmax weights; gather-sum of the values.
    Kp/Vp (B, Hkv, NP, S, D); means (B, Hkv, NP, D) precomputed (kept current by the cache)."""
    B, Hq, D = q.shape
    Hkv, S = Kp.shape[1], Kp.shape[3]
    kvh = (torch.arange(Hq, device=q.device) // (Hq // Hkv))[None, :, None]
    bi = torch.arange(B, device=q.device)[:, None, None]
    ps = torch.einsum("bhd,bhpd->bhp", q, means[:, kvh[0, :, 0]])          # (B,Hq,NP)
    pages = torch.topk(ps, P, dim=-1).indices                               # (B,Hq,P)
    ks = Kp[bi, kvh, pages]                                                 # (B,Hq,P,S,D)
    s = torch.einsum("bhd,bhpsd->bhps", q, ks).reshape(B, Hq, -1) * scale
    top = torch.topk(s, Kc, dim=-1)
    w = torch.softmax(top.values.float(), dim=-1).to(q.dtype)
    tok = top.indices
    vs = Vp[bi, kvh, torch.gather(pages, -1, tok // S), tok % S]            # (B,Hq,Kc,Dv)
    return torch.einsum("bhk,bhkd->bhd", w, vs)
