"""Per-layer, per-head statistics of Vashista decode inside a model (issue 6, "statistics on request").

Every sparse decode step of every layer adds one record per (batch row, query head):
certified leakage L̂ and certified error (SPEC 3), the certificate gap Δ̂ (ε = 1 in the softmax model,
so the Δ/ε ratio is Δ̂ itself), whether the policy fell back to dense, and — with the opt-in *dense
shadow* — the truth it is checked against, computed in float64 from the very key/value tensors
transformers passed in (not from the mirror, so a mirror bug shows up as an error):

* true error ‖o_sparse − o_dense‖ and true leakage (dense mass outside the candidates),
* the dense linear gap Δ_lin = s_max − max_{j ∉ F} s_j (F = argmax face, SPEC 1b),
* effective support: the fewest tokens holding 90 % / 99 % of the dense attention mass.

A *certificate violation* is a step whose true error exceeds the certified error by more than the
shadow's own float64 evaluation, ``ROUNDING[float64] · (max_j ‖v_j‖ + ‖o_dense‖)`` (the certificate
covers the decode's float32/bf16 rounding and the output's cast: docs/ROUNDING.md, GPU tier); only when
the mirror stores keys in a narrower dtype than transformers passed is the storage cast allowed for, at
``ROUNDING[mirror dtype]``. A violation is a bug whenever it occurs on a non-fallback step.

``exceedance(thresholds)`` counts, per layer and threshold t, the queries whose certified error exceeds
t (``not err <= t``: a non-finite certificate exceeds every t, as DenseFallback(t) treats it) and those
whose true error does — on a report-only run, the first count is the fallback DenseFallback(t) would
have had, the second how many queries really were that wrong.

Example::

    >>> import torch
    >>> st = DecodeStats()
    >>> st.add(layer=2, certified_error=torch.ones(1, 3), certified_leakage=torch.zeros(1, 3),
    ...        gap=torch.ones(1, 3), fell_back=torch.zeros(1, 3, dtype=torch.bool))
    >>> st.summary()["steps"], st.summary()["fallback_rate"]
    (3, 0.0)
    >>> st.exceedance([0.5, 2.0])
    [{'layer': 2, 'queries': 3, 'certified': [3, 0], 'true': None}]
"""
from __future__ import annotations

from collections import defaultdict

import numpy as np
import torch

__all__ = ["DecodeStats", "FIELDS", "ROUNDING", "SHADOW_FIELDS", "dense_shadow", "exact_attention"]

# SPEC 4: relative agreement of a computation run in this dtype (float32 accumulations of the decode).
ROUNDING = {torch.float32: 1e-5, torch.float16: 1e-2, torch.bfloat16: 1e-2, torch.float64: 1e-12}

FIELDS = ("certified_error", "certified_leakage", "gap", "fell_back")
SHADOW_FIELDS = ("true_error", "true_leakage", "delta_lin", "support90", "support99", "allowance")


def exact_attention(q: torch.Tensor, key: torch.Tensor, value: torch.Tensor, valid: torch.Tensor, scale: float):
    """Exact dense attention in float64 for q (B, Hq, D) over key/value (B, Hkv, T', ·), T' ≥ T, and
    valid (B, T), grouped by KV head (no copy of K/V per query head: at 32k that copy costs several
    times a decode step). Returns the scores s and probabilities p (B, Hq, T) (−inf / 0 where not
    valid), the output o (B, Hq, Dv) and each head's max value norm over the valid tokens (B, Hq)."""
    B, Hq, D = q.shape
    Hkv, T = key.shape[1], valid.shape[1]
    G = Hq // Hkv
    k, v = key.double()[:, :, :T], value.double()[:, :, :T]
    vm = valid.to(q.device)
    s = torch.einsum("bhgd,bhtd->bhgt", q.double().view(B, Hkv, G, D), k) * scale
    s = s.masked_fill(~vm[:, None, None, :], float("-inf"))
    p = torch.softmax(s, dim=-1)
    o = torch.einsum("bhgt,bhtd->bhgd", p, v).reshape(B, Hq, -1)
    vmax = torch.where(vm[:, None, :], v.norm(dim=-1), 0.0).amax(-1).repeat_interleave(G, dim=1)
    return s.reshape(B, Hq, T), p.reshape(B, Hq, T), o, vmax


