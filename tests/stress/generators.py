"""Adversarial decode cases for the soundness stress (issue 15), independent of vashista_ref.synthetic.

A :class:`Case` is plain data: per-sequence keys (T_b, Hkv, D) and values (T_b, Hkv, Dv), queries
(B, Hq, D), the float64 ``scale``, and the decode options every tier reads (``router``, P, Kc, ``bits``,
``share``, ``fanout``). ``draw(kind, seed)`` builds one from a seed, so a violation is reproduced by
(kind, seed) alone. Every kind also draws the layout: batch 1–2, GQA (Hq = G·Hkv, G ∈ {1, 2, 4}),
partial last pages, different lengths per sequence, head dims 2–16.

Kinds (what each attacks):
  huge_scores       ‖q‖ scaled by 10^3..10^20: score rounding δ ≫ the certificate's old fixed allowance
  tiny_scores       ‖q‖ scaled by 10^-300..10^-3: every weight ≈ 1, leakage ≈ 1 − Kc/M
  one_hot_huge      one key along q, scores ~10^20: one-hot attention (was NaN, issue 15)
  keys_1000         keys = 1000 + small noise: scores ~10^3–10^6 nearly equal (issue 15's 0.1 %)
  near_ties         scores tie at the Kc boundary up to 1e-15..1e-9 (selection on rounding noise)
  dominant_channel  one channel of keys and query 10^2..10^6 larger than the rest
  hidden_outlier    one key along q in a page whose other keys point along −q (its mean is low)
  all_equal         every key identical: leakage exactly 1 − Kc/M
  huge_values       values scaled by 10^50..10^150 (and a few by 10^300: norms overflow → ∞ allowed)
  gqa               Hq = 4·Hkv with shared selection drawn more often
  partial_pages     lengths never a multiple of the page size, tiny pages
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

KINDS = ("huge_scores", "tiny_scores", "one_hot_huge", "keys_1000", "near_ties", "dominant_channel",
         "hidden_outlier", "all_equal", "huge_values", "gqa", "partial_pages")
ROUTERS = ("bound", "mean", "sketch")


@dataclass
class Case:
    kind: str
    seed: int
    keys: list            # per sequence (T_b, Hkv, D)
    values: list          # per sequence (T_b, Hkv, Dv)
    q: np.ndarray         # (B, Hq, D)
    scale: float
    page_size: int
    router: str
    P: int
    Kc: int
    bits: int | None = None
    share: bool = False
    fanout: int | None = None
    notes: dict = field(default_factory=dict)

    @property
    def query_heads(self) -> int:
        return int(self.q.shape[0] * self.q.shape[1])

    def describe(self) -> str:
        B, Hq, D = self.q.shape
        return (f"{self.kind} seed={self.seed} B={B} Hq={Hq} Hkv={self.keys[0].shape[1]} D={D} "
                f"T={[k.shape[0] for k in self.keys]} S={self.page_size} router={self.router} P={self.P} "
                f"Kc={self.Kc} bits={self.bits} share={self.share} fanout={self.fanout}")


def _layout(rng, kind):
    B = int(rng.integers(1, 3))
    Hkv = int(rng.integers(1, 3))
    G = 4 if kind == "gqa" else int(rng.choice([1, 2, 4]))
    D = int(rng.choice([2, 4, 8, 16]))
    Dv = int(rng.choice([1, 2, 4, 8]))
    S = int(rng.choice([2, 3, 4] if kind == "partial_pages" else [4, 8, 16]))
    T0 = int(rng.integers(2, 97))
    if kind == "partial_pages" and T0 % S == 0:
        T0 += 1
    lengths = [max(1, T0 - 3 * b) for b in range(B)]
    if kind == "partial_pages":
        lengths = [t + 1 if t % S == 0 else t for t in lengths]
    return B, Hkv, G, D, Dv, S, lengths


def _unit(v):
    n = np.linalg.norm(v)
    return v / n if n > 0 else v


def _keys_for(kind, rng, T, D, qdir):
    """Keys (T, D) of one sequence and KV head for ``kind``; qdir a unit query direction of the head."""
    K = rng.standard_normal((T, D))
    if kind == "one_hot_huge":
        K = 0.1 * rng.standard_normal((T, D))
        K[int(rng.integers(T))] = qdir
    elif kind == "keys_1000":
        K = 1000.0 + rng.standard_normal((T, D)) * 10.0 ** rng.uniform(-3, 0)
    elif kind == "near_ties":
        levels = rng.standard_normal(int(rng.integers(1, 4)))
        c = rng.choice(levels, size=T) + rng.choice([0.0, 1.0], size=T) * rng.standard_normal(T) \
            * 10.0 ** rng.uniform(-15, -9)
        ortho = rng.standard_normal((T, D))
        ortho -= np.outer(ortho @ qdir, qdir)
        K = c[:, None] * qdir[None, :] + ortho
    elif kind == "dominant_channel":
        d = int(rng.integers(D))
        K[:, d] *= 10.0 ** rng.uniform(2, 6)
    elif kind == "hidden_outlier" and T >= 4:
        p0 = int(rng.integers(T // 2))
        K[p0] = 4.0 * qdir
        K[p0 + 1: p0 + 4] = -6.0 * qdir
    elif kind == "all_equal":
        K = np.tile(rng.standard_normal(D), (T, 1))
    return K


def draw(kind: str, seed: int) -> Case:
    """One seeded case of ``kind`` (module doc)."""
    if kind not in KINDS:
        raise ValueError(f"unknown kind {kind!r}")
    rng = np.random.default_rng([seed, KINDS.index(kind)])
    B, Hkv, G, D, Dv, S, lengths = _layout(rng, kind)
    Hq = G * Hkv
    q = rng.standard_normal((B, Hq, D))
    # a query direction per (batch, KV head): kinds that plant keys along q use the group's first head
    qdirs = np.stack([[_unit(q[b, h * G]) for h in range(Hkv)] for b in range(B)])
    keys, values = [], []
    for b, T in enumerate(lengths):
        K = np.stack([_keys_for(kind, rng, T, D, qdirs[b, h]) for h in range(Hkv)], axis=1)
        V = rng.standard_normal((T, Hkv, Dv))
        if kind == "huge_values":
            V *= 10.0 ** (300 if rng.random() < 0.1 else rng.uniform(50, 150))
        keys.append(K)
        values.append(V)
    mag = {"huge_scores": rng.uniform(3, 20), "tiny_scores": -rng.uniform(3, 300),
           "one_hot_huge": 20.0, "keys_1000": rng.uniform(-1, 3)}.get(kind, rng.uniform(-0.5, 1.0))
    q = q * 10.0 ** mag
    if kind == "one_hot_huge":
        for b in range(B):
            for h in range(Hkv):
                q[b, h * G:(h + 1) * G] = qdirs[b, h] * 1e20
    scale = float(1.0 / np.sqrt(D)) if rng.random() < 0.7 else float(rng.uniform(0.05, 2.0))
    router = str(rng.choice(ROUTERS))
    T_min = min(lengths)
    Kc = int(rng.integers(1, T_min + 1))
    if kind == "near_ties":
        Kc = max(1, min(T_min, Kc))
    share = router != "sketch" and (bool(rng.random() < 0.6) if kind == "gqa" else bool(rng.random() < 0.2))
    fanout = int(rng.choice([2, 3])) if router != "sketch" and rng.random() < 0.2 else None
    return Case(kind=kind, seed=seed, keys=keys, values=values, q=q, scale=scale, page_size=S, router=router,
                P=int(rng.integers(1, 5)), Kc=Kc, bits=int(rng.choice([4, 8])) if router == "sketch" else None,
                share=share, fanout=fanout)
