"""GPU-tier entries of the stress's tier registry (imported by ``run.py`` when torch is installed).

``torch-sketch-f64``: ``vashista_gpu.sketch.certified_decode`` with float64 compute on the case's device
(CPU without CUDA) — the float64 mirror of the reference's certified mode (docs/ROUNDING.md §4.1).
The GPU tier's steps per backend and dtype (gpu-torch-fp32/bf16, gpu-triton-fp32/bf16) are in
``tiers_gpu_steps.py``, imported at the end (§4.2–4.5).
"""
from __future__ import annotations

import numpy as np
import torch

from tiers import TierResult, Unsupported, register

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


@register("torch-sketch-f64")
def torch_sketch_f64(case) -> TierResult:
    from vashista_gpu.sketch import certified_decode, quantize_keys
    if case.router != "sketch":
        raise Unsupported("sketch router only")
    B, Hq, _ = case.q.shape
    Dv = case.values[0].shape[2]
    out, err, leak, cands = np.empty((B, Hq, Dv)), np.empty((B, Hq)), np.empty((B, Hq)), []
    for b in range(B):
        K = torch.as_tensor(case.keys[b].transpose(1, 0, 2).copy(), device=DEVICE)
        V = torch.as_tensor(case.values[b].transpose(1, 0, 2).copy(), device=DEVICE)
        sk = quantize_keys(K, bits=case.bits, group=case.page_size, meta_dtype="float32")
        r = certified_decode(torch.as_tensor(case.q[b], device=DEVICE), K, V, sk, case.Kc, scale=case.scale,
                             compute_dtype=torch.float64)
        out[b], err[b], leak[b] = r.out.cpu().numpy(), r.error.cpu().numpy(), r.certified_leakage.cpu().numpy()
        cands.append([c.cpu().numpy() for c in r.candidates])
    return TierResult(out, err, leak, cands)


import tiers_gpu_steps  # noqa: E402,F401  (the GPU tier's steps per backend and dtype: docs/ROUNDING.md §4)
import tiers_cp  # noqa: E402,F401  (the context-parallel step on simulated ranks: docs/ROUNDING.md, "Issue 15 audit")
