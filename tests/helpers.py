"""The one tolerance table and comparison helper used by every differential test.

Agreement is measured as ‖out − ref‖ / ‖ref‖ (SPEC section 4). NaN never passes.
"""
from __future__ import annotations

import numpy as np

# relative-error tolerance by the dtype the *tested* computation ran in
REL_TOL = {
    "float64": 1e-12,
    "float32": 1e-5,
    "tf32": 1e-3,        # float32 inputs with tf32 dot products (GPU)
    "float16": 1e-2,
    "bfloat16": 1e-2,
}


def dtype_name(dtype) -> str:
    name = str(dtype).replace("torch.", "")
    return {"half": "float16", "float": "float32", "double": "float64"}.get(name, name)


def rel_error(out, ref) -> float:
    out = np.asarray(_to_numpy(out), dtype=np.float64)
    ref = np.asarray(_to_numpy(ref), dtype=np.float64)
    assert out.shape == ref.shape, f"shape mismatch: {out.shape} vs {ref.shape}"
    if not np.all(np.isfinite(out)):
        return float("inf")
    denom = np.linalg.norm(ref)
    num = np.linalg.norm(out - ref)
    return float(num / denom) if denom > 0 else float(num)


def assert_rel_close(out, ref, dtype, what: str = "output") -> None:
    tol = REL_TOL[dtype_name(dtype)]
    err = rel_error(out, ref)
    assert err <= tol, f"{what}: relative error {err:.3e} > {tol:.0e} for {dtype_name(dtype)}"


def _to_numpy(x):
    if hasattr(x, "detach"):
        return x.detach().float().cpu().numpy() if str(x.dtype) in ("torch.bfloat16",) else x.detach().cpu().numpy()
    return x
