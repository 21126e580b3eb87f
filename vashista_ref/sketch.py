"""Certified mode (SPEC 3b): a quantized key sketch with rigorous per-token score bounds.

Problem solved by one certified decode step (softmax model, one query q, one KV head):

    o_C = Σ_{j∈C} a_j v_j,   a = argmax_{a ∈ Δ_C} ⟨s_C, a⟩ + H(a) = softmax(s_C),   s_j = scale·⟨q, k_j⟩,

on a candidate set C of Kc tokens chosen from a b-bit sketch of *every* key, together with a rigorous
upper bound L̂ on the dense-attention mass outside C and bounds on ‖o_C − o_dense‖.

The sketch. Tokens are cut into quantization groups of ``group`` consecutive tokens (a page of the
paged cache). For group g and channel d we store

    offset o_{g,d} = min_j k_{j,d} rounded DOWN to the metadata dtype,
    step   δ_{g,d} = the smallest metadata number with o + (2^b − 1) δ ≥ max_j k_{j,d} in exact
                     arithmetic (checked exactly; 0 for a channel that is constant and representable),
    code   c_{j,d} = round((k_{j,d} − o_{g,d}) / δ_{g,d}) clipped to [0, 2^b − 1]   (uint8; for b < 8
                     packed 8/b codes per byte, low bits first),

so every key of the group lies in the stored box [o, o + (2^b − 1) δ] *in exact arithmetic* (the
outward rounding of o and δ guarantees it) and k̃ = o + δ ⊙ c satisfies |k_d − k̃_d| ≤ δ_d (½ + η_b),
η_b = 4 (2^b + 1) u (u = 2⁻⁵³; the float64 evaluation of (k − o)/δ can move t by ≤ 2.01 (2^b − 1) u
before rounding to the nearest code). Hence, with R_{g,d} = |o_{g,d}| + (2^b − 1) δ_{g,d} ≥ |k_d|, |k̃_d|,

    |⟨q, k_j⟩ − ŝ_j| ≤ e_g(q) = Σ_d |q_d| [ δ_{g,d} (½ + η_b) + 4 γ_{D+2} R_{g,d} ],   γ_n = n u / (1 − n u),

where ŝ_j is the float64 value of ⟨q, k̃_j⟩ in any summation order; the γ term covers the rounding of
the dequantization and of the dot product of ŝ_j, *and* of any float64 evaluation of the true score
(so the bound holds for the real-arithmetic scores and for the float64 dense reference alike). e_g is
evaluated in float64 and then enlarged by (1 + 2γ_{D+3}) and one ulp. Every later floating step is
rounded outward the same way: a quantity that must be an upper bound is moved one ulp up after each
operation (``np.nextafter``), exp/log are enlarged by 16 u (NumPy's float64 exp/log are accurate to a
few ulp), sums of n positive terms by γ_n. Only the metadata dtype changes the *tightness* (fp16 rounds
δ up by ≤ 2⁻¹⁰ relative), never the soundness.

Metadata choice (bytes per token, D = 64, keys in bf16 = 128 B): int4 codes 32 B; per-group fp16
offset + step cost 4D / group bytes per token = 16 B at group 16 (the page), 4 B at group 64.
The reference default is group 16 (one page) with fp16 metadata; benchmarks/sketch_real_model.py
measures the tightness lost at group 32 and 64 (see benchmarks/RESULTS.md, "Certified mode").

One decode step (``certified_step``):
  1. optional box pruning: groups whose box bound (the sketch box above, free) is negligible are not
     scanned. A floor Z_0 ≤ Z is read exactly from two probe groups (the one with the best mean key
     score and the newest); then, in ascending order of log(n_g) + scale·UB_g(q), groups are dropped
     while their summed mass bound stays ≤ ``prune_tol`` · Z_0, so pruning adds at most ``prune_tol``
     to L̂ (free when attention is concentrated: one strong token makes Z_0 large);
  2. sketch scan of the remaining tokens: ŝ_j and one-sided per-token errors e⁺_j, e⁻_j ≤ e_g
     (``sketch_bounds``: at code 0 or 2^b − 1, k̃_d sits on an edge of the box that holds k_d, so
     that channel errs to one side only — ~10 % tighter int4 certificates on SmolLM2);
  3. candidates: top-Kc by ŝ_j (ties to the lower index), rescored exactly against the full keys;
  4. softmax over the candidates and value gather;
  5. certificate: every scanned non-candidate j has s_j ∈ [lb_j, ub_j] = scale·[ŝ_j − e⁻_j, ŝ_j + e⁺_j]; pruned
     groups contribute n_g e^{scale·UB_g}. With Z_C computed from lower bounds of the candidates' scores,

        L ≤ L̂ = Z_out / (Z_C + Z_out),   Z_out = Σ_{j∉C} e^{ub_j} + Σ_pruned n_g e^{scale·UB_g}.

Output-error bounds (e = o_dense − o_C = Σ_{j∉C} x_j (v_j − o_C) / Z, x_j = e^{s_j}), all sound:
  * ``error_middle`` — SPEC 3:  L̂ · (max_{j∉C} ‖v_j‖ + ‖o_C‖)  (per-group max value norms);
  * ``error_estar`` — SPEC 3's linear-fractional maximum (runtime_certificate.E*) over the *intervals*
    x_j ∈ [e^{lb_j}, e^{ub_j}] that the sketch gives (page bounds only give [0, u]);
  * ``error_ball`` — per group a value centre c_g (mean) and radius ρ_g = max_{j∈g} ‖v_j − c_g‖.
    Split e·Z = Σ_g W_g (c_g − o_C) + Σ_{j∉C} x_j (v_j − c_g), W_g = Σ_{j∈g∖C} x_j ∈ [W_g^lo, W_g^hi]
    (sums of e^{lb_j}, e^{ub_j}), write W_g = W_g^lo + t_g, and maximise over t_g ∈ [0, W_g^hi − W_g^lo]:
        ‖e‖ ≤ max_t ( ‖Σ_g W_g^lo (c_g − o_C)‖ + Σ_g W_g^lo ρ_g + Σ_g t_g (‖c_g − o_C‖ + ρ_g) )
                    / (Z_C^lo + Σ_g W_g^lo + Σ_g t_g)
    (a linear-fractional maximum, solved like E*). It keeps the cancellation *between* groups that the
    triangle inequality of the other forms throws away. Cost: Dv + 1 numbers per group, like the key
    metadata, and O(groups · Dv) work — no value of a non-candidate is read;
  * ``error_token`` — the same with per-token radii r_j = ‖v_j − c_g‖ in place of ρ_g (and per-token
    intervals t_j): one more number per token (2 B in fp16, +4 % on an int4 scan at D = 64);
  * ``error`` = min of the four, each plus the float64 ``rounding`` allowance (docs/ROUNDING.md §4:
    the candidates' score rounding, the evaluation of the softmax, outward-rounded log-domain bounds),
    so that it bounds the distance from the returned output to *exact* dense attention.
    On SmolLM2 (benchmarks/RESULTS.md) the tightest is ~3× the true error for int8, vs ~6× for SPEC 3's
    middle form: the rest is cancellation *inside* the excluded mass, which no bound that reads no
    non-candidate value can see.

In the paged decode: ``sparse_decode(..., router="sketch", bits=4|8)`` runs this step per query head
(``sketch_attempt``) with the usual policies; the cache's quantized pages live in a
:class:`PageSketchStore` (``attach_sketch``), requantized by ``PagedKVCache.append`` for every page it
writes, so they always equal ``quantize_keys`` of the sequence with group = page size.
``vashista certify --decode --router sketch --bits 8 --json`` prints it next to the paged mode.

Example:
    >>> import numpy as np
    >>> from vashista_ref.sketch import quantize_keys, certified_step
    >>> rng = np.random.default_rng(0)
    >>> K, V, q = rng.normal(size=(256, 16)), rng.normal(size=(256, 8)), 3 * rng.normal(size=16)
    >>> sk = quantize_keys(K, bits=4, group=16)
    >>> r = certified_step(q, K, V, sk, Kc=32, with_dense=True)
    >>> bool(r.certified_leakage >= r.true_leakage), bool(r.error >= r.true_error)
    (True, True)
    >>> sk.codes.shape, sk.offset.dtype.name       # 4-bit codes packed two per byte, fp16 metadata
    ((256, 8), 'float16')
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np

from vashista_core.errors import VashistaInputError
from vashista_core.options import (META_DTYPE_NAMES, SUPPORTED_BITS, check_bits, check_meta_dtype,
                                   check_sketch_options)  # noqa: F401  (check_sketch_options re-exported)
from vashista_core.rounding import FN_REL as _FN_REL, U64 as U, down as _down, gamma as _gamma, up as _up
from vashista_core.rounding import (add_up, leakage_upper, log_domain_factor, lse_lower, lse_upper, mul_up,
                                    softmax_eval_error, softmax_tv, up)

from .dense import resolve_scale, token_scores
from .routing import top_indices
from .runtime_certificate import best_prefix_ratio_log
from .validate import as_real_array, nonnegative_scalar, positive_int, query_and_keys

__all__ = ["attach_sketch", "certified_decode", "certified_step", "CertifiedStep", "dense_leakage",
           "group_value_stats", "GroupValueStats", "KeySketch", "META_DTYPES", "pack_codes",
           "PageSketchStore", "quantize_keys", "sketch_attempt", "sketch_bounds", "sketch_scores",
           "key_digest", "unpack_codes"]

META_DTYPES = {"float16": np.float16, "float32": np.float32}
assert tuple(META_DTYPES) == META_DTYPE_NAMES


# ---------------------------------------------------------------------------------------------- sketch
@dataclass(frozen=True)
class KeySketch:
    """Per-group, per-channel asymmetric quantization of keys (M, D); see the module doc.

    ``codes`` (M, ceil(D·bits/8)) uint8, packed low bits first; ``offset``/``step`` (G, D) in the
    metadata dtype; token j belongs to group j // ``group``. ``key_digest``: a hash of the keys it was
    built from (``quantize_keys``), so that a step given other keys of the same shape refuses the sketch
    instead of certifying with bounds that do not hold; None for a cache's page store, which the cache
    keeps current itself.
    """
    bits: int
    group: int
    codes: np.ndarray
    offset: np.ndarray
    step: np.ndarray
    head_dim: int
    key_digest: str | None = None

    @property
    def n_tokens(self) -> int:
        return self.codes.shape[0]

    @property
    def n_groups(self) -> int:
        return self.offset.shape[0]

    @property
    def levels(self) -> int:
        """2^b − 1, the largest code."""
        return (1 << self.bits) - 1

    def group_of_tokens(self) -> np.ndarray:
        return np.arange(self.n_tokens) // self.group

    def unpacked_codes(self) -> np.ndarray:
        """Codes (M, D) as uint8."""
        return unpack_codes(self.codes, self.bits, self.head_dim)

    def dequantize(self) -> np.ndarray:
        """k̃ = offset + step ⊙ code in float64, (M, D)."""
        g = self.group_of_tokens()
        off, st = self.offset.astype(np.float64), self.step.astype(np.float64)
        return off[g] + st[g] * self.unpacked_codes()

    def box(self) -> tuple[np.ndarray, np.ndarray]:
        """Per-group box (lo, hi) (G, D) float64 that contains every key of the group, exactly."""
        lo = self.offset.astype(np.float64)
        return lo, _up(lo + _up(self.levels * self.step.astype(np.float64)))

    def nbytes(self) -> dict[str, int]:
        """Bytes stored: codes and metadata (offset + step)."""
        return {"codes": int(self.codes.nbytes), "metadata": int(self.offset.nbytes + self.step.nbytes)}


def pack_codes(codes: np.ndarray, bits: int) -> np.ndarray:
    """Pack uint8 codes (M, D) < 2^bits into (M, ceil(D·bits/8)) bytes, code d in bits
    (d mod per)·bits.. of byte d // per (per = 8 / bits), zero padded."""
    per = 8 // bits
    M, D = codes.shape
    width = -(-D // per)
    padded = np.zeros((M, width * per), dtype=np.uint8)
    padded[:, :D] = codes
    padded = padded.reshape(M, width, per)
    out = np.zeros((M, width), dtype=np.uint8)
    for i in range(per):
        out |= (padded[:, :, i] << (i * bits)).astype(np.uint8)
    return out


def unpack_codes(packed: np.ndarray, bits: int, D: int) -> np.ndarray:
    """Inverse of ``pack_codes``: (M, ceil(D·bits/8)) bytes -> (M, D) uint8 codes."""
    per = 8 // bits
    mask = (1 << bits) - 1
    parts = [(packed >> (i * bits)) & mask for i in range(per)]
    return np.stack(parts, axis=-1).reshape(packed.shape[0], -1)[:, :D].astype(np.uint8)


def _to_meta(x: np.ndarray, dtype, direction: str, name: str) -> np.ndarray:
    """Round float64 ``x`` to the metadata dtype, DOWN or UP (the result bounds x on that side)."""
    with np.errstate(over="ignore"):
        y = x.astype(dtype)
    if not np.all(np.isfinite(y)):
        raise VashistaInputError("K", f"{name} exceeds the range of the {np.dtype(dtype).name} metadata; "
                                      f"use meta_dtype='float32'")
    y64 = y.astype(np.float64)
    if direction == "down":
        fix = y64 > x
        y[fix] = np.nextafter(y[fix], dtype(-np.inf))
    else:
        fix = y64 < x
        y[fix] = np.nextafter(y[fix], dtype(np.inf))
    if not np.all(np.isfinite(y)):
        raise VashistaInputError("K", f"{name} exceeds the range of the {np.dtype(dtype).name} metadata; "
                                      f"use meta_dtype='float32'")
    return y


def _covering_step(kmax: np.ndarray, o64: np.ndarray, levels: int, dt) -> np.ndarray:
    """The smallest step in the metadata dtype (up to one ulp) with o + levels·step >= kmax exactly.

    Start from the nearest representable (kmax − o)/levels and raise it an ulp where the exact test
    fails. The test is exact: kmax − o = s + e by TwoSum, levels·step is exact in float64 (a ≤ 24-bit
    significand times an 8-bit integer), and levels·step − s is exact by Sterbenz whenever it is
    close enough to matter (otherwise its sign alone decides)."""
    with np.errstate(over="ignore", invalid="ignore"):
        s = kmax - o64
        bp = s - kmax
        e = (kmax - (s - bp)) + (-o64 - bp)          # kmax − o = s + e exactly
    if not np.all(np.isfinite(s)):
        raise VashistaInputError("K", "key range overflows float64")
    step = _to_meta(np.where(s > 0, s / levels, 0.0), dt, "up", "key range")
    for _ in range(8):
        p = levels * step.astype(np.float64)
        bad = ~(p - s >= e)
        if not bad.any():
            return step
        step[bad] = np.nextafter(step[bad], dt(np.inf))
        if not np.all(np.isfinite(step)):
            raise VashistaInputError("K", f"key range exceeds the range of the {np.dtype(dt).name} metadata; "
                                          f"use meta_dtype='float32'")
    raise AssertionError("covering step not found")  # unreachable: each ulp raises levels·step by >= 1 ulp of s


def quantize_keys(K, bits: int = 4, group: int = 16, meta_dtype: str = "float16") -> KeySketch:
    """Quantize keys (M, D) into a :class:`KeySketch` (b-bit codes, per-group per-channel offset/step).

    ``bits`` in {2, 4, 8}; ``group`` tokens share the metadata (a page); ``meta_dtype`` "float16"
    (default: 4D/group bytes per token) or "float32" (needed when |keys| exceed 65504).
    """
    K = as_real_array("K", K, ndim=2)
    bits = check_bits(bits)
    group = positive_int("group", group)
    dt = META_DTYPES[check_meta_dtype(meta_dtype)]
    M, D = K.shape
    levels = (1 << bits) - 1
    starts = np.arange(0, M, group)
    kmin = np.minimum.reduceat(K, starts, axis=0)
    kmax = np.maximum.reduceat(K, starts, axis=0)
    offset = _to_meta(kmin, dt, "down", "min key")
    o64 = offset.astype(np.float64)
    step = _covering_step(kmax, o64, levels, dt)
    g = np.arange(M) // group
    st = step.astype(np.float64)[g]
    with np.errstate(divide="ignore", invalid="ignore"):
        t = np.where(st > 0, (K - o64[g]) / st, 0.0)
    codes = np.clip(np.rint(t), 0, levels).astype(np.uint8)
    return KeySketch(bits=int(bits), group=group, codes=pack_codes(codes, bits) if bits < 8 else codes,
                     offset=offset, step=step, head_dim=D, key_digest=key_digest(K))


def key_digest(K: np.ndarray) -> str:
    """A hash of float64 keys (M, D): what a :class:`KeySketch` remembers of the keys it describes."""
    return hashlib.blake2b(np.ascontiguousarray(K, dtype=np.float64).tobytes(), digest_size=16).hexdigest()


def sketch_scores(q, sketch: KeySketch) -> tuple[np.ndarray, np.ndarray]:
    """Sketch scores ŝ_j = ⟨q, k̃_j⟩ (M,) and per-group error bounds e_g(q) (G,) with
    |⟨q, k_j⟩ − ŝ_j| ≤ e_{j // group}(q), rounded outward (module doc). Unscaled."""
    q = as_real_array("q", q, ndim=1)
    if q.shape[0] != sketch.head_dim:
        raise VashistaInputError("q", f"has dimension {q.shape[0]} but the sketch has dimension {sketch.head_dim}")
    return token_scores(q, sketch.dequantize(), 1.0), _group_errors(q, sketch)


def _group_errors(q: np.ndarray, sketch: KeySketch) -> np.ndarray:
    D = sketch.head_dim
    eta = 4.0 * (sketch.levels + 2) * U
    st = sketch.step.astype(np.float64)
    lo, hi = sketch.box()
    R = np.maximum(np.abs(lo), np.abs(hi))
    per_channel = st * (0.5 + eta) + 4.0 * _gamma(D + 2) * R
    e = (per_channel * np.abs(q)).sum(axis=-1)
    return _up(e * (1.0 + 2.0 * _gamma(D + 3)))


def sketch_bounds(q, sketch: KeySketch, *, one_sided: bool = True) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Sketch scores ŝ_j (M,) and per-token one-sided error bounds e⁺_j, e⁻_j (M,) with
    ŝ_j − e⁻_j ≤ ⟨q, k_j⟩ ≤ ŝ_j + e⁺_j (unscaled, rounded outward). Tighter than ``sketch_scores``'
    symmetric e_g: a channel quantized to code 0 has k̃_d = o_d ≤ k_d (o is the group minimum rounded
    down), so k_d − k̃_d ∈ [0, δ_d(½ + η)] and it adds q⁺_d δ_d(½ + η) to e⁺ and q⁻_d δ_d(½ + η) to e⁻
    only (q± = max(±q, 0)); code 2^b − 1 the mirror image (k̃_d ≥ max ≥ k_d). Other codes add
    |q_d| δ_d(½ + η) to both. The γ term of the rounding is as in e_g.

    ``one_sided=False`` returns SPEC 3b's two-sided e_g for every token of group g (e⁺ = e⁻ = e_g):
    looser, but a per-group constant, which is what makes a GPU scan memory-bound (the one-sided
    savings cost more arithmetic per code than reading it)."""
    q = as_real_array("q", q, ndim=1)
    if q.shape[0] != sketch.head_dim:
        raise VashistaInputError("q", f"has dimension {q.shape[0]} but the sketch has dimension {sketch.head_dim}")
    D = sketch.head_dim
    g = sketch.group_of_tokens()
    if not one_sided:
        e_g = _group_errors(q, sketch)[g]
        return token_scores(q, sketch.dequantize(), 1.0), e_g, e_g.copy()
    c = sketch.unpacked_codes()
    a = sketch.step.astype(np.float64)[g] * (0.5 + 4.0 * (sketch.levels + 2) * U)        # (M, D)
    lo, hi = sketch.box()
    rnd = (4.0 * _gamma(D + 2) * np.maximum(np.abs(lo), np.abs(hi)) * np.abs(q)).sum(axis=-1)[g]
    qa, qp, qm = np.abs(q), np.maximum(q, 0.0), np.maximum(-q, 0.0)
    bottom, top = c == 0, c == sketch.levels
    sel_up = np.where(bottom, qp, np.where(top, qm, qa))
    sel_dn = np.where(bottom, qm, np.where(top, qp, qa))
    grow = 1.0 + 2.0 * _gamma(D + 3)
    e_g = _group_errors(q, sketch)[g]                     # both are sound: never looser than e_g
    e_up = np.minimum(_up(((a * sel_up).sum(axis=-1) + rnd) * grow), e_g)
    e_dn = np.minimum(_up(((a * sel_dn).sum(axis=-1) + rnd) * grow), e_g)
    return token_scores(q, sketch.dequantize(), 1.0), e_up, e_dn


def _box_bound(q: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """UB_g(q) = Σ_d max(q_d lo_d, q_d hi_d) ≥ ⟨q, k⟩ for every k in the box, rounded up (also against
    the float64 evaluation of ⟨q, k⟩)."""
    D = q.shape[0]
    ub = np.maximum(lo * q, hi * q).sum(axis=-1)
    mag = (np.maximum(np.abs(lo), np.abs(hi)) * np.abs(q)).sum(axis=-1)
    return _up(ub + _up(4.0 * _gamma(D + 3) * mag))


# ---------------------------------------------------------------------------------------------- certificate arithmetic
def _lse(x: np.ndarray) -> float:
    """log Σ e^{x_i} (plain float64; −inf for no terms or all −inf)."""
    x = np.asarray(x, dtype=np.float64)
    m = float(np.max(x, initial=-np.inf))
    if not np.isfinite(m):
        return m
    return m + float(np.log(np.exp(x - m).sum()))


def _group_lse(x: np.ndarray, groups: np.ndarray, G: int) -> np.ndarray:
    """Per group g < G: log Σ_{i: groups_i = g} e^{x_i} (−inf for empty groups)."""
    m = np.full(G, -np.inf)
    np.maximum.at(m, groups, x)
    shift = np.where(np.isfinite(m), m, 0.0)
    with np.errstate(under="ignore"):
        s = np.bincount(groups, weights=np.exp(x - shift[groups]), minlength=G)
    with np.errstate(divide="ignore"):
        return np.where(s > 0, shift + np.log(s), -np.inf)


# ---------------------------------------------------------------------------------------------- one step
@dataclass(frozen=True)
class CertifiedStep:
    """Result of ``certified_step`` for one query. Scores are scaled. ``candidates`` ascending.

    ``true_leakage`` / ``true_error`` / ``dense_out`` are filled only with ``with_dense=True``
    (they read every key and value: diagnostics, not part of the method).
    """
    out: np.ndarray
    candidates: np.ndarray
    certified_leakage: float
    error: float
    error_middle: float
    error_estar: float
    error_ball: float
    error_token: float
    gap: float
    log_z_cand: float           # lower bound on log Σ_C e^{s_j}
    log_z_out: float            # upper bound on log of the mass outside C
    scanned_tokens: int
    pruned_groups: np.ndarray
    rounding: float
    true_leakage: float | None = None
    true_error: float | None = None
    dense_out: np.ndarray | None = None


@dataclass(frozen=True)
class GroupValueStats:
    """Per-group value summaries used by the output bounds: max norm, centre (mean), radius."""
    vmax: np.ndarray     # (G,)
    centre: np.ndarray   # (G, Dv)
    radius: np.ndarray   # (G,)  max_j ‖v_j − centre‖, rounded up
    token_radius: np.ndarray  # (M,) ‖v_j − centre_{g(j)}‖, rounded up (one number per token)


def group_value_stats(V: np.ndarray, group: int) -> GroupValueStats:
    """Summaries of values (M, Dv) per group of ``group`` tokens (a cache keeps them per page)."""
    M = V.shape[0]
    starts = np.arange(0, M, group)
    counts = np.diff(np.r_[starts, M])
    norms = np.linalg.norm(V, axis=1)
    centre = np.add.reduceat(V, starts, axis=0) / counts[:, None]
    g = np.arange(M) // group
    dist = np.linalg.norm(V - centre[g], axis=1)
    # norms and distances are enlarged by γ_{Dv+2}, which covers their float64 evaluation
    grow = 1 + 2 * _gamma(V.shape[1] + 2)
    return GroupValueStats(vmax=_up(np.maximum.reduceat(norms, starts) * grow), centre=centre,
                           radius=_up(np.maximum.reduceat(dist, starts) * grow), token_radius=_up(dist * grow))


def certified_step(q, K, V, sketch: KeySketch, Kc: int, *, scale: float | None = None,
                   prune_tol: float = 0.0, value_stats: GroupValueStats | None = None,
                   with_dense: bool = False, one_sided: bool = True) -> CertifiedStep:
    """One certified-mode decode step for one query ``q`` (D,) over keys ``K`` (M, D) (full precision,
    read only for the candidates and for the page means when pruning), values ``V`` (M, Dv) and the
    sketch of K. See the module doc for the problem solved and the bounds; ``one_sided=False`` uses
    SPEC 3b's two-sided per-group errors (:func:`sketch_bounds`). ``Kc`` ≤ M (more is an error, not
    clamped); when box pruning leaves fewer than Kc tokens to scan, every scanned token is a candidate
    (``candidates`` says how many: the pruned groups are certified negligible by ``prune_tol``)."""
    q, K = query_and_keys(q, K)
    V = as_real_array("V", V, ndim=2)
    M, D = K.shape
    if V.shape[0] != M:
        raise VashistaInputError("V", f"has {V.shape[0]} rows but K has {M}")
    if not isinstance(sketch, KeySketch):
        raise VashistaInputError("sketch", f"expected a KeySketch, got {type(sketch).__name__}")
    if sketch.n_tokens != M or sketch.head_dim != D:
        raise VashistaInputError("sketch", f"covers ({sketch.n_tokens}, {sketch.head_dim}) keys, K is {K.shape}")
    if sketch.key_digest is not None and sketch.key_digest != key_digest(K):
        # a sketch of other keys (stale: K changed since; foreign: another head's) bounds nothing here
        raise VashistaInputError("sketch", "was built from other keys than K (stale or foreign sketch); "
                                           "requantize with quantize_keys(K)")
    # Kc > M is refused rather than clamped: a caller asking for more candidates than keys has the
    # wrong cache or the wrong Kc, and a silent clamp would hide it (issue 15)
    Kc = positive_int("Kc", Kc, upper=M, upper_name="keys")
    scale = resolve_scale(scale, D)
    prune_tol = nonnegative_scalar("prune_tol", prune_tol)
    vs = group_value_stats(V, sketch.group) if value_stats is None else value_stats
    G, S = sketch.n_groups, sketch.group
    g_of = sketch.group_of_tokens()
    counts = np.diff(np.r_[np.arange(0, M, S), M])
    lo_box, hi_box = sketch.box()

    # 1. box pruning (module doc, step 1)
    pruned = np.zeros(G, dtype=bool)
    log_u_box = np.zeros(0)
    if prune_tol > 0 and G > 1:
        log_u_box = np.log(counts) * (1 + _FN_REL) + _up(scale * _box_bound(q, lo_box, hi_box))
        means = np.add.reduceat(K, np.arange(0, M, S), axis=0) / counts[:, None]
        probe = np.unique([int(np.argmax(token_scores(q, means, 1.0))), G - 1])
        rows = np.flatnonzero(np.isin(g_of, probe))
        raw_p = token_scores(q, K[rows], 1.0)
        lb_p = _down(_down(raw_p - _up(4 * _gamma(D + 2) * (np.abs(K[rows]) @ np.abs(q)))) * scale)
        budget = np.log(prune_tol) + lse_lower(lb_p)
        log_u_box[probe] = np.inf                          # the probed groups are always scanned
        order = np.argsort(log_u_box, kind="stable")
        cum = np.logaddexp.accumulate(log_u_box[order])
        n_prune = int(np.searchsorted(cum, budget, side="right"))
        pruned[order[:n_prune]] = True
    scanned = ~pruned[g_of]
    idx_scan = np.flatnonzero(scanned)

    # 2. sketch scan
    shat_all, e_up_all, e_dn_all = sketch_bounds(q, sketch, one_sided=one_sided)
    shat = shat_all[idx_scan]
    # 3. candidates by sketch score, tie -> lower index; exact rescoring
    kc = min(Kc, idx_scan.size)
    cand = np.sort(idx_scan[top_indices(shat, kc)])
    raw = token_scores(q, K[cand], 1.0)
    s_c = raw * scale
    exact_err = _up(4 * _gamma(D + 2) * (np.abs(K[cand]) @ np.abs(q)))
    lb_c = _down(_down(raw - exact_err) * scale)
    # 4. softmax and gather
    w = np.exp(s_c - s_c.max())
    out = (w / w.sum()) @ V[cand]
    # the returned output vs exact softmax over C (ROUNDING.md §4): the candidates' computed scores are
    # within δ_c of exact (exact_err, scaled, plus the rounding of the scaling), and the evaluation of
    # exponentials, sums and division; M's evaluation error keeps the bound above a float64 dense too
    vmax_all = float(vs.vmax.max())
    delta_c = up(up(exact_err * scale) + 2 * U * np.abs(s_c))
    rounding = add_up(mul_up(softmax_tv(s_c, delta_c), vmax_all), softmax_eval_error(kc, vmax_all),
                      softmax_eval_error(M, vmax_all))
    # 5. certificate
    is_c = np.zeros(M, dtype=bool)
    is_c[cand] = True
    rest = idx_scan[~is_c[idx_scan]]
    shat_r = shat_all[rest]
    ub = _up(_up(shat_r + e_up_all[rest]) * scale)
    lb = _down(_down(shat_r - e_dn_all[rest]) * scale)
    log_u_pruned = log_u_box[pruned] if log_u_box.size else np.zeros(0)
    log_zc = lse_lower(lb_c)
    log_zout = lse_upper(np.r_[ub, log_u_pruned])
    leak = leakage_upper(log_zc, log_zout, M)
    s_out_max = max(float(np.max(ub, initial=-np.inf)),
                    float(np.max(_up(scale * _box_bound(q, lo_box[pruned], hi_box[pruned])), initial=-np.inf))
                    if pruned.any() else -np.inf)
    gap = float(lb_c.max() - s_out_max)

    # ‖o_C‖ ≤ ‖out‖ + rounding, and ‖v_j − o_C‖ ≤ ‖v_j − c‖ + ‖c − out‖ + rounding: the excluded forms
    # carry the rounding in their weights (w) and radii
    o_norm = add_up(float(up(np.linalg.norm(out) * (1 + 2 * _gamma(out.shape[0] + 2)))), rounding)
    if rest.size == 0 and not pruned.any():
        e_mid = e_star = e_ball = e_tok = 0.0
    else:
        # Everything in the log domain: masses e^{ub} of uncertain tokens can exceed the candidates'
        # by far more than float64's range, and shifting by the largest would flush the candidates'
        # and the scanned tokens' masses to 0 (found: certified 1.0 < true 35.9, tests/test_sketch.py).
        fn = float(np.log1p(_FN_REL))
        log_xlo, log_xhi = lb - fn, ub + fn                     # bounds on log x_j, j ∉ C scanned
        with np.errstate(divide="ignore", invalid="ignore", under="ignore"):
            log_slack = log_xhi + np.log1p(-np.exp(log_xlo - log_xhi))     # log(x_hi − x_lo)
        log_u_pr = log_u_pruned + fn
        pr = np.flatnonzero(pruned)
        log_Z_lo = float(np.logaddexp(log_zc - fn, _lse(log_xlo)))
        w_tok = up(vs.vmax[g_of[rest]] + o_norm)
        w_pr = up(vs.vmax[pruned] + o_norm)
        w_max = float(np.max(np.r_[w_tok, w_pr]))
        e_mid = mul_up(leak, w_max)
        radius, rt = up(vs.radius + rounding), up(vs.token_radius[rest] + rounding)
        with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
            e_star = best_prefix_ratio_log(_lse(log_xlo + np.log(w_tok)), log_Z_lo, np.r_[log_slack, log_u_pr],
                                            np.r_[w_tok, w_pr])
            # ball forms: e·Z = Σ_g W_g (c_g − o) + Σ_{j∉C} x_j (v_j − c_g(j)); the first sum keeps the
            # cancellation between groups at the lower weights, the rest is a linear-fractional maximum
            # over the weight intervals (runtime_certificate's E* maximiser)
            logW_lo = _group_lse(log_xlo, g_of[rest], G)
            logW_slack = _group_lse(np.r_[log_slack, log_u_pr], np.r_[g_of[rest], pr], G)
            dist = _up(np.linalg.norm(vs.centre - out, axis=1) * (1 + 2 * _gamma(out.shape[0] + 2)))
            cmax = float(np.max(logW_lo))
            if np.isfinite(cmax):
                a_g = np.exp(logW_lo - cmax)
                # ‖Σ a_g (c_g − out)‖ can cancel: its evaluation error is absolute, relative to Σ a_g ‖c_g − out‖
                # (sums, the subtraction, and the exp of each weight)
                slack = (2 * _gamma(G + out.shape[0] + 4) + 800 * U + 2 * _FN_REL) * float(a_g @ dist)
                log_base = cmax + np.log(up(float(np.linalg.norm(a_g @ (vs.centre - out)))
                                            * (1 + 2 * _gamma(G + out.shape[0] + 2)) + slack))
            else:
                log_base = -np.inf
            e_ball = best_prefix_ratio_log(np.logaddexp(log_base, _lse(logW_lo + np.log(radius))), log_Z_lo,
                                            logW_slack, dist + radius)
            e_tok = best_prefix_ratio_log(np.logaddexp(log_base, _lse(log_xlo + np.log(rt))), log_Z_lo,
                                           np.r_[log_slack, log_u_pr],
                                           np.r_[dist[g_of[rest]] + rt, dist[pr] + radius[pr]])
        # log-domain evaluation errs by ≤ n·u·(largest log magnitude) in each exponent: a relative
        # allowance, +inf when it is not small (then the other forms, or e_mid, bound the error)
        logs = np.r_[log_zc, ub, lb, log_u_pruned, log_base]
        mag = float(np.max(np.abs(logs[np.isfinite(logs)]), initial=0.0)) + np.log(M + 2.0) + \
            float(np.log(max(w_max, float(np.max(dist + radius)), 1.0)))
        factor = log_domain_factor(M + G + 8, mag)
        e_star, e_ball, e_tok = (float(up(e * factor)) if np.isfinite(e) and np.isfinite(factor) else np.inf
                                 for e in (e_star, e_ball, e_tok))
    e_mid, e_star, e_ball, e_tok = (add_up(e, rounding) for e in (e_mid, e_star, e_ball, e_tok))

    true_leak = true_err = dense_out = None
    if with_dense:
        true_leak, dense_out = dense_leakage(q, K, V, cand, scale)
        true_err = float(np.linalg.norm(out - dense_out))
    return CertifiedStep(out=out, candidates=cand, certified_leakage=leak,
                         error=min(e_mid, e_star, e_ball, e_tok), error_middle=e_mid, error_estar=e_star,
                         error_ball=e_ball, error_token=e_tok, gap=gap, log_z_cand=log_zc, log_z_out=log_zout,
                         scanned_tokens=int(idx_scan.size), pruned_groups=np.flatnonzero(pruned),
                         rounding=rounding, true_leakage=true_leak, true_error=true_err, dense_out=dense_out)


def dense_leakage(q: np.ndarray, K: np.ndarray, V: np.ndarray, candidates, scale: float) -> tuple[float, np.ndarray]:
    """Diagnostics (reads everything): the true leakage — dense softmax mass outside ``candidates`` —
    and the dense output, in float64 (scores as ``dense.token_scores``)."""
    s_all = token_scores(q, K, scale)
    p = np.exp(s_all - s_all.max())
    Z = p.sum()
    inside = np.zeros(K.shape[0], dtype=bool)
    inside[np.asarray(candidates, dtype=np.int64)] = True
    return float(p[~inside].sum() / Z), (p / Z) @ V


def certified_decode(Q, K, V, *, bits: int, Kc: int, group: int = 16, scale: float | None = None,
                     meta_dtype: str = "float16", prune_tol: float = 0.0,
                     with_dense: bool = False, one_sided: bool = True) -> list[CertifiedStep]:
    """Certified mode for a GQA group layout: queries ``Q`` (Hq, D), keys ``K`` (Hkv, M, D), values
    ``V`` (Hkv, M, Dv), Hq a multiple of Hkv (query head h reads KV head h // (Hq / Hkv)). Each KV head
    is sketched once; each query head selects and is certified on its own. Returns one
    :class:`CertifiedStep` per query head."""
    Q = as_real_array("Q", Q, ndim=2)
    K = as_real_array("K", K, ndim=3)
    V = as_real_array("V", V, ndim=3)
    Hq, Hkv = Q.shape[0], K.shape[0]
    if V.shape[0] != Hkv or V.shape[1] != K.shape[1]:
        raise VashistaInputError("V", f"expected ({Hkv}, {K.shape[1]}, Dv), got {V.shape}")
    if Hq % Hkv != 0:
        raise VashistaInputError("Q", f"has {Hq} query heads, not a multiple of the {Hkv} KV heads")
    if Q.shape[1] != K.shape[2]:
        raise VashistaInputError("Q", f"has dimension {Q.shape[1]} but keys have dimension {K.shape[2]}")
    G = Hq // Hkv
    out = []
    for h in range(Hkv):
        sk = quantize_keys(K[h], bits=bits, group=group, meta_dtype=meta_dtype)
        vs = group_value_stats(V[h], sk.group)
        for i in range(G):
            out.append(certified_step(Q[h * G + i], K[h], V[h], sk, Kc, scale=scale, prune_tol=prune_tol,
                                      value_stats=vs, with_dense=with_dense, one_sided=one_sided))
    return out


# ---------------------------------------------------------------------------------------------- paged cache
class PageSketchStore:
    """Quantized copies of every physical page of a ``PagedKVCache``, one quantization group per page
    and KV head, kept current by the cache: ``PagedKVCache.append`` calls ``update_page`` for each page
    it writes (the page is requantized from its full-precision keys, since a new token can move the
    page's min/max and with them every code of the page). Attach with :func:`attach_sketch`.

    Layout: ``codes`` (pages, S, Hkv, ceil(D·bits/8)) uint8, ``offset``/``step`` (pages, Hkv, D).
    """

    def __init__(self, cache, bits: int, meta_dtype: str = "float16"):
        if isinstance(bits, bool) or bits not in SUPPORTED_BITS:
            raise VashistaInputError("bits", f"must be one of {SUPPORTED_BITS}, got {bits!r}")
        if meta_dtype not in META_DTYPES:
            raise VashistaInputError("meta_dtype", f"must be one of {tuple(META_DTYPES)}, got {meta_dtype!r}")
        self.bits, self.meta_dtype = int(bits), meta_dtype
        S, H, D = cache.page_size, cache.n_kv_heads, cache.head_dim
        dt = META_DTYPES[meta_dtype]
        self.codes = np.zeros((0, S, H, -(-D * bits // 8)), dtype=np.uint8)
        self.offset = np.zeros((0, H, D), dtype=dt)
        self.step = np.zeros((0, H, D), dtype=dt)

    def _ensure(self, n_pages: int) -> None:
        old = self.codes.shape[0]
        if n_pages > old:
            cap = max(n_pages, 2 * old)
            grow = lambda a: np.concatenate([a, np.zeros((cap - old,) + a.shape[1:], a.dtype)])  # noqa: E731
            self.codes, self.offset, self.step = grow(self.codes), grow(self.offset), grow(self.step)

    def update_page(self, cache, page: int) -> None:
        """Requantize physical page ``page`` (all KV heads) from the cache's keys."""
        self._ensure(cache.num_physical_pages)
        n = int(cache.count[page])
        for h in range(cache.n_kv_heads):
            sk = quantize_keys(cache.keys[page, :n, h], bits=self.bits, group=cache.page_size,
                               meta_dtype=self.meta_dtype)
            self.codes[page, :n, h] = sk.codes
            self.offset[page, h], self.step[page, h] = sk.offset[0], sk.step[0]

    def sequence_sketch(self, cache, seq_id: int, head: int) -> KeySketch:
        """The :class:`KeySketch` of one sequence and KV head in logical token order (groups = pages):
        the ⌈T/S⌉ groups of its T tokens, not the pages a cache may hold reserved past its end."""
        T = cache.length(seq_id)
        table = cache.page_table(seq_id)[: -(-T // cache.page_size)]
        codes = self.codes[table, :, head].reshape(-1, self.codes.shape[-1])[:T]
        return KeySketch(bits=self.bits, group=cache.page_size, codes=codes.copy(),
                         offset=self.offset[table, head].copy(), step=self.step[table, head].copy(),
                         head_dim=cache.head_dim)


def attach_sketch(cache, bits: int, meta_dtype: str = "float16") -> PageSketchStore:
    """Give ``cache`` a b-bit sketch of all its pages (kept current on append); idempotent per bits."""
    store = cache.sketches.get(bits)
    if store is None or store.meta_dtype != meta_dtype:
        store = PageSketchStore(cache, bits, meta_dtype)
        for page in np.flatnonzero(cache.count > 0):
            store.update_page(cache, int(page))
        cache.sketches[bits] = store
    return store


def sketch_attempt(qs: np.ndarray, cache, seq_id: int, head: int, P: int, Kc: int, opts: dict) -> list[dict]:
    """``sparse_decode``'s hook for ``router="sketch"``: one certified step per query of ``qs`` (G', D)
    on sequence ``seq_id``, KV head ``head``; returns its per-query records (same keys as the paged
    mode's; ``P`` is not used by certified mode, only recorded). Cost fields: ``summaries_scored`` = pages whose sketch metadata was read,
    ``tokens_scored`` = candidates rescored exactly, ``pages_read`` = pages holding them,
    ``values_read`` = values gathered. (The sketch codes of every scanned token are read as well.)"""
    store = attach_sketch(cache, opts["bits"])
    sk = store.sequence_sketch(cache, seq_id, head)
    K, V = cache.gather(seq_id, head)
    vs = group_value_stats(V, cache.page_size)
    records = []
    for q in qs:
        r = certified_step(q, K, V, sk, Kc, scale=opts["scale"], prune_tol=opts.get("prune_tol", 0.0),
                           value_stats=vs)
        touched = np.unique(r.candidates // cache.page_size)
        scanned = np.setdiff1d(np.arange(sk.n_groups), r.pruned_groups)
        records.append(dict(
            pages=scanned, candidates=r.candidates, P=P, Kc=Kc, out=r.out,
            leakage=r.certified_leakage, error=r.error, error_middle=r.error_middle,
            error_2lv=max(r.error_middle, add_up(mul_up(2 * r.certified_leakage, float(vs.vmax.max()) * (1 + 8 * U)),
                                                 r.rounding)),
            gap=r.gap, rounding=r.rounding, projection_gap=np.nan, solver_certificate=np.nan,
            certified=bool(np.isfinite(r.error) and r.error <= opts["tol"]),
            cost=dict(summaries_scored=sk.n_groups, pages_read=int(touched.size),
                      tokens_scored=int(r.candidates.size), values_read=int(r.candidates.size))))
    return records