def dense_shadow(q: torch.Tensor, key: torch.Tensor, value: torch.Tensor, valid: torch.Tensor,
                 scale: float) -> dict:
    """Exact dense attention in float64 for q (B, Hq, D) over key/value (B, Hkv, T, ·) and valid (B, T)
    (:func:`exact_attention`), with what the statistics record of it.

    Returns probabilities p (B, Hq, T), output o (B, Hq, Dv), Δ_lin, support sizes and max value norm.
    """
    s, p, o, vnorm = exact_attention(q, key, value, valid, scale)
    top2 = torch.topk(s, min(2, s.shape[-1]), dim=-1).values
    smax = top2[..., 0]
    off = torch.where(s < smax[..., None], s, float("-inf")).amax(-1)   # best score off the argmax face
    delta = smax - off
    ps = torch.sort(p, dim=-1, descending=True).values.cumsum(-1)
    sup90 = (ps < 0.9).sum(-1) + 1
    sup99 = (ps < 0.99).sum(-1) + 1
    n = valid.sum(-1)[:, None].to(s.device)
    return dict(p=p, o=o, delta_lin=delta, support90=sup90.clamp(max=n), support99=sup99.clamp(max=n), vmax=vnorm)


class DecodeStats:
    """Accumulates per-step records by layer; ``table()`` gives flat rows, ``summary()`` the totals."""

    def __init__(self):
        self.records: dict[int, list[dict]] = defaultdict(list)
        self.step = 0

    def clear(self) -> None:
        self.records.clear()
        self.step = 0

    def add(self, layer: int, **fields) -> None:
        rec = {k: (v.detach().double().cpu().numpy() if isinstance(v, torch.Tensor) else np.asarray(v))
               for k, v in fields.items()}
        rec["call"] = len(self.records[layer])
        self.records[layer].append(rec)

    def _stack(self, name: str, layer: int | None = None) -> np.ndarray:
        layers = [layer] if layer is not None else sorted(self.records)
        parts = [r[name].reshape(-1) for L in layers for r in self.records[L] if name in r]
        return np.concatenate(parts) if parts else np.zeros(0)

    def violations(self, layer: int | None = None) -> int:
        """Steps (row, head) whose true error exceeds the certified error beyond rounding (needs the shadow)."""
        te, ce, al = (self._stack(n, layer) for n in ("true_error", "certified_error", "allowance"))
        if te.size == 0:
            return 0
        return int(np.sum(te > ce + al))

    def table(self) -> list[dict]:
        """One row per (layer, call, batch row, head) with every recorded field."""
        rows = []
        for L in sorted(self.records):
            for r in self.records[L]:
                shape = r["certified_error"].shape
                for b in range(shape[0]):
                    for h in range(shape[1]):
                        row = dict(layer=L, call=r["call"], row=b, head=h)
                        for k, v in r.items():
                            if k != "call" and np.ndim(v) == 2:
                                row[k] = float(v[b, h])
                        rows.append(row)
        return rows

    def per_layer(self) -> list[dict]:
        out = []
        for L in sorted(self.records):
            fb = self._stack("fell_back", L)
            d = dict(layer=L, steps=int(fb.size), fallback_rate=float(fb.mean()) if fb.size else 0.0,
                     certified_error_mean=float(np.mean(self._stack("certified_error", L))),
                     gap_median=float(np.median(self._stack("gap", L))))
            te = self._stack("true_error", L)
            if te.size:
                d.update(true_error_mean=float(te.mean()), violations=self.violations(L),
                         support90_median=float(np.median(self._stack("support90", L))),
                         support99_median=float(np.median(self._stack("support99", L))))
            out.append(d)
        return out

    def exceedance(self, thresholds) -> list[dict]:
        """Per layer: queries, and per threshold the number of certified errors and of true errors
        (None without the shadow) above it (module doc)."""
        t = np.asarray(thresholds, dtype=np.float64)[:, None]
        out = []
        for L in sorted(self.records):
            ce, te = self._stack("certified_error", L), self._stack("true_error", L)
            out.append(dict(layer=L, queries=int(ce.size), certified=np.sum(~(ce[None] <= t), axis=1).tolist(),
                            true=np.sum(~(te[None] <= t), axis=1).tolist() if te.size else None))
        return out

    def summary(self) -> dict:
        fb = self._stack("fell_back")
        te = self._stack("true_error")
        s = dict(steps=int(fb.size), fallback_rate=float(fb.mean()) if fb.size else 0.0,
                 certificate_violations=self.violations(), shadow=bool(te.size))
        if te.size:
            s["max_true_error"] = float(te.max())
            s["max_certified_error"] = float(np.nanmax(self._stack("certified_error")))
        return s
