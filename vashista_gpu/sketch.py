"""Certified mode (SPEC 3b) in PyTorch: the quantized key sketch and one certified decode step,
vectorised over query heads — the twin of ``vashista_ref.sketch`` (read its module doc for the
optimisation problem and the soundness argument; this module follows it step for step).

Problem solved for every query head h (KV head h // G):

    o_h = Σ_{j∈C_h} a_j v_j,  a = argmax_{a∈Δ_{C_h}} ⟨s_{C_h}, a⟩ + H(a) = softmax(s_{C_h}),
    C_h = top-Kc tokens by sketch score ŝ_j = ⟨q_h, k̃_j⟩ (ties to the lower index),

with L̂_h ≥ the dense mass outside C_h and four bounds on ‖o_h − o_dense‖ (``error`` the smallest).

What differs from the reference: the sketch scan and the exact rescoring run in ``compute_dtype``
(float32 by default, float64 for differential tests). The error term then uses the unit roundoff of
that dtype in its γ terms, u_c = max(u(compute_dtype), 2⁻⁵³): the dequantization o + δ·c, the cast of
q and the dot product are each covered by 4 γ_{D+2}(u_c) Σ_d |q_d| R_d. The torch scan is a batched
matmul, which ``torch.set_float32_matmul_precision("high"|"medium")`` lets run in TF32 / bf16: the
scan's u_c then follows that setting (2⁻¹⁰ / 2⁻⁷, covering the inputs' rounding), so the bound stays
sound whatever the process-wide precision; the Triton scan and the exact rescoring are elementwise
float32 (never TF32). Quantization (codes,
offset, step) is done in float64 exactly as in the reference, so codes and metadata are bit-identical.
The one-sided per-token errors (``vashista_ref.sketch.sketch_bounds``) are computed in float64 from
the codes (three batched matmuls of non-negative terms). The certificate arithmetic over the M bounds and the Kc-token softmax/gather run in float64 (one
reduction per head; a fused kernel would keep fp32 with the same outward margins). Box pruning is not
implemented here (the reference has it). ``backend="triton"`` runs the sketch scan (unpack, dequantize,
dot) in one Triton kernel, ``kernels.sketch_scan.sketch_scores``; the selection and certificate stay in torch.
``vashista_gpu.decode.sparse_decode(..., router="sketch", bits=b)`` reaches this path
(:func:`sketch_decode`) when the fused paged step does not apply. :func:`fused_sketch_step` is the device-only step for batches of
equal-length sequences (benchmarks/sketch_decode_scaling.py): one Triton pass emits tie-rule keys and
per-token float32 upper bounds (``kernels/sketch_scan.py``), then topk, exact rescoring, softmax and a
float32 certificate rounded outward, with no host synchronisation (CUDA-graph capturable); its output
bound is the middle form L̂·(max‖v‖ + ‖o‖) plus the float32 rounding of o. Its paged twin (any
lengths, through the page table), planned once and replayable in a CUDA graph, with the policies, is
``sketch_plan.py``. Every step returns a ``result.StepResult``.

Example::

    >>> import torch
    >>> from vashista_gpu.sketch import quantize_keys, certified_decode
    >>> g = torch.Generator().manual_seed(0)
    >>> K, V = torch.randn(2, 200, 16, generator=g), torch.randn(2, 200, 8, generator=g)
    >>> Q = 3 * torch.randn(6, 16, generator=g)                  # 6 query heads on 2 KV heads
    >>> sk = quantize_keys(K, bits=4, group=16)
    >>> r = certified_decode(Q, K, V, sk, Kc=32)
    >>> r.out.shape, r.candidates.shape, bool((r.certified_leakage <= 1).all())
    (torch.Size([6, 8]), torch.Size([6, 32]), True)
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from vashista_core.errors import VashistaInputError
from vashista_core.options import META_DTYPE_NAMES, SUPPORTED_BITS
from vashista_core.policies import Capped
from vashista_core.policy_loop import check_policy, run_policy
from vashista_core.rounding import FLOAT32_MATMUL_ROUNDOFF, FN_REL, U64, gamma, softmax_eval_error

from .allowance import cast_output, down, never_nan, up
from .result import StepResult
from .selection import select_candidates, top_ascending
from .validate import positive_int, positive_scalar, tensor

try:  # Triton is optional: the torch path works without it (the fused path and the Triton scan need it)
    import triton
except ImportError:  # pragma: no cover
    triton = None

__all__ = ["HAS_TRITON", "TorchCertifiedStep", "TorchKeySketch", "TorchPageSketchStore", "attach_sketch",
           "certified_decode", "check_current", "fused_sketch_step", "quantize_keys", "scanned_pages", "sketch_bounds",
           "sketch_decode", "sketch_mismatch"]
HAS_TRITON = triton is not None

_META = {"float16": torch.float16, "float32": torch.float32}
CHECK_SAMPLE = 256       # keys compared by the per-step stale-sketch check (sketch_mismatch) of a cache's sketch
assert set(_META) == set(META_DTYPE_NAMES)


@dataclass(frozen=True)
class TorchKeySketch:
    """Sketch of keys (Hkv, M, D): ``codes`` (Hkv, M, ceil(D·bits/8)) uint8 packed low bits first,
    ``offset``/``step`` (Hkv, G, D) in the metadata dtype; token j is in group j // ``group``."""
    bits: int
    group: int
    codes: torch.Tensor
    offset: torch.Tensor
    step: torch.Tensor
    head_dim: int

    @property
    def levels(self) -> int:
        return (1 << self.bits) - 1

    def unpacked_codes(self) -> torch.Tensor:
        per, mask = 8 // self.bits, (1 << self.bits) - 1
        parts = [(self.codes >> (i * self.bits)) & mask for i in range(per)]
        H, M, _ = self.codes.shape
        return torch.stack(parts, dim=-1).reshape(H, M, -1)[..., : self.head_dim]

    def dequantize(self, dtype=torch.float64) -> torch.Tensor:
        """k̃ = offset + step ⊙ code, (Hkv, M, D) in ``dtype`` (broadcast per group: the per-token
        copies of offset and step are never built)."""
        H, M, _ = self.codes.shape
        Gr = -(-M // self.group)
        c = by_group(self.unpacked_codes().to(dtype), self.group)                     # (H, Gr, S, D)
        k = self.offset[:, :Gr, None].to(dtype) + self.step[:, :Gr, None].to(dtype) * c
        return k.view(H, Gr * self.group, -1)[:, :M]

    def box(self) -> tuple[torch.Tensor, torch.Tensor]:
        lo = self.offset.double()
        return lo, up(lo + up(self.levels * self.step.double()))


def by_group(x: torch.Tensor, group: int) -> torch.Tensor:
    """(H, M, ...) per-token values as (H, ⌈M/group⌉, group, ...) by group, the last group padded with
    zeros: a per-group quantity then broadcasts over its tokens without a per-token copy."""
    H, M = x.shape[:2]
    Gr = -(-M // group)
    pad = torch.zeros((H, Gr * group - M) + tuple(x.shape[2:]), dtype=x.dtype, device=x.device)
    return torch.cat([x, pad], 1).view((H, Gr, group) + tuple(x.shape[2:]))


def _to_meta(x: torch.Tensor, dt, direction: str, check: bool = True) -> torch.Tensor:
    y = x.to(dt)
    if check and not bool(torch.isfinite(y).all()):
        raise VashistaInputError("K", f"keys exceed the range of the {dt} metadata; use meta_dtype='float32'")
    bad = y.double() > x if direction == "down" else y.double() < x
    target = torch.full_like(y, -math.inf if direction == "down" else math.inf)
    return torch.where(bad, torch.nextafter(y, target), y)


def _quantize_groups(K64: torch.Tensor, valid: torch.Tensor, bits: int, dt, check: bool = True):
    """Codes (X, Gr, g, D) uint8 (unpacked, 0 on invalid slots), offset and step (X, Gr, D) for keys
    K64 (X, Gr, g, D) float64 grouped along axis 2; ``valid`` (X, Gr, g) masks absent tokens. The same
    float64 operations as ``vashista_ref.sketch.quantize_keys`` (bit-identical results).
    ``check=False`` never synchronises (a captured decode step): metadata out of range is not refused
    here; the caller checks it later (``TorchPageSketchStore.finite``)."""
    L = (1 << bits) - 1
    v = valid[..., None]
    kmin = torch.where(v, K64, math.inf).amin(2)
    kmax = torch.where(v, K64, -math.inf).amax(2)
    empty = ~valid.any(2)[..., None].expand_as(kmin)
    kmin = torch.where(empty, torch.zeros_like(kmin), kmin)
    kmax = torch.where(empty, torch.zeros_like(kmax), kmax)
    offset = _to_meta(kmin, dt, "down", check)
    o64 = offset.double()
    # the smallest metadata step with o + L·step >= kmax exactly (reference: _covering_step)
    s = kmax - o64
    bp = s - kmax
    e = (kmax - (s - bp)) + (-o64 - bp)
    step = _to_meta(torch.where(s > 0, s / L, torch.zeros_like(s)), dt, "up", check)
    # raise the step by whole metadata ulps, at most 8, until L·step − s ≥ e: the first of the next 8
    # candidates that passes (or the 8th up). One pass instead of a loop of 8 (no synchronisation, few
    # launches in a captured decode step): non-negative floats of one dtype are ordered like their bit
    # patterns, so candidate k is the bits + k, and the test only gets easier as the step grows
    ibits = torch.int16 if dt == torch.float16 else torch.int32
    cand = (step.view(ibits)[..., None] + torch.arange(9, dtype=ibits, device=step.device)).view(dt)
    ok = (L * cand[..., :8].double() - s[..., None] >= e[..., None]).to(torch.int8)
    k = torch.where(ok.any(-1), ok.argmax(-1), 8)
    step = cand.gather(-1, k[..., None])[..., 0]
    if check and not bool(torch.isfinite(step).all()):
        raise VashistaInputError("K", f"key range exceeds the range of the {dt} metadata; use meta_dtype='float32'")
    st = step.double()[:, :, None, :]
    t = torch.where(st > 0, (K64 - o64[:, :, None, :]) / torch.where(st > 0, st, torch.ones_like(st)),
                    torch.zeros_like(K64))
    t = torch.where(v, t, torch.zeros_like(t))
    return torch.round(t).clamp(0, L).to(torch.uint8), offset, step


def _pack(codes: torch.Tensor, bits: int) -> torch.Tensor:
    """Pack uint8 codes (..., D) into (..., ceil(D·bits/8)) bytes, low bits first (reference layout)."""
    if bits == 8:
        return codes
    per = 8 // bits
    D = codes.shape[-1]
    width = -(-D // per)
    c = torch.nn.functional.pad(codes, (0, width * per - D)).view(*codes.shape[:-1], width, per)
    packed = torch.zeros(c.shape[:-1], dtype=torch.uint8, device=codes.device)
    for i in range(per):
        packed |= c[..., i] << (i * bits)
    return packed


def _check_sketch_args(bits, meta_dtype):
    if isinstance(bits, bool) or bits not in SUPPORTED_BITS:
        raise VashistaInputError("bits", f"must be one of {SUPPORTED_BITS}, got {bits!r}")
    if meta_dtype not in _META:
        raise VashistaInputError("meta_dtype", f"must be one of {tuple(_META)}, got {meta_dtype!r}")
    return _META[meta_dtype]


def quantize_keys(K: torch.Tensor, bits: int = 4, group: int = 16, meta_dtype: str = "float16") -> TorchKeySketch:
    """Quantize keys (Hkv, M, D) per group of ``group`` tokens and channel; bit-identical to
    ``vashista_ref.sketch.quantize_keys`` applied to each head (same float64 arithmetic)."""
    K = tensor("K", K, ndim=3)
    dt = _check_sketch_args(bits, meta_dtype)
    group = positive_int("group", group)
    H, M, D = K.shape
    Gr = -(-M // group)
    K64 = by_group(K.double(), group)
    valid = (torch.arange(Gr * group, device=K.device) < M).view(1, Gr, group).expand(H, Gr, group)
    codes, offset, step = _quantize_groups(K64, valid, bits, dt)
    codes = codes.view(H, Gr * group, D)[:, :M]
    return TorchKeySketch(bits=int(bits), group=group, codes=_pack(codes, bits).contiguous(), offset=offset,
                          step=step, head_dim=D)


@dataclass(frozen=True)
class TorchCertifiedStep:
    """Per query head (Hq,) tensors; ``candidates`` (Hq, kc) ascending logical indices; ``out`` (Hq, Dv)."""
    out: torch.Tensor
    candidates: torch.Tensor
    certified_leakage: torch.Tensor
    error: torch.Tensor
    error_middle: torch.Tensor
    error_estar: torch.Tensor
    error_ball: torch.Tensor
    error_token: torch.Tensor
    gap: torch.Tensor
    weights: torch.Tensor | None = None     # (Hq, kc) float64 softmax weights aligned with candidates


def _matmul_roundoff(dtype) -> float:
    """Unit roundoff of a torch matmul in ``dtype`` under the process-wide float32 matmul precision."""
    if dtype == torch.float64:
        return U64
    return FLOAT32_MATMUL_ROUNDOFF.get(torch.get_float32_matmul_precision(), FLOAT32_MATMUL_ROUNDOFF["medium"])


def _lse_bound(x: torch.Tensor, upper: bool) -> torch.Tensor:
    """Outward-rounded log Σ exp over the last axis (−inf entries are absent terms)."""
    n = x.shape[-1]
    m = x.amax(-1, keepdim=True)
    m_safe = torch.where(torch.isfinite(m), m, torch.zeros_like(m))
    if upper:
        t = torch.exp(up(x - m_safe)) * (1 + FN_REL)
        s = up(t.sum(-1) * (1 + gamma(n + 1)))
        out = up(m_safe[..., 0] + up(torch.log(s) * (1 + FN_REL)))
    else:
        t = torch.exp(down(x - m_safe)) * (1 - FN_REL)
        s = down(t.sum(-1) * (1 - gamma(n + 1)))
        ls = torch.log(s)
        out = down(m_safe[..., 0] + down(torch.where(ls < 0, ls * (1 + FN_REL), ls * (1 - FN_REL))))
    return torch.where(torch.isfinite(m[..., 0]), out, m[..., 0])


def _best_prefix_ratio_log(log_A, log_Z, log_u, w):
    """Row-wise max over x ∈ Π[0, u] of (A + Σ x w)/(Z + Σ x), from the logs of A, Z, u (−inf for
    0), in the log domain (runtime_certificate's E* maximiser: best prefix in decreasing w)."""
    order = torch.sort(-w, dim=-1, stable=True).indices
    lw = torch.log(torch.gather(w, -1, order))
    lu = torch.gather(log_u, -1, order)
    ninf = torch.full_like(log_A[:, None], -math.inf)
    # a block of no mass adds nothing, whatever its w (−inf + inf would be NaN)
    terms = torch.where(torch.isneginf(lu) | torch.isneginf(lw), torch.full_like(lu, -math.inf), lu + lw)
    log_num = torch.logaddexp(log_A[:, None], torch.cat([ninf, torch.logcumsumexp(terms, -1)], -1))
    log_den = torch.logaddexp(log_Z[:, None], torch.cat([ninf, torch.logcumsumexp(lu, -1)], -1))
    ratio = torch.where(torch.isneginf(log_num), torch.zeros_like(log_den), torch.exp(log_num - log_den))
    # inf/inf says nothing: an upper bound must then be +inf, never NaN (and never 0)
    return torch.where(torch.isnan(ratio), torch.full_like(ratio, math.inf), ratio).amax(-1)


def _softmax_tv(s: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
    """Row-wise vashista_core.rounding.softmax_tv: a bound on the total variation between softmax(s)
    and softmax(s') for |s' − s| ≤ δ: min(e^{2δ} − 1, 2S/(1 + S), 2), S = Σ_{j≠t} e^{s_j − s_t + δ_j + δ_t}."""
    n = s.shape[-1]
    if n <= 1:
        return torch.zeros(s.shape[:-1], dtype=s.dtype, device=s.device)
    first = up(torch.expm1(up(2.0 * delta.amax(-1))) * (1 + FN_REL))
    t = s.argmax(-1, keepdim=True)
    x = up(up(s - s.gather(-1, t)) + up(delta + delta.gather(-1, t)))
    x = x.scatter(-1, t, torch.full_like(t, -math.inf, dtype=s.dtype))
    S = up(torch.exp(_lse_bound(x, upper=True)) * (1 + FN_REL))
    second = torch.where(torch.isfinite(S), up(2.0 * up(S / down(1.0 + S))), torch.full_like(S, 2.0))
    return torch.clamp(torch.minimum(first, second), max=2.0)


def _group_lse(x: torch.Tensor, g_of: torch.Tensor, Gr: int) -> torch.Tensor:
    """Per row and group: log Σ_{j in group} e^{x_j} (−inf for none)."""
    rows = x.shape[0]
    m = torch.full((rows, Gr), -math.inf, dtype=x.dtype, device=x.device)
    m = m.scatter_reduce(1, g_of.expand(rows, -1), x, "amax")
    shift = torch.where(torch.isfinite(m), m, torch.zeros_like(m))
    s = torch.zeros_like(m).index_add_(1, g_of, torch.exp(x - shift[:, g_of]))
    return torch.where(s > 0, shift + torch.log(s), torch.full_like(s, -math.inf))


def sketch_bounds(Q: torch.Tensor, sketch: TorchKeySketch, *, compute_dtype=torch.float64, one_sided: bool = True,
                  backend: str = "torch"):
    """The scan of a sketch with its per-token errors: ŝ (Hq, M) float64 (computed in ``compute_dtype``,
    or float32 by the Triton scan) and e_up, e_dn (Hq, M) float64 with ŝ_j − e_dn_j ≤ ⟨q, k_j⟩ ≤ ŝ_j + e_up_j
    (unscaled), the scan's own rounding included — the torch twin of ``vashista_ref.sketch.sketch_bounds``.
    ``one_sided=False`` gives every token its group's two-sided e_g (SPEC 3b). Used by
    ``certified_decode`` and by the context-parallel shards, which need the bounds themselves."""
    Hq, D = Q.shape
    Hkv, M = sketch.codes.shape[:2]
    G = Hq // Hkv
    Gr = sketch.offset.shape[1]
    u_c = max(torch.finfo(compute_dtype).eps / 2, U64)
    u_scan = u_c if backend == "triton" else max(u_c, _matmul_roundoff(compute_dtype))
    q64 = Q.double()
    g_of = torch.arange(M, device=Q.device) // sketch.group

    # sketch scan: ŝ (Hq, M) in compute_dtype, bmm per KV head group (keys never repeated)
    if backend == "triton":
        from .kernels.sketch_scan import sketch_scores     # Triton is optional for the torch path
        shat = sketch_scores(Q, sketch.codes, sketch.offset, sketch.step, bits=sketch.bits, group=sketch.group).double()
    else:
        kt = sketch.dequantize(compute_dtype)
        qg = Q.to(compute_dtype).view(Hkv, G, D).transpose(1, 2)
        shat = torch.bmm(kt, qg).permute(0, 2, 1).reshape(Hq, M).double()
    lo, hi = sketch.box()
    R = torch.maximum(lo.abs(), hi.abs())
    eta = 4.0 * (sketch.levels + 2) * U64
    per_channel = sketch.step.double() * (0.5 + eta) + 4.0 * gamma(D + 2, u_scan) * R    # (Hkv, Gr, D)
    err_g = torch.bmm(per_channel, q64.abs().view(Hkv, G, D).transpose(1, 2)).permute(0, 2, 1).reshape(Hq, Gr)
    err_g = up(err_g * (1.0 + 2.0 * gamma(D + 3)))
    e_g = err_g[:, g_of]
    if not one_sided:
        return shat, e_g, e_g
    # one-sided per-token bounds (vashista_ref.sketch.sketch_bounds): codes 0 and 2^b − 1 err on one side.
    # Per channel d of token j (a = step·(½ + η), q = q⁺ − q⁻, |q| = q⁺ + q⁻): code 0 adds a·q⁺ to e⁺,
    # code 2^b − 1 adds a·q⁻, any other code a·|q|; so e⁺_j = Σ_d a_d(q⁺_d [c ≠ 2^b − 1] + q⁻_d [c ≠ 0]) and
    # e⁻_j the same with q⁺ and q⁻ swapped. The products a·q± are formed once per group, and one batched
    # matmul per group multiplies the two 0/1 masks into them. Every term is ≥ 0, so the float64 sums
    # err by a relative γ whatever their order: ``grow`` covers them.
    S = sketch.group
    Gm = -(-M // S)                                   # the groups holding the M tokens
    a = sketch.step[:, :Gm].double() * (0.5 + eta)                                        # (Hkv, Gm, D)
    qa = q64.abs().view(Hkv, G, D)
    qp, qm = q64.clamp(min=0).view(Hkv, G, D), (-q64).clamp(min=0).view(Hkv, G, D)
    codes = by_group(sketch.unpacked_codes(), S).view(Hkv * Gm, S, D)    # padding rows: cut below
    masks = torch.cat([codes != sketch.levels, codes != 0], -1).double()                 # (Hkv·Gm, S, 2D)
    qq = torch.cat([torch.cat([qp, qm], 1), torch.cat([qm, qp], 1)], 2).transpose(1, 2)   # (Hkv, 2D, 2G)
    coef = (torch.cat([a, a], -1)[..., None] * qq[:, None]).view(Hkv * Gm, 2 * D, 2 * G)
    sums = torch.bmm(masks, coef).view(Hkv, Gm * S, 2, G)[:, :M]                          # e⁺ and e⁻ terms
    # the scan's rounding term is the same for every token of a group
    rnd = torch.bmm(4.0 * gamma(D + 2, u_scan) * R[:, :Gm], qa.transpose(1, 2)).permute(0, 2, 1)   # (Hkv, G, Gm)
    rnd = rnd.reshape(Hq, Gm)[:, g_of]
    per_tok = lambda x: x.permute(0, 2, 1).reshape(Hq, M)  # noqa: E731
    grow = 1.0 + 2.0 * gamma(D + 3)
    e_up = torch.minimum(up((per_tok(sums[:, :, 0]) + rnd) * grow), e_g)
    e_dn = torch.minimum(up((per_tok(sums[:, :, 1]) + rnd) * grow), e_g)
    return shat, e_up, e_dn


def certified_decode(Q: torch.Tensor, K: torch.Tensor, V: torch.Tensor, sketch: TorchKeySketch, Kc: int, *,
                     scale: float | None = None, compute_dtype=torch.float32,
                     backend: str = "torch", one_sided: bool = True,
                     check_keys: int | None = None) -> TorchCertifiedStep:
    """Certified step for queries ``Q`` (Hq, D) over keys ``K`` (Hkv, M, D), values ``V`` (Hkv, M, Dv)
    and their sketch (module doc). ``compute_dtype`` float32 or float64 for the scan and rescoring;
    ``backend="triton"`` runs the sketch scan in the Triton kernel (float32 only); ``one_sided=False``
    bounds every token by its group's two-sided e_g (SPEC 3b; ``vashista_ref.sketch.sketch_bounds``).
    ``check_keys``: how many keys (a strided sample) the stale-sketch check compares with the sketch;
    None (default) compares every key. ``sketch_decode`` passes the fused path's sample: its sketch is
    the cache's own, requantized on every append and checked against the cache's version first."""
    Q = tensor("Q", Q, ndim=2)
    K = tensor("K", K, ndim=3)
    V = tensor("V", V, ndim=3)
    Hq, D = Q.shape
    Hkv, M, Dk = K.shape
    if Dk != D:
        raise VashistaInputError("Q", f"has dimension {D} but keys have dimension {Dk}")
    if Hq % Hkv != 0:
        raise VashistaInputError("Q", f"has {Hq} query heads, not a multiple of the {Hkv} KV heads")
    if V.shape[:2] != (Hkv, M):
        raise VashistaInputError("V", f"expected ({Hkv}, {M}, Dv), got {tuple(V.shape)}")
    if not isinstance(sketch, TorchKeySketch) or tuple(sketch.codes.shape[:2]) != (Hkv, M) or sketch.head_dim != D:
        raise VashistaInputError("sketch", "is not a TorchKeySketch of these keys")
    n_check = M if check_keys is None else positive_int("check_keys", check_keys, upper=M, upper_name="keys")
    if bool(sketch_mismatch(K, sketch.codes, sketch.offset, sketch.step, bits=sketch.bits, group=sketch.group,
                            sample=n_check)):
        # same shapes, other keys (or keys changed since): the bounds would be unsound (issue 15)
        raise VashistaInputError("sketch", "was not built from these keys K (stale or foreign sketch); re-quantize K")
    if compute_dtype not in (torch.float32, torch.float64):
        raise VashistaInputError("compute_dtype", f"must be torch.float32 or torch.float64, got {compute_dtype}")
    if backend not in ("torch", "triton"):
        raise VashistaInputError("backend", f"must be 'torch' or 'triton', got {backend!r}")
    if backend == "triton" and triton is None:
        raise VashistaInputError("backend", "triton is not installed")
    if backend == "triton" and compute_dtype != torch.float32:
        raise VashistaInputError("compute_dtype", "the Triton scan computes in float32")
    Kc = positive_int("Kc", Kc, upper=M, upper_name="keys")     # more than M is an error, not a clamp
    scale = 1.0 / math.sqrt(D) if scale is None else positive_scalar("scale", scale)
    dev = K.device
    G = Hq // Hkv
    S = sketch.group
    Gr = sketch.offset.shape[1]
    u_c = max(torch.finfo(compute_dtype).eps / 2, U64)
    q64 = Q.double()
    g_of = torch.arange(M, device=dev) // S
    kv = torch.arange(Hq, device=dev) // G
    shat, e_up, e_dn = sketch_bounds(Q, sketch, compute_dtype=compute_dtype, one_sided=one_sided, backend=backend)

    # candidates: top-Kc by ŝ, ties to the lower index (stable sort); exact rescoring
    kc = min(Kc, M)
    cand = top_ascending(shat, kc)
    Kcand = K[kv[:, None], cand]                                  # (Hq, kc, D): no (Hq, M, D) copy of K
    raw = (Kcand.to(compute_dtype) * Q.to(compute_dtype)[:, None, :]).sum(-1).double()
    exact_err = up(4 * gamma(D + 2, u_c) * (Kcand.double().abs() * q64.abs()[:, None, :]).sum(-1))
    lb_c = down(down(raw - exact_err) * scale)
    s_c = raw * scale
    w = torch.softmax(s_c, dim=-1)
    Dv = V.shape[-1]
    out = torch.bmm(w[:, None, :], V[kv[:, None], cand].double())[:, 0]

    # certificate
    is_c = torch.zeros(Hq, M, dtype=torch.bool, device=dev)
    is_c.scatter_(1, cand, True)
    ninf = torch.full_like(shat, -math.inf)
    ub = torch.where(is_c, ninf, up(up(shat + e_up) * scale))
    lb = torch.where(is_c, ninf, down(down(shat - e_dn) * scale))
    log_zc = _lse_bound(lb_c, upper=False)
    log_zout = _lse_bound(ub, upper=True)
    d = down(log_zc - log_zout)
    e = torch.exp(d) * (1 - FN_REL)
    leak = up(1.0 / down(1.0 + e))
    leak = torch.clamp(up(leak * (1 + 4 * gamma(M + 16))), max=1.0)
    leak = torch.where(torch.isneginf(log_zout), torch.zeros_like(leak), leak)
    gap = lb_c.amax(-1) - ub.amax(-1)

    # value summaries per group (a cache keeps them per page), as vashista_ref.sketch.group_value_stats
    V64 = V.double()
    counts = torch.bincount(g_of, minlength=Gr).double()
    centre = torch.zeros(Hkv, Gr, Dv, dtype=torch.float64, device=dev).index_add_(1, g_of, V64) / counts[None, :, None]
    grow_v = 1 + 2 * gamma(Dv + 2)
    norms = torch.linalg.vector_norm(V64, dim=-1)
    dist_tok = up(torch.linalg.vector_norm(V64 - centre[:, g_of], dim=-1) * grow_v)         # (Hkv, M)
    neg = torch.full((Hkv, Gr), -math.inf, dtype=torch.float64, device=dev)
    vmax = up(neg.scatter_reduce(1, g_of.expand(Hkv, M), norms, "amax") * grow_v)
    radius = neg.scatter_reduce(1, g_of.expand(Hkv, M), dist_tok, "amax")

    # the returned output vs exact softmax over C, as vashista_ref.sketch (docs/ROUNDING.md §4): the
    # candidates' score rounding (total variation), the float64 softmax evaluation, and M's evaluation
    # error so that the bound also holds against a float64 dense output
    vmax_all = vmax.amax(-1)[kv]
    delta_c = up(up(exact_err * scale) + 2 * U64 * s_c.abs())
    tv = _softmax_tv(s_c, delta_c)
    rounding = up(up(torch.where(tv == 0, torch.zeros_like(tv), up(tv * vmax_all))
                       + up(softmax_eval_error(kc, 1.0) * vmax_all)) + up(softmax_eval_error(M, 1.0) * vmax_all))
    o_norm = up(up(torch.linalg.vector_norm(out, dim=-1) * (1 + 2 * gamma(Dv + 2))) + rounding)
    # log domain throughout (as the reference: shifting by the largest mass can flush the rest to 0)
    out_tok = ~is_c
    fn = math.log1p(FN_REL)
    log_xlo, log_xhi = lb - fn, ub + fn                                                   # −inf on C
    log_slack = torch.where(out_tok, log_xhi + torch.log1p(-torch.exp(log_xlo - log_xhi)), ninf)
    log_Z_lo = torch.logaddexp(log_zc - fn, torch.logsumexp(log_xlo, -1))
    w_tok = torch.where(out_tok, up(vmax[kv][:, g_of] + o_norm[:, None]), torch.zeros_like(shat))
    w_max = w_tok.amax(-1)
    e_mid = torch.where(leak == 0, torch.zeros_like(leak), up(leak * w_max))
    radius_r = up(radius[kv] + rounding[:, None])          # ‖v_j − o_C‖ ≤ ‖v_j − c‖ + ‖c − out‖ + rounding
    e_star = _best_prefix_ratio_log(torch.logsumexp(log_xlo + torch.log(w_tok), -1), log_Z_lo, log_slack, w_tok)
    logW_lo = _group_lse(log_xlo, g_of, Gr)
    logW_slack = _group_lse(log_slack, g_of, Gr)
    dist = up(torch.linalg.vector_norm(centre[kv] - out[:, None, :], dim=-1) * (1 + 2 * gamma(Dv + 2)))
    cmax = logW_lo.amax(-1)
    cm = torch.where(torch.isfinite(cmax), cmax, torch.zeros_like(cmax))
    a_g = torch.exp(logW_lo - cm[:, None])
    vec = torch.bmm(a_g[:, None, :], centre[kv] - out[:, None, :])[:, 0]
    # ‖Σ a_g (c_g − out)‖ can cancel: its evaluation error is absolute, relative to Σ a_g ‖c_g − out‖
    slack = (2 * gamma(Gr + Dv + 4) + 800 * U64 + 2 * FN_REL) * (a_g * dist).sum(-1)
    log_base = torch.where(torch.isfinite(cmax),
                           cm + torch.log(up(torch.linalg.vector_norm(vec, dim=-1) * (1 + 2 * gamma(Gr + Dv + 2))
                                              + slack)),
                           torch.full_like(cmax, -math.inf))
    e_ball = _best_prefix_ratio_log(torch.logaddexp(log_base, torch.logsumexp(logW_lo + torch.log(radius_r), -1)),
                                    log_Z_lo, logW_slack, dist + radius_r)
    rt = torch.where(out_tok, up(dist_tok[kv] + rounding[:, None]), torch.zeros_like(shat))
    e_tok = _best_prefix_ratio_log(torch.logaddexp(log_base, torch.logsumexp(log_xlo + torch.log(rt), -1)),
                                   log_Z_lo, log_slack, torch.where(out_tok, dist[:, g_of] + rt, torch.zeros_like(rt)))
    # log-domain evaluation: a relative allowance, +inf when it is not small (vashista_core.rounding)
    logs = torch.cat([log_zc[:, None], ub, lb, log_base[:, None]], dim=-1)
    big = torch.maximum(torch.maximum(w_max, (dist + radius_r).amax(-1)), torch.ones_like(w_max))
    mag = torch.where(torch.isfinite(logs), logs.abs(), torch.zeros_like(logs)).amax(-1) + math.log(M + 2.0) \
        + torch.log(big)
    err = 2.0 * (M + Gr + 8 + 2) * (mag + 4.0) * U64 * 1.01
    factor = torch.where(err > 1.0, torch.full_like(err, math.inf), up(torch.exp(err) * (1 + 2 * FN_REL)))
    none_out = ~out_tok.any(-1)
    zero = torch.zeros_like(e_mid)
    e_mid = torch.where(none_out, zero, e_mid)
    e_star, e_ball, e_tok = (torch.where(none_out, zero, torch.where(torch.isfinite(f) & torch.isfinite(factor),
                                                                     up(f * factor), torch.full_like(f, math.inf)))
                             for f in (e_star, e_ball, e_tok))
    e_mid, e_star, e_ball, e_tok = (up(f + rounding) for f in (e_mid, e_star, e_ball, e_tok))
    error = torch.minimum(torch.minimum(e_mid, e_star), torch.minimum(e_ball, e_tok))
    # a non-finite query, key or value reaches here as NaN: the certificate says nothing (∞, leakage 1)
    finite = torch.isfinite(out).all(-1) & torch.isfinite(Q).all(-1)
    error = torch.where(finite, error, torch.full_like(error, math.inf))
    leak, error = never_nan(leak, error)
    return TorchCertifiedStep(out=out, candidates=cand, certified_leakage=leak, error=error, error_middle=e_mid,
                              error_estar=e_star, error_ball=e_ball, error_token=e_tok, gap=gap,
                              weights=w)


# ---------------------------------------------------------------------------------------------- paged cache
class TorchPageSketchStore:
    """Quantized copies of the physical pages of a ``TorchPagedKVCache`` (one quantization group per
    page and KV head), kept current by the cache: its append calls ``update_pages`` for the pages it
    wrote, which are requantized from their stored keys in one vectorised pass (a new token can move a
    page's min/max and with them every code of the page). Attach with :func:`attach_sketch`.

    Layout: ``codes`` (pages, Hkv, S, ceil(D·bits/8)) uint8; ``offset``/``step`` (pages, Hkv, D).
    """

    def __init__(self, cache, bits: int, meta_dtype: str = "float16"):
        self.dt = _check_sketch_args(bits, meta_dtype)
        self.bits, self.meta_dtype = int(bits), meta_dtype
        N, H, S, D = cache.k_pages.shape
        dev = cache.device
        self.codes = torch.zeros((N, H, S, -(-D * bits // 8)), dtype=torch.uint8, device=dev)
        self.offset = torch.zeros((N, H, D), dtype=self.dt, device=dev)
        self.step = torch.zeros((N, H, D), dtype=self.dt, device=dev)
        self.version = cache.version          # the cache's append count this store has seen

    def update_pages(self, cache, pages: torch.Tensor, counts: torch.Tensor, check: bool = True) -> None:
        """Requantize physical ``pages`` (n,) holding ``counts`` (n,) valid tokens, all KV heads
        (``check=False``: no host synchronisation, see ``_quantize_groups``)."""
        if pages.numel() == 0:
            return
        p = pages.long()
        n, (H, S, D) = p.shape[0], cache.k_pages.shape[1:]
        K64 = cache.k_pages[p].double().reshape(n * H, 1, S, D)
        valid = (torch.arange(S, device=p.device)[None, :] < counts.long()[:, None])
        valid = valid[:, None, :].expand(n, H, S).reshape(n * H, 1, S)
        codes, offset, step = _quantize_groups(K64, valid, self.bits, self.dt, check)
        self.codes[p] = _pack(codes.view(n, H, S, D), self.bits)
        self.offset[p] = offset.view(n, H, D)
        self.step[p] = step.view(n, H, D)
        self.version = cache.version

    def finite(self, pages: torch.Tensor) -> bool:
        """Whether the metadata of physical ``pages`` is finite (one synchronisation): the check that
        unchecked updates (``update_pages(check=False)``) leave to the caller."""
        p = pages.long()
        return bool(torch.isfinite(self.offset[p]).all() & torch.isfinite(self.step[p]).all())

    def sequence_sketch(self, cache, seq_id: int) -> TorchKeySketch:
        """The sketch of one sequence, all KV heads, in logical token order (groups = pages): the ⌈T/S⌉
        groups of its T tokens. Pages reserved past the end (an engine reserves a sequence's pages for
        its whole decode) are not groups of it: their zero metadata taken as groups loosened the torch
        path's certificate (int4 pages of 16 on the tiny model: 0.92 vs 0.67 mean at budget 1/8)."""
        T = cache.length(seq_id)
        pages = torch.as_tensor(cache.page_table(seq_id), dtype=torch.long, device=self.codes.device)
        pages = pages[: -(-T // cache.page_size)]
        H = self.codes.shape[1]
        codes = self.codes[pages].permute(1, 0, 2, 3).reshape(H, -1, self.codes.shape[-1])[:, :T]
        return TorchKeySketch(bits=self.bits, group=cache.page_size, codes=codes.contiguous(),
                              offset=self.offset[pages].permute(1, 0, 2).contiguous(),
                              step=self.step[pages].permute(1, 0, 2).contiguous(), head_dim=cache.head_dim)


def check_current(store: TorchPageSketchStore, cache, bits: int,
                  then: str = "re-attach it (sketch.attach_sketch)") -> None:
    """Refuse a page sketch store that missed an append (its version lags the cache's): keys written
    without requantizing their pages would make the bounds unsound. ``then`` says what to do."""
    if getattr(store, "version", None) != cache.version:
        raise VashistaInputError("cache", f"the {bits}-bit page sketch is stale (it missed an append); {then}")


def attach_sketch(cache, bits: int, meta_dtype: str = "float16") -> TorchPageSketchStore:
    """Give ``cache`` a b-bit sketch of all its pages (kept current on append); idempotent per bits."""
    store = cache.sketches.get(bits)
    if store is None or store.meta_dtype != meta_dtype:
        store = TorchPageSketchStore(cache, bits, meta_dtype)
        S = cache.page_size
        pages, counts = [], []
        for sid in cache.seq_ids:
            T = cache.length(sid)
            for i, ph in enumerate(cache.page_table(sid)):
                pages.append(int(ph))
                counts.append(min(S, T - i * S))
        if pages:
            store.update_pages(cache, torch.tensor(pages, device=cache.device),
                               torch.tensor(counts, device=cache.device))
        cache.sketches[bits] = store
    return store


def scanned_pages(cache, seq_ids: list, Hq: int, device) -> torch.Tensor:
    """``StepResult.pages`` of certified mode: every logical page of each row's sequence (the sketch
    scan reads them all), (B, Hq, max pages) ascending, −1 padded."""
    n_pages = torch.tensor([cache.n_pages(s) for s in seq_ids], device=device)
    idx = torch.arange(int(n_pages.max()), device=device)
    pages = torch.where(idx[None, :] < n_pages[:, None], idx[None, :], -1)
    return pages[:, None, :].expand(-1, Hq, -1).clone()


def sketch_decode(q: torch.Tensor, cache, seq_ids, Kc: int, *, bits: int = 4, scale: float | None = None,
                  policy=None, compute_dtype=torch.float32, backend: str = "torch") -> StepResult:
    """Certified-mode decode of q (B, Hq, D) over ``cache`` sequences ``seq_ids``: the cache's sketch
    (attached on first use, then kept current on append) selects top-Kc per query head, which are
    rescored exactly and certified (``certified_decode``, per batch row: gathers the sequence).
    ``policy`` from ``vashista_core.policies``, run by ``vashista_core.policy_loop`` with a batch row
    as the unit: ReportOnly (default), DenseFallback(tol), Capped(tol, P_max, Kc_max) (only Kc is
    widened). Returns a ``StepResult`` (``path="torch"``): certificate tensors in float64,
    candidates/weights (B, Hq, max Kc_used) −1/0 padded, ``pages`` every page, ``P_used`` 0."""
    from . import validate as V
    from .dense import dense_decode

    q = V.tensor("q", q, ndim=3)
    V.same_device("q", q, cache.device)
    ids = [int(s) for s in V.index_tensor("seq_ids", seq_ids).tolist()]
    if len(ids) != q.shape[0]:
        raise VashistaInputError("seq_ids", f"has {len(ids)} ids but q has batch size {q.shape[0]}")
    policy = check_policy(policy)
    shortest = min(cache.length(s) for s in ids)
    Kc = positive_int("Kc", Kc, upper=shortest, upper_name="tokens in the shortest sequence")
    if isinstance(policy, Capped):
        policy.check_start(1, Kc)
    tol = getattr(policy, "tol", math.inf)
    store = attach_sketch(cache, bits)
    check_current(store, cache, bits)
    B, Hq, _ = q.shape
    f64 = dict(dtype=torch.float64, device=q.device)
    leak, err, gap = (torch.empty(B, Hq, **f64) for _ in range(3))
    out = torch.empty(B, Hq, cache.value_dim, **f64)
    Kc_used = torch.full((B, Hq), Kc, dtype=torch.int64, device=q.device)
    cands: list = [None] * B                     # cands[b][h]: the candidates of the attempt reported
    wts: list = [None] * B
    rows_kv: dict = {}                           # b -> (sketch, K, V) of its sequence, gathered once

    def attempt(rows, _P, kc):
        for b in rows:
            if b not in rows_kv:
                K, Vv = cache.gather(ids[b])
                rows_kv[b] = (store.sequence_sketch(cache, ids[b]), K.permute(1, 0, 2), Vv.permute(1, 0, 2))
            sk, K, Vv = rows_kv[b]
            # the store is current (version above): a sample of the keys checks it, as on the fused path
            w = certified_decode(q[b], K, Vv, sk, kc, scale=scale, compute_dtype=compute_dtype, backend=backend,
                                 check_keys=min(CHECK_SAMPLE, cache.length(ids[b])))
            # the row is returned in q's dtype: the certificate covers that cast
            w_out, w_err = cast_output(w.out, w.error, q.dtype)
            if cands[b] is None:                 # the first attempt covers every row
                out[b], leak[b], err[b], gap[b] = w_out, w.certified_leakage, w_err, w.gap
                cands[b], wts[b] = list(w.candidates), list(w.weights)
                continue
            redo = ~(err[b] <= tol)
            out[b] = torch.where(redo[:, None], w_out.double(), out[b])
            leak[b], gap[b] = torch.where(redo, w.certified_leakage, leak[b]), torch.where(redo, w.gap, gap[b])
            err[b] = torch.where(redo, w_err, err[b])
            Kc_used[b] = torch.where(redo, kc, Kc_used[b])
            cands[b] = [w.candidates[h] if bool(redo[h]) else cands[b][h] for h in range(Hq)]
            wts[b] = [w.weights[h] if bool(redo[h]) else wts[b][h] for h in range(Hq)]

    fell_back = torch.zeros((B, Hq), dtype=torch.bool, device=q.device)

    def dense(rows):
        fell_back.copy_(~(err <= tol))
        scale_ = 1.0 / math.sqrt(cache.head_dim) if scale is None else scale
        d = dense_decode(q[rows], cache, [ids[r] for r in rows], scale=scale_).double()
        out[rows] = torch.where(fell_back[rows][..., None], d, out[rows])

    # P is not routed in certified mode: the page limit 1 pins it, so only Kc widens
    run_policy(policy, list(range(B)), 1, Kc, attempt=attempt,
               uncertified=lambda: torch.nonzero(~(err <= tol).all(-1)).flatten().tolist(),
               limits=lambda b: (cache.length(ids[b]), 1), dense=dense)
    width = int(Kc_used.max())
    cand = torch.full((B, Hq, width), -1, dtype=torch.int64, device=q.device)
    weights = torch.zeros((B, Hq, width), dtype=torch.float32, device=q.device)
    for b in range(B):
        for h in range(Hq):
            c = cands[b][h]
            cand[b, h, : c.numel()] = c
            weights[b, h, : c.numel()] = wts[b][h].float()
    return StepResult(out=out.to(q.dtype), certified_leakage=leak, certified_error=err, gap=gap,
                      certified=err <= tol, fell_back=fell_back,
                      P_used=torch.zeros((B, Hq), dtype=torch.int64, device=q.device), Kc_used=Kc_used,
                      pages=scanned_pages(cache, ids, Hq, q.device), candidates=cand, weights=weights,
                      summaries_scored=max(cache.length(s) for s in ids), path="torch")


# ---------------------------------------------------------------------------------------------- fused path
def sketch_mismatch(K: torch.Tensor, codes: torch.Tensor, offset: torch.Tensor, step: torch.Tensor, *, bits: int,
                    group: int, sample: int = CHECK_SAMPLE) -> torch.Tensor:
    """0-dim bool tensor on K's device, True when a strided sample of ``sample`` tokens of keys K
    (H, T, D) is not within half a quantization step of the sketch's dequantization
    offset + step·code (what the sketch bounds assume): a stale or foreign sketch. Float64, no host
    synchronisation (the caller decides whether to read it). On CUDA one Triton launch
    (``kernels/sketch_check.py``, the same test); this torch form elsewhere. A sketch on another device
    than the keys is refused, naming the argument, before either form runs."""
    for name, t in (("codes", codes), ("offset", offset), ("step", step)):
        if t.device != K.device:
            raise VashistaInputError(name, f"is on {t.device}, the keys on {K.device}: the sketch must live "
                                           f"with the keys")
    if K.is_cuda:
        from .kernels.sketch_check import sketch_mismatch_flag
        return sketch_mismatch_flag(K, codes, offset, step, bits=bits, group=group, sample=sample)
    H, T, D = K.shape
    n = min(T, sample)
    tok = torch.div(torch.arange(n, device=K.device) * T, n, rounding_mode="floor")
    per, mask = 8 // bits, (1 << bits) - 1
    # gather the sampled tokens and groups first and widen only them (widening the whole step/offset
    # tensors to float64 moved ~2 GB per call at 128k tokens and 512 rows); unpack in the codes' uint8
    c = codes[:, tok]                                                               # (H, n, W) uint8
    parts = torch.stack([(c >> (i * bits)) & mask for i in range(per)], dim=-1).reshape(H, n, -1)[..., :D]
    g = tok // group
    st = step[:, g].double()
    kt = offset[:, g].double() + st * parts.double()
    k = K[:, tok].double()
    # codes are rounded to nearest: |k − k̃| ≤ step/2 (with float64 slack); NaN keys count as a mismatch
    return ~((k - kt).abs() <= st * (0.5 + 2.0 ** -20) + k.abs() * 2.0 ** -40).all()


def _check_fused_args(q, K, V, codes, offset, step, vmax, bits, group, Kc, scale, cap, sync, one_sided, block_tokens):
    """Every argument of :func:`fused_sketch_step`, named in the error (shapes, dtypes, devices, the
    kernels' shape rules); q is checked for NaN/inf only with ``sync`` (its rows are certified ∞ on the
    device otherwise). Returns (B, Hq, D, Hkv, T, Dv, scale, cap)."""
    from .kernels.sketch_scan import SUB
    q = tensor("q", q, ndim=3, check_finite=bool(sync))
    K = tensor("K", K, ndim=4, check_finite=False)
    V = tensor("V", V, ndim=4, check_finite=False)
    B, Hq, D = q.shape
    if K.shape[3] != D:
        raise VashistaInputError("q", f"has head dimension {D} but the keys K have {K.shape[3]}")
    if K.shape[0] != B:
        raise VashistaInputError("K", f"expected (B={B}, Hkv, T, D), got {tuple(K.shape)}")
    _, Hkv, T, _ = K.shape
    if V.shape[:3] != K.shape[:3]:
        raise VashistaInputError("V", f"expected (B, Hkv, T) = {tuple(K.shape[:3])} as K, got {tuple(V.shape)}")
    Dv = V.shape[3]
    if Hq % Hkv:
        raise VashistaInputError("q", f"has {Hq} query heads, not a multiple of the {Hkv} KV heads")
    for name, x in (("K", K), ("V", V), ("codes", codes), ("offset", offset), ("step", step), ("vmax", vmax)):
        if not isinstance(x, torch.Tensor):
            raise VashistaInputError(name, f"expected a torch.Tensor, got {type(x).__name__}")
        if x.device != q.device:
            raise VashistaInputError(name, f"is on {x.device} but q is on {q.device}")
    if isinstance(bits, bool) or bits not in (4, 8):
        raise VashistaInputError("bits", f"the fused step supports 4 or 8 bits, got {bits!r}")
    if D & (D - 1) or (D * bits) % 32:
        raise VashistaInputError("q", f"the fused step needs D a power of two with D·bits a multiple of 32, got D = {D}")
    if Dv & (Dv - 1):
        raise VashistaInputError("V", f"the fused step needs a power-of-two value dimension, got {Dv}")
    group = positive_int("group", group)
    if group % SUB or group % min(group, 64):
        raise VashistaInputError("group", f"must be a multiple of {SUB}, and of 64 when above 64; got {group}")
    if codes.dtype != torch.uint8 or tuple(codes.shape) != (B * Hkv, T, D * bits // 8):
        raise VashistaInputError("codes", f"expected uint8 ({B * Hkv}, {T}, {D * bits // 8}), got "
                                          f"{codes.dtype} {tuple(codes.shape)}")
    Gr = -(-T // group)
    for name, x in (("offset", offset), ("step", step)):
        if x.dtype not in (torch.float16, torch.float32) or tuple(x.shape) != (B * Hkv, Gr, D):
            raise VashistaInputError(name, f"expected float16/float32 ({B * Hkv}, {Gr}, {D}) for group {group}, got "
                                           f"{x.dtype} {tuple(x.shape)}")
    if not vmax.is_floating_point() or tuple(vmax.shape) != (B, Hkv):
        raise VashistaInputError("vmax", f"expected a float tensor ({B}, {Hkv}), got {vmax.dtype} {tuple(vmax.shape)}")
    if sync and not bool((vmax >= 0).all()):
        raise VashistaInputError("vmax", "must be >= 0 everywhere (a bound on every value norm; +inf allowed)")
    Kc = positive_int("Kc", Kc, upper=T, upper_name="tokens per sequence")
    cap = 4 * Kc if cap is None else positive_int("cap", cap)
    if cap < Kc:
        raise VashistaInputError("cap", f"must be >= Kc ({Kc}), got {cap}")
    scale = 1.0 / math.sqrt(D) if scale is None else float(positive_scalar("scale", scale))
    if not isinstance(one_sided, bool):
        raise VashistaInputError("one_sided", f"expected a bool, got {one_sided!r}")
    if block_tokens is not None:
        bt = positive_int("block_tokens", block_tokens)
        if bt % SUB or (group % bt and bt != group):
            raise VashistaInputError("block_tokens", f"must be a multiple of {SUB} dividing the group ({group}), got {bt}")
    return B, Hq, D, Hkv, T, Dv, scale, cap


def fused_sketch_step(q: torch.Tensor, K: torch.Tensor, V: torch.Tensor, codes: torch.Tensor, offset: torch.Tensor,
                      step: torch.Tensor, vmax: torch.Tensor, *, bits: int, group: int, Kc: int,
                      scale: float | None = None, cap: int | None = None, sync: bool = True,
                      one_sided: bool = True, block_tokens: int | None = None) -> StepResult:
    """Certified step for a batch of equal-length sequences, everything on the device:

    1. one Triton pass over the sketch (``kernels/sketch_scan.py``): ŝ, the per-token upper bounds
       ub and the largest ŝ of every 16 tokens;
    2. the top-Kc of ŝ under the tie rule (``selection.select_candidates``: one radix-select launch
       per layer, ``kernels/select_topk.py``, reading only the blocks whose maximum reaches τ, with
       ``cap`` slots per row, default 4·Kc; ``torch.topk`` where Triton does not run);
    3. exact float32 rescoring of the Kc candidates against ``K``, softmax, gather of ``V``, in one
       program per query head (``kernels/rescore.py``);
    4. the certificate L̂ = Z̄_out / (Z_C + Z̄_out) ≥ dense mass outside C, with Z̄_out ≥ Σ_{j∉C} e^{ub_j}
       in one read of ub (``kernels/row_lse.py``), Z_C ≤ Σ_C e^{s_j}, and the error bound
       L̂·(max‖v‖ + ‖o‖) (``vmax`` (B, Hkv) ≥ every value norm of the row's KV head).

    ``sync=True`` gives overflowed rows their exact top-Kc; ``sync=False`` never synchronises
    (CUDA-graph capturable) and reports them in ``overflow`` — their candidates are then the top-Kc of
    the first ``cap`` tokens ≥ τ, still *certified* (the certificate is computed for whatever set was
    chosen), but not necessarily the tie rule's top-Kc.

    Shapes: q (B, Hq, D); K (B, Hkv, T, D), V (B, Hkv, T, Dv) in the cache dtype; ``codes`` (B·Hkv,
    T, ⌈D·bits/8⌉) uint8 and ``offset``/``step`` (B·Hkv, ⌈T/group⌉, D) as produced by
    :func:`quantize_keys` on K viewed as (B·Hkv, T, D). The float32 sums of the certificate are
    rounded outward by γ_n(2⁻²⁴) factors (n the number of terms), valid for any summation order.
    """
    from .certificate import fused_certificate      # the fused path needs Triton; the torch path does not
    from .kernels.cert_tail import finite_rows
    from .kernels.rescore import rescore
    from .kernels.row_lse import excluded_terms
    from .kernels.sketch_scan import sketch_scan_bound, step_bounds

    B, Hq, D, Hkv, T, Dv, scale, cap = _check_fused_args(q, K, V, codes, offset, step, vmax, bits, group, Kc, scale,
                                                         cap, sync, one_sided, block_tokens)
    G = Hq // Hkv
    # a sketch of other keys (same shapes) would make the bounds unsound: a strided sample of the keys
    # must lie within half a quantization step of its dequantized sketch (sync: an error; no sync: the
    # step's certificate becomes ∞ on the device)
    foreign = sketch_mismatch(K.reshape(B * Hkv, T, D), codes, offset, step, bits=bits, group=group)
    if sync and bool(foreign):
        raise VashistaInputError("codes", "the sketch (codes/offset/step) was not built from these keys K "
                                          "(stale or foreign sketch); re-quantize K")
    # a non-finite query row is scanned as 0 (no NaN reaches the selection); its certificate is ∞
    q32, q_ok = finite_rows(q)
    q_ok = q_ok & ~foreign
    s, ub, smax = sketch_scan_bound(q32, codes, offset, step, bits=bits, group=group, scale=scale,
                                    one_sided=one_sided, block_tokens=block_tokens,
                                    bounds=step_bounds(one_sided))
    cand, overflow = select_candidates(s, smax, Kc, cap or 4 * Kc, sync)
    # exact part (``kernels/rescore.py``): rescoring, softmax, values, and m_C, z_C of the lower bounds
    out, m_c, zsum, eps = rescore(q32, K.contiguous(), V.contiguous(), cand, scale=scale)
    rows = torch.arange(B * Hq, device=q.device)
    vm = vmax.float().reshape(B * Hkv)[(rows // Hq) * Hkv + (rows % Hq) // G]
    # a negative or NaN max‖v‖ (a caller's bug, not checked without a synchronisation) voids the bound
    # and the output (set to NaN, with the non-finite queries' and a foreign sketch's, by the tail)
    # two-sided: ``ub`` is each group's slack, the bounds are derived from ŝ (``kernels/sketch_scan.py``)
    x, lse_kw = excluded_terms(s, ub, one_sided=one_sided, group=group, scale=scale)
    leak, error, gap = fused_certificate(x, cand, out, m_c, zsum, vm, eps, q_ok=q_ok & (vm >= 0), **lse_kw)
    return StepResult(out=out.view(B, Hq, Dv), candidates=cand.view(B, Hq, Kc),
                      certified_leakage=leak.view(B, Hq), certified_error=error.view(B, Hq),
                      overflow=overflow.view(B, Hq), gap=gap.view(B, Hq), path="fused")

