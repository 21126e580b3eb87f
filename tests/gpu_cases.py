"""Shared builders for the GPU-tier differential tests: identical caches in both tiers on a coarse grid.

Keys, values and queries are small multiples of 1/8 (|x| ≤ 1/2), head dims ≤ 64, scale a power of two,
page sizes and fanouts powers of two: every score, page bound and full-page mean is then exact in
float16, bfloat16, float32 and float64 alike, so ties are real and resolved by the tie rule alone —
the kernels and the reference must select identical sets.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

from helpers import REL_TOL, assert_rel_close
from vashista_gpu import triton_path

from vashista_gpu.paged_cache import TorchPagedKVCache
from vashista_ref.paged_cache import PagedKVCache


def grid(gen: torch.Generator, *shape) -> torch.Tensor:
    return torch.randint(-4, 5, shape, generator=gen).double() / 8


def build(lengths, Hkv, G, D, S, *, Dv=None, fanout=None, dtype=torch.float32, backend="torch", seed=0,
          chunk=None, device="cpu", spare_pages=0):
    """(ref_cache, ref_ids, gpu_cache, gpu_ids, q as float64 numpy, q as torch in ``dtype``)."""
    gen = torch.Generator().manual_seed(seed)
    Dv = Dv or D
    keys = [grid(gen, T, Hkv, D) for T in lengths]
    values = [grid(gen, T, Hkv, Dv) for T in lengths]
    q = grid(gen, len(lengths), Hkv * G, D)
    ref, rids = PagedKVCache.from_dense([k.numpy() for k in keys], [v.numpy() for v in values], S,
                                        fanout=fanout, shuffle_seed=seed, chunk=chunk)
    gpu, gids = TorchPagedKVCache.from_dense([k.to(dtype) for k in keys], [v.to(dtype) for v in values], S,
                                             fanout=fanout, shuffle_seed=seed + 1, chunk=chunk, dtype=dtype,
                                             device=device, backend=backend, spare_pages=spare_pages)
    return ref, rids, gpu, gids, q.numpy(), q.to(dtype=dtype, device=device)


def append_interleaved(cache, ids, data, chunk=37) -> None:
    """Append each sequence's (K, V) (T, Hkv, D) rows in turns of ``chunk`` tokens, so that sequences
    own non-contiguous physical pages and most appends fill partial pages."""
    pos = [0] * len(ids)
    while any(p < K.shape[0] for p, (K, _) in zip(pos, data)):
        for i, (K, V) in enumerate(data):
            n = min(chunk, K.shape[0] - pos[i])
            if n > 0:
                cache.append(ids[i], K[pos[i]:pos[i] + n].to(cache.device), V[pos[i]:pos[i] + n].to(cache.device))
                pos[i] += n


def as_sets(rows) -> list:
    """Per (b, h) sets from a (B, Hq, n) tensor padded with −1."""
    a = rows.cpu().numpy()
    return [[set(int(x) for x in a[b, h] if x >= 0) for h in range(a.shape[1])] for b in range(a.shape[0])]


def ref_sets(rows) -> list:
    return [[set(int(x) for x in r) for r in row] for row in rows]


def finite_rel_close(out, ref, tol, what):
    """Equal infinities; finite entries within ``tol`` relative (norm-wise) of the reference."""
    out = np.asarray(out.detach().cpu().double().numpy() if hasattr(out, "detach") else out, dtype=float)
    ref = np.asarray(ref, dtype=float)
    assert np.array_equal(np.isposinf(out), np.isposinf(ref)) and np.array_equal(np.isneginf(out), np.isneginf(ref)), \
        f"{what}: infinities differ\n{out}\n{ref}"
    f = np.isfinite(ref)
    assert np.all(np.isfinite(out[f])), f"{what}: NaN where the reference is finite"
    num = np.linalg.norm(out[f] - ref[f])
    den = np.linalg.norm(ref[f]) or 1.0
    assert num <= tol * den, f"{what}: relative error {num / den:.3e} > {tol:.0e}"


@pytest.fixture(autouse=True)
def poison_outputs():
    """Kernels write into NaN-filled outputs while a test runs (a missed write cannot pass).
    Autouse in every test module that imports it."""
    old = triton_path.POISON
    triton_path.POISON = True
    yield
    triton_path.POISON = old


F32 = REL_TOL["float32"]          # the certificate is computed in float32 from exact scores


def check_against_reference(g, r, dtype):
    assert_rel_close(g.out, r.out, dtype, "out")
    assert as_sets(g.pages) == ref_sets(r.pages), "routed pages differ from the reference"
    assert as_sets(g.candidates) == ref_sets(r.candidates), "candidates differ from the reference"
    # the GPU certificate is the reference's (middle form) raised by the float32 allowances
    # (vashista_gpu/allowance.py): never below it, above it by at most the allowance of these small
    # scores (|s| ≤ 4, D ≤ 64: δ < 1e-4, so relative 1e-3 and absolute 1e-3·max‖v‖ are ample)
    vmax = max(1.0, float(np.abs(g.out.cpu().double().numpy()).max()) * 4)
    between_reference(g.certified_leakage, r.certified_leakage, 1e-3, 1e-30, "certified_leakage")
    between_reference(g.certified_error, r.error_middle - r.rounding, 1e-3, 1e-3 * vmax, "certified_error (middle form)")
    gg = g.gap.cpu().double().numpy()
    assert np.all(gg <= r.gap + 1e-12) and np.all(gg >= r.gap - 1e-4), (gg, r.gap)
    assert np.all(g.certified_error.cpu().double().numpy() >= (r.certified_error - r.rounding) * (1 - F32))


def between_reference(g, r, rel, absolute, what):
    g = g.cpu().double().numpy()
    r = np.asarray(r, dtype=float)
    assert np.all(g >= r * (1 - F32)), f"{what}: below the reference's\n{g}\n{r}"
    assert np.all(g <= r * (1 + rel) + absolute), f"{what}: above the reference's by more than the allowance\n{g}\n{r}"
