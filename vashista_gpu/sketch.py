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
dot) in one Triton kernel, ``sketch_scan_triton``; the selection and certificate stay in torch.
``vashista_gpu.decode.sparse_decode(..., router="sketch", bits=b)`` reaches this path through
:func:`sketch_to_decode_output`. :func:`fused_sketch_step` is the device-only step for batches of
equal-length sequences (benchmarks/sketch_decode_scaling.py): one Triton pass emits tie-rule keys and
per-token float32 upper bounds (``kernels/sketch_scan.py``), then topk, exact rescoring, softmax and a
float32 certificate rounded outward, with no host synchronisation (CUDA-graph capturable); its output
bound is the middle form L̂·(max‖v‖ + ‖o‖) plus the float32 rounding of o. Its paged twin (any
lengths, through the page table), planned once and replayable in a CUDA graph, with the policies, is
``sketch_plan.py`` (``fused_paged_sketch_step`` is re-exported here).

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

from .validate import positive_int, positive_scalar, tensor

try:  # the Triton scan is optional: the torch path works without triton
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover
    triton = None

U64 = 2.0 ** -53
_FN_REL = 16 * U64
_META = {"float16": torch.float16, "float32": torch.float32}
assert set(_META) == set(META_DTYPE_NAMES)


def _gamma(n: int, u: float = U64) -> float:
    return n * u / (1 - n * u)


def _up(x: torch.Tensor) -> torch.Tensor:
    return torch.nextafter(x, torch.full_like(x, math.inf))


def _down(x: torch.Tensor) -> torch.Tensor:
    return torch.nextafter(x, torch.full_like(x, -math.inf))


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
        """k̃ = offset + step ⊙ code, (Hkv, M, D) in ``dtype``."""
        M = self.codes.shape[1]
        g = torch.arange(M, device=self.codes.device) // self.group
        return self.offset.to(dtype)[:, g] + self.step.to(dtype)[:, g] * self.unpacked_codes().to(dtype)

    def box(self) -> tuple[torch.Tensor, torch.Tensor]:
        lo = self.offset.double()
        return lo, _up(lo + _up(self.levels * self.step.double()))


def _to_meta(x: torch.Tensor, dt, direction: str) -> torch.Tensor:
    y = x.to(dt)
    if not bool(torch.isfinite(y).all()):
        raise VashistaInputError("K", f"keys exceed the range of the {dt} metadata; use meta_dtype='float32'")
    bad = y.double() > x if direction == "down" else y.double() < x
    target = torch.full_like(y, -math.inf if direction == "down" else math.inf)
    return torch.where(bad, torch.nextafter(y, target), y)


def _quantize_groups(K64: torch.Tensor, valid: torch.Tensor, bits: int, dt):
    """Codes (X, Gr, g, D) uint8 (unpacked, 0 on invalid slots), offset and step (X, Gr, D) for keys
    K64 (X, Gr, g, D) float64 grouped along axis 2; ``valid`` (X, Gr, g) masks absent tokens. The same
    float64 operations as ``vashista_ref.sketch.quantize_keys`` (bit-identical results)."""
    L = (1 << bits) - 1
    v = valid[..., None]
    kmin = torch.where(v, K64, math.inf).amin(2)
    kmax = torch.where(v, K64, -math.inf).amax(2)
    empty = ~valid.any(2)[..., None].expand_as(kmin)
    kmin = torch.where(empty, torch.zeros_like(kmin), kmin)
    kmax = torch.where(empty, torch.zeros_like(kmax), kmax)
    offset = _to_meta(kmin, dt, "down")
    o64 = offset.double()
    # the smallest metadata step with o + L·step >= kmax exactly (reference: _covering_step)
    s = kmax - o64
    bp = s - kmax
    e = (kmax - (s - bp)) + (-o64 - bp)
    step = _to_meta(torch.where(s > 0, s / L, torch.zeros_like(s)), dt, "up")
    for _ in range(8):
        bad = ~(L * step.double() - s >= e)
        if not bool(bad.any()):
            break
        step = torch.where(bad, torch.nextafter(step, torch.full_like(step, math.inf)), step)
    if not bool(torch.isfinite(step).all()):
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
    pad = Gr * group - M
    K64 = torch.nn.functional.pad(K.double(), (0, 0, 0, pad)).view(H, Gr, group, D)
    valid = (torch.arange(Gr * group, device=K.device) < M).view(1, Gr, group).expand(H, Gr, group)
    codes, offset, step = _quantize_groups(K64, valid, bits, dt)
    codes = codes.view(H, Gr * group, D)[:, :M]
    return TorchKeySketch(bits=int(bits), group=group, codes=_pack(codes, bits).contiguous(), offset=offset,
                          step=step, head_dim=D)


if triton is not None:
    @triton.jit
    def _sketch_scan_kernel(q_ptr, codes_ptr, off_ptr, step_ptr, s_ptr, M, Gr, D, W, group,
                            G: tl.constexpr, BITS: tl.constexpr, BM: tl.constexpr, BD: tl.constexpr):
        """ŝ[h, j] = Σ_d q[h, d]·(offset + step·code)[kvh, j, d] in float32 for the G query heads of
        KV head kvh; one program per (KV head, BM tokens): the codes are loaded and unpacked once and
        serve all G heads, so every sketch byte is read once per step (GQA)."""
        kvh = tl.program_id(0)
        blk = tl.program_id(1)
        PER: tl.constexpr = 8 // BITS
        rows = blk * BM + tl.arange(0, BM)
        cols = tl.arange(0, BD)
        rmask = rows < M
        m2 = rmask[:, None] & (cols < D)[None, :]
        tok = (kvh * M + rows).to(tl.int64)
        byte = tl.load(codes_ptr + tok[:, None] * W + (cols // PER)[None, :], mask=m2, other=0)
        code = (byte.to(tl.int32) >> ((cols % PER) * BITS)[None, :]) & ((1 << BITS) - 1)
        meta = (kvh * Gr + rows // group).to(tl.int64)[:, None] * D + cols[None, :]
        o = tl.load(off_ptr + meta, mask=m2, other=0.0).to(tl.float32)
        st = tl.load(step_ptr + meta, mask=m2, other=0.0).to(tl.float32)
        k = o + st * code.to(tl.float32)
        for i in tl.static_range(G):
            h = kvh * G + i
            q = tl.load(q_ptr + h * D + cols, mask=cols < D, other=0.0)
            s = tl.sum(k * q[None, :], axis=1)
            tl.store(s_ptr + h * M + rows, s, mask=rmask)


def sketch_scan_triton(Q: torch.Tensor, sketch: TorchKeySketch, block_tokens: int = 64) -> torch.Tensor:
    """Sketch scores ŝ (Hq, M) in float32 by the Triton kernel (reads each sketch byte once per KV
    head, for all its G query heads); the torch path's compute_dtype=float32 quantity up to summation
    order."""
    if triton is None:
        raise VashistaInputError("backend", "triton is not installed")
    Hkv, M, W = sketch.codes.shape
    Hq, D = Q.shape
    q32 = Q.to(torch.float32).contiguous()
    out = torch.empty(Hq, M, dtype=torch.float32, device=Q.device)
    BD = triton.next_power_of_2(D)
    grid = (Hkv, triton.cdiv(M, block_tokens))
    _sketch_scan_kernel[grid](q32, sketch.codes.contiguous(), sketch.offset.contiguous(), sketch.step.contiguous(),
                              out, M, sketch.offset.shape[1], D, W, sketch.group,
                              G=Hq // Hkv, BITS=sketch.bits, BM=block_tokens, BD=BD)
    return out


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
    return {"highest": 2.0 ** -24, "high": 2.0 ** -10}.get(torch.get_float32_matmul_precision(), 2.0 ** -7)


def _lse_bound(x: torch.Tensor, upper: bool) -> torch.Tensor:
    """Outward-rounded log Σ exp over the last axis (−inf entries are absent terms)."""
    n = x.shape[-1]
    m = x.amax(-1, keepdim=True)
    m_safe = torch.where(torch.isfinite(m), m, torch.zeros_like(m))
    if upper:
        t = torch.exp(_up(x - m_safe)) * (1 + _FN_REL)
        s = _up(t.sum(-1) * (1 + _gamma(n + 1)))
        out = _up(m_safe[..., 0] + _up(torch.log(s) * (1 + _FN_REL)))
    else:
        t = torch.exp(_down(x - m_safe)) * (1 - _FN_REL)
        s = _down(t.sum(-1) * (1 - _gamma(n + 1)))
        ls = torch.log(s)
        out = _down(m_safe[..., 0] + _down(torch.where(ls < 0, ls * (1 + _FN_REL), ls * (1 - _FN_REL))))
    return torch.where(torch.isfinite(m[..., 0]), out, m[..., 0])


def _best_prefix_ratio_log(log_A, log_Z, log_u, w):
    """Row-wise max over x ∈ Π[0, u] of (A + Σ x w)/(Z + Σ x), from the logs of A, Z, u (−inf for
    0), in the log domain (runtime_certificate's E* maximiser: best prefix in decreasing w)."""
    order = torch.sort(-w, dim=-1, stable=True).indices
    lw = torch.log(torch.gather(w, -1, order))
    lu = torch.gather(log_u, -1, order)
    ninf = torch.full_like(log_A[:, None], -math.inf)
    log_num = torch.logaddexp(log_A[:, None], torch.cat([ninf, torch.logcumsumexp(lu + lw, -1)], -1))
    log_den = torch.logaddexp(log_Z[:, None], torch.cat([ninf, torch.logcumsumexp(lu, -1)], -1))
    ratio = torch.where(torch.isneginf(log_den), torch.zeros_like(log_den), torch.exp(log_num - log_den))
    return torch.nan_to_num(ratio, nan=0.0).amax(-1)


def _group_lse(x: torch.Tensor, g_of: torch.Tensor, Gr: int) -> torch.Tensor:
    """Per row and group: log Σ_{j in group} e^{x_j} (−inf for none)."""
    rows = x.shape[0]
    m = torch.full((rows, Gr), -math.inf, dtype=x.dtype, device=x.device)
    m = m.scatter_reduce(1, g_of.expand(rows, -1), x, "amax")
    shift = torch.where(torch.isfinite(m), m, torch.zeros_like(m))
    s = torch.zeros_like(m).index_add_(1, g_of, torch.exp(x - shift[:, g_of]))
    return torch.where(s > 0, shift + torch.log(s), torch.full_like(s, -math.inf))


def certified_decode(Q: torch.Tensor, K: torch.Tensor, V: torch.Tensor, sketch: TorchKeySketch, Kc: int, *,
                     scale: float | None = None, compute_dtype=torch.float32,
                     backend: str = "torch", one_sided: bool = True) -> TorchCertifiedStep:
    """Certified step for queries ``Q`` (Hq, D) over keys ``K`` (Hkv, M, D), values ``V`` (Hkv, M, Dv)
    and their sketch (module doc). ``compute_dtype`` float32 or float64 for the scan and rescoring;
    ``backend="triton"`` runs the sketch scan in the Triton kernel (float32 only); ``one_sided=False``
    bounds every token by its group's two-sided e_g (SPEC 3b; ``vashista_ref.sketch.sketch_bounds``)."""
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
    if compute_dtype not in (torch.float32, torch.float64):
        raise VashistaInputError("compute_dtype", f"must be torch.float32 or torch.float64, got {compute_dtype}")
    if backend not in ("torch", "triton"):
        raise VashistaInputError("backend", f"must be 'torch' or 'triton', got {backend!r}")
    if backend == "triton" and compute_dtype != torch.float32:
        raise VashistaInputError("compute_dtype", "the Triton scan computes in float32")
    Kc = positive_int("Kc", Kc)
    scale = 1.0 / math.sqrt(D) if scale is None else positive_scalar("scale", scale)
    dev = K.device
    G = Hq // Hkv
    S = sketch.group
    Gr = sketch.offset.shape[1]
    u_c = max(torch.finfo(compute_dtype).eps / 2, U64)
    u_scan = u_c if backend == "triton" else max(u_c, _matmul_roundoff(compute_dtype))
    q64 = Q.double()
    g_of = torch.arange(M, device=dev) // S
    kv = torch.arange(Hq, device=dev) // G

    # sketch scan: ŝ (Hq, M) in compute_dtype, bmm per KV head group (keys never repeated)
    if backend == "triton":
        shat = sketch_scan_triton(Q, sketch).double()
    else:
        kt = sketch.dequantize(compute_dtype)
        qg = Q.to(compute_dtype).view(Hkv, G, D).transpose(1, 2)
        shat = torch.bmm(kt, qg).permute(0, 2, 1).reshape(Hq, M).double()
    lo, hi = sketch.box()
    R = torch.maximum(lo.abs(), hi.abs())
    eta = 4.0 * (sketch.levels + 2) * U64
    per_channel = sketch.step.double() * (0.5 + eta) + 4.0 * _gamma(D + 2, u_scan) * R    # (Hkv, Gr, D)
    err_g = torch.bmm(per_channel, q64.abs().view(Hkv, G, D).transpose(1, 2)).permute(0, 2, 1).reshape(Hq, Gr)
    err_g = _up(err_g * (1.0 + 2.0 * _gamma(D + 3)))
    # one-sided per-token bounds (vashista_ref.sketch.sketch_bounds): codes 0 and 2^b − 1 err on one side
    codes = sketch.unpacked_codes()
    a = sketch.step.double()[:, g_of] * (0.5 + eta)                                       # (Hkv, M, D)
    bottom, top = codes == 0, codes == sketch.levels
    zero = torch.zeros_like(a)
    a0, aL, am = torch.where(bottom, a, zero), torch.where(top, a, zero), torch.where(bottom | top, zero, a)
    qa = q64.abs().view(Hkv, G, D).transpose(1, 2)
    qp = q64.clamp(min=0).view(Hkv, G, D).transpose(1, 2)
    qm = (-q64).clamp(min=0).view(Hkv, G, D).transpose(1, 2)
    per_tok = lambda A, v: torch.bmm(A, v).permute(0, 2, 1).reshape(Hq, M)  # noqa: E731
    rnd = per_tok((4.0 * _gamma(D + 2, u_scan) * R)[:, g_of], qa)
    grow = 1.0 + 2.0 * _gamma(D + 3)
    e_g = err_g[:, g_of]
    if one_sided:
        e_up = torch.minimum(_up((per_tok(a0, qp) + per_tok(aL, qm) + per_tok(am, qa) + rnd) * grow), e_g)
        e_dn = torch.minimum(_up((per_tok(a0, qm) + per_tok(aL, qp) + per_tok(am, qa) + rnd) * grow), e_g)
    else:
        e_up, e_dn = e_g, e_g

    # candidates: top-Kc by ŝ, ties to the lower index (stable sort); exact rescoring
    kc = min(Kc, M)
    cand = torch.sort(torch.sort(shat, dim=-1, descending=True, stable=True).indices[:, :kc], dim=-1).values
    Kh = K[kv]                                                                            # (Hq, M, D)
    Kcand = torch.gather(Kh, 1, cand[..., None].expand(Hq, kc, D))
    raw = (Kcand.to(compute_dtype) * Q.to(compute_dtype)[:, None, :]).sum(-1).double()
    exact_err = _up(4 * _gamma(D + 2, u_c) * (Kcand.double().abs() * q64.abs()[:, None, :]).sum(-1))
    lb_c = _down(_down(raw - exact_err) * scale)
    s_c = raw * scale
    w = torch.softmax(s_c, dim=-1)
    Vh = V.double()[kv]
    Dv = V.shape[-1]
    out = torch.bmm(w[:, None, :], torch.gather(Vh, 1, cand[..., None].expand(Hq, kc, Dv)))[:, 0]

    # certificate
    is_c = torch.zeros(Hq, M, dtype=torch.bool, device=dev)
    is_c.scatter_(1, cand, True)
    ninf = torch.full_like(shat, -math.inf)
    ub = torch.where(is_c, ninf, _up(_up(shat + e_up) * scale))
    lb = torch.where(is_c, ninf, _down(_down(shat - e_dn) * scale))
    log_zc = _lse_bound(lb_c, upper=False)
    log_zout = _lse_bound(ub, upper=True)
    d = _down(log_zc - log_zout)
    e = torch.exp(d) * (1 - _FN_REL)
    leak = _up(1.0 / _down(1.0 + e))
    leak = torch.clamp(_up(leak * (1 + 4 * _gamma(M + 16))), max=1.0)
    leak = torch.where(torch.isneginf(log_zout), torch.zeros_like(leak), leak)
    gap = lb_c.amax(-1) - ub.amax(-1)

    # value summaries per group (a cache keeps them per page), as vashista_ref.sketch.group_value_stats
    V64 = V.double()
    counts = torch.bincount(g_of, minlength=Gr).double()
    centre = torch.zeros(Hkv, Gr, Dv, dtype=torch.float64, device=dev).index_add_(1, g_of, V64) / counts[None, :, None]
    grow_v = 1 + 2 * _gamma(Dv + 2)
    norms = torch.linalg.vector_norm(V64, dim=-1)
    dist_tok = _up(torch.linalg.vector_norm(V64 - centre[:, g_of], dim=-1) * grow_v)         # (Hkv, M)
    neg = torch.full((Hkv, Gr), -math.inf, dtype=torch.float64, device=dev)
    vmax = _up(neg.scatter_reduce(1, g_of.expand(Hkv, M), norms, "amax") * grow_v)
    radius = neg.scatter_reduce(1, g_of.expand(Hkv, M), dist_tok, "amax")

    o_norm = torch.linalg.vector_norm(out, dim=-1)
    vmax_all = vmax.amax(-1)[kv]
    rho = 8.0 * (M + kc + 8) * U64
    rounding = rho * vmax_all
    # log domain throughout (as the reference: shifting by the largest mass can flush the rest to 0)
    out_tok = ~is_c
    fn = math.log1p(_FN_REL)
    log_xlo, log_xhi = lb - fn, ub + fn                                                   # −inf on C
    log_slack = torch.where(out_tok, log_xhi + torch.log1p(-torch.exp(log_xlo - log_xhi)), ninf)
    log_Z_lo = torch.logaddexp(log_zc - fn, torch.logsumexp(log_xlo, -1))
    w_tok = torch.where(out_tok, vmax[kv][:, g_of] + o_norm[:, None], torch.zeros_like(shat))
    e_mid = leak * w_tok.amax(-1)
    e_star = _best_prefix_ratio_log(torch.logsumexp(log_xlo + torch.log(w_tok), -1), log_Z_lo, log_slack, w_tok)
    logW_lo = _group_lse(log_xlo, g_of, Gr)
    logW_slack = _group_lse(log_slack, g_of, Gr)
    dist = _up(torch.linalg.vector_norm(centre[kv] - out[:, None, :], dim=-1) * (1 + 2 * _gamma(Dv + 2)))
    cmax = logW_lo.amax(-1)
    cm = torch.where(torch.isfinite(cmax), cmax, torch.zeros_like(cmax))
    vec = torch.bmm(torch.exp(logW_lo - cm[:, None])[:, None, :], centre[kv] - out[:, None, :])[:, 0]
    log_base = torch.where(torch.isfinite(cmax),
                           cm + torch.log(torch.linalg.vector_norm(vec, dim=-1) * (1 + 2 * _gamma(Gr + Dv + 2))),
                           torch.full_like(cmax, -math.inf))
    e_ball = _best_prefix_ratio_log(torch.logaddexp(log_base, torch.logsumexp(logW_lo + torch.log(radius[kv]), -1)),
                                    log_Z_lo, logW_slack, dist + radius[kv])
    rt = torch.where(out_tok, dist_tok[kv], torch.zeros_like(shat))
    e_tok = _best_prefix_ratio_log(torch.logaddexp(log_base, torch.logsumexp(log_xlo + torch.log(rt), -1)),
                                   log_Z_lo, log_slack, torch.where(out_tok, dist[:, g_of] + rt, torch.zeros_like(rt)))
    logs = torch.cat([log_zc[:, None], ub, lb], dim=-1)
    mag = torch.where(torch.isfinite(logs), logs.abs(), torch.zeros_like(logs)).amax(-1) + math.log(M + 2.0) + 2.0
    grow = (1 + rho) * (1 + 4 * _gamma(M + 8)) * (1 + 64 * U64 * mag)
    none_out = ~out_tok.any(-1)
    forms = []
    for f in (e_mid, e_star, e_ball, e_tok):
        f = torch.where(none_out, torch.zeros_like(f), f * grow) + rounding
        forms.append(f)
    e_mid, e_star, e_ball, e_tok = forms
    error = torch.minimum(torch.minimum(e_mid, e_star), torch.minimum(e_ball, e_tok))
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

    def update_pages(self, cache, pages: torch.Tensor, counts: torch.Tensor) -> None:
        """Requantize physical ``pages`` (n,) holding ``counts`` (n,) valid tokens, all KV heads."""
        if pages.numel() == 0:
            return
        p = pages.long()
        n, (H, S, D) = p.shape[0], cache.k_pages.shape[1:]
        K64 = cache.k_pages[p].double().reshape(n * H, 1, S, D)
        valid = (torch.arange(S, device=p.device)[None, :] < counts.long()[:, None])
        valid = valid[:, None, :].expand(n, H, S).reshape(n * H, 1, S)
        codes, offset, step = _quantize_groups(K64, valid, self.bits, self.dt)
        self.codes[p] = _pack(codes.view(n, H, S, D), self.bits)
        self.offset[p] = offset.view(n, H, D)
        self.step[p] = step.view(n, H, D)

    def sequence_sketch(self, cache, seq_id: int) -> TorchKeySketch:
        """The sketch of one sequence, all KV heads, in logical token order (groups = pages)."""
        T = cache.length(seq_id)
        pages = torch.as_tensor(cache.page_table(seq_id), dtype=torch.long, device=self.codes.device)
        H = self.codes.shape[1]
        codes = self.codes[pages].permute(1, 0, 2, 3).reshape(H, -1, self.codes.shape[-1])[:, :T]
        return TorchKeySketch(bits=self.bits, group=cache.page_size, codes=codes.contiguous(),
                              offset=self.offset[pages].permute(1, 0, 2).contiguous(),
                              step=self.step[pages].permute(1, 0, 2).contiguous(), head_dim=cache.head_dim)


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


@dataclass(frozen=True)
class SketchDecodeOutput:
    """(B, Hq) tensors unless noted: ``out`` (B, Hq, Dv) in q's dtype; ``candidates[b][h]`` (kc,) of
    the attempt reported for that head; ``certified`` = certified_error <= the policy's tol;
    ``fell_back`` marks queries recomputed densely."""
    out: torch.Tensor
    certified_leakage: torch.Tensor
    certified_error: torch.Tensor
    gap: torch.Tensor
    certified: torch.Tensor
    fell_back: torch.Tensor
    Kc_used: torch.Tensor
    candidates: list
    weights: list | None = None             # weights[b][h] (kc,) float64, aligned with candidates[b][h]


def sketch_decode(q: torch.Tensor, cache, seq_ids, Kc: int, *, bits: int = 4, scale: float | None = None,
                  policy=None, compute_dtype=torch.float32, backend: str = "torch") -> SketchDecodeOutput:
    """Certified-mode decode of q (B, Hq, D) over ``cache`` sequences ``seq_ids``: the cache's sketch
    (attached on first use, then kept current on append) selects top-Kc per query head, which are
    rescored exactly and certified (``certified_decode``). ``policy`` from ``vashista_ref.policies``:
    ReportOnly (default), DenseFallback(tol), Capped(tol, P_max, Kc_max) (only Kc is widened)."""
    from vashista_core.policies import Capped, DenseFallback, ReportOnly

    from . import validate as V
    from .dense import dense_decode

    q = V.tensor("q", q, ndim=3)
    V.same_device("q", q, cache.device)
    ids = [int(s) for s in V.index_tensor("seq_ids", seq_ids).tolist()]
    if len(ids) != q.shape[0]:
        raise VashistaInputError("seq_ids", f"has {len(ids)} ids but q has batch size {q.shape[0]}")
    policy = ReportOnly() if policy is None else policy
    if not isinstance(policy, (ReportOnly, DenseFallback, Capped)):
        raise VashistaInputError("policy", f"expected ReportOnly, DenseFallback or Capped, got {policy!r}")
    shortest = min(cache.length(s) for s in ids)
    Kc = positive_int("Kc", Kc, upper=shortest, upper_name="tokens in the shortest sequence")
    if isinstance(policy, Capped):
        policy.check_start(1, Kc)
    tol = getattr(policy, "tol", math.inf)
    store = attach_sketch(cache, bits)
    B, Hq, _ = q.shape
    f64 = dict(dtype=torch.float64, device=q.device)
    leak, err, gap = (torch.empty(B, Hq, **f64) for _ in range(3))
    out = torch.empty(B, Hq, cache.value_dim, **f64)
    Kc_used = torch.full((B, Hq), Kc, dtype=torch.int64, device=q.device)
    cands, wts = [], []
    for b, sid in enumerate(ids):
        sk = store.sequence_sketch(cache, sid)
        K, Vv = cache.gather(sid)
        K, Vv = K.permute(1, 0, 2), Vv.permute(1, 0, 2)
        kc = Kc
        r = certified_decode(q[b], K, Vv, sk, kc, scale=scale, compute_dtype=compute_dtype, backend=backend)
        o, L, E, Gp = r.out, r.certified_leakage, r.error, r.gap
        C = list(r.candidates)                                  # per head: the attempt that is reported
        Wt = list(r.weights)
        while isinstance(policy, Capped) and not bool((E <= tol).all()):
            nxt = min(2 * kc, policy.Kc_max, cache.length(sid))
            if nxt == kc:
                break
            kc = nxt
            w = certified_decode(q[b], K, Vv, sk, kc, scale=scale, compute_dtype=compute_dtype, backend=backend)
            redo = ~(E <= tol)
            o = torch.where(redo[:, None], w.out, o)
            L, Gp = torch.where(redo, w.certified_leakage, L), torch.where(redo, w.gap, Gp)
            E = torch.where(redo, w.error, E)
            Kc_used[b] = torch.where(redo, kc, Kc_used[b])
            C = [w.candidates[h] if bool(redo[h]) else C[h] for h in range(Hq)]
            Wt = [w.weights[h] if bool(redo[h]) else Wt[h] for h in range(Hq)]
        out[b], leak[b], err[b], gap[b] = o, L, E, Gp
        cands.append(C)
        wts.append(Wt)
    certified = err <= tol
    fell_back = torch.zeros_like(certified)
    if not isinstance(policy, ReportOnly) and not bool(certified.all()):
        fell_back = ~certified
        rows = torch.nonzero(fell_back.any(-1)).flatten().tolist()
        scale_ = 1.0 / math.sqrt(cache.head_dim) if scale is None else scale
        dense = dense_decode(q[rows], cache, [ids[r] for r in rows], scale=scale_).double()
        out[rows] = torch.where(fell_back[rows][..., None], dense, out[rows])
    return SketchDecodeOutput(out=out.to(q.dtype), certified_leakage=leak, certified_error=err, gap=gap,
                              certified=certified, fell_back=fell_back, Kc_used=Kc_used, candidates=cands,
                              weights=wts)


def sketch_to_decode_output(q: torch.Tensor, cache, seq_ids, Kc: int, *, bits: int = 4, scale: float | None = None,
                            policy=None, backend: str = "auto"):
    """``vashista_gpu.decode.sparse_decode(..., router="sketch", bits=b)`` as a ``DecodeOutput``, by
    one of two paths, named in its ``path`` field:

    * ``"fused"`` — the Triton backend (CUDA, or ``backend="triton"`` under ``TRITON_INTERPRET=1``)
      on a cache the kernels support (page size a multiple of 16, D a power of two, D·bits a multiple
      of 32; ``sketch_plan.fused_shapes_ok``): ``sketch_plan.paged_certified_decode``, which reads the
      page sketch through the page table and only the candidates' key/value rows; its certified error
      is the middle form L̂·(max‖v‖ + ‖o‖);
    * ``"torch"`` — otherwise: :func:`sketch_decode` in float32 (per row: gathers the sequence; the
      Triton scan when the backend is Triton), certified error the smallest of four forms.

    ``candidates``/``weights`` (B, Hq, max Kc_used) −1/0 padded; ``pages`` every logical page of the
    row (certified mode scans them all), −1 padded; ``P_used`` 0 (no page routing);
    ``summaries_scored`` the token sketches scored per query head (the longest row's length)."""
    from .decode import DecodeOutput
    from .paged_cache import resolve_backend
    from .sketch_plan import fused_shapes_ok, paged_certified_decode

    ids = [int(s) for s in torch.as_tensor(seq_ids).flatten().tolist()]
    be = resolve_backend(backend, q.device)
    if be == "triton" and triton is not None and bits in (4, 8) and fused_shapes_ok(cache, bits) is None:
        return paged_certified_decode(q, cache, ids, Kc, bits=bits, scale=scale, policy=policy)
    r = sketch_decode(q, cache, ids, Kc, bits=bits, scale=scale, policy=policy, backend=be)
    B, Hq = q.shape[:2]
    width = int(r.Kc_used.max())
    cand = torch.full((B, Hq, width), -1, dtype=torch.int64, device=q.device)
    wts = torch.zeros((B, Hq, width), dtype=torch.float32, device=q.device)
    for b in range(B):
        for h in range(Hq):
            c = r.candidates[b][h]
            cand[b, h, : c.numel()] = c
            wts[b, h, : c.numel()] = r.weights[b][h].float()
    n_pages = [cache.n_pages(s) for s in ids]
    pages = torch.full((B, Hq, max(n_pages)), -1, dtype=torch.int64, device=q.device)
    for b, n in enumerate(n_pages):
        pages[b, :, :n] = torch.arange(n, device=q.device)
    return DecodeOutput(out=r.out, certified_leakage=r.certified_leakage, certified_error=r.certified_error,
                        gap=r.gap, certified=r.certified, fell_back=r.fell_back,
                        P_used=torch.zeros((B, Hq), dtype=torch.int64, device=q.device), Kc_used=r.Kc_used,
                        pages=pages, candidates=cand, weights=wts,
                        summaries_scored=max(cache.length(s) for s in ids), path="torch")


# ---------------------------------------------------------------------------------------------- fused path
@dataclass(frozen=True)
class FusedCertifiedStep:
    """(B, Hq) certificate tensors (float32, rounded outward), ``out`` (B, Hq, Dv) float32,
    ``candidates`` (B, Hq, Kc) ascending logical indices; ``overflow`` (B, Hq) bool marks rows whose
    threshold selection overflowed its buffer (always False when the step synchronised and
    reselected them; see :func:`fused_sketch_step`); ``gap`` (B, Hq) the largest candidate lower
    bound minus the largest non-candidate upper bound (the torch path's Δ̂)."""
    out: torch.Tensor
    candidates: torch.Tensor
    certified_leakage: torch.Tensor
    certified_error: torch.Tensor
    overflow: torch.Tensor
    gap: torch.Tensor | None = None


def _f32_up(x):
    return torch.nextafter(x, torch.full_like(x, math.inf))


def _select_candidates(s: torch.Tensor, bmax: torch.Tensor, Kc: int, cap: int, sync: bool, short_window: int = 0):
    """Top-Kc logical indices (ascending) of each row of ŝ under the tie rule, and the overflow mask.

    ``bmax`` holds the maxima of ŝ over any partition of each row into blocks (the scan gives one per
    16 tokens). Threshold path (``kernels/select_above.py``) when there are at least 8·Kc blocks:
    τ = the Kc-th largest block maximum, the tokens with ŝ ≥ τ compacted into ``cap`` slots, ``topk`` of those.
    Rows with more than ``cap`` such tokens (many ties, or a flat row) are reselected from all keys
    when ``sync`` (one host synchronisation per step), else only flagged.

    Rows padded with −inf past their end (a paged batch): a row with fewer than Kc finite block maxima
    has τ = −inf, which would admit its padding. When ``short_window`` > 0 (the caller knows such rows
    may exist and that their tokens all lie in the first ``short_window`` columns), those rows are
    selected by a ``topk`` over that window instead — decided on the device, no synchronisation."""
    from .kernels.select_above import select_above
    from .selection import INVALID_KEY, key_index, tie_keys

    R, T = s.shape
    idx = torch.arange(T, device=s.device)
    NB = bmax.shape[1]
    if NB < 8 * Kc:        # too few blocks for a selective threshold (the count would overflow): full topk
        top = torch.topk(tie_keys(s, idx), Kc, dim=-1, sorted=False).values
        return torch.sort(key_index(top), dim=-1).values, torch.zeros(R, dtype=torch.bool, device=s.device)
    # (no pooling of the maxima to a smaller topk: scores within a quantization group are correlated
    # through the shared offsets, so the Kc-th largest maximum of 64-token blocks let whole groups
    # through and overflowed 29 of 512 rows at 128k on an H200, where 16-token maxima overflowed none)
    tau = torch.topk(bmax, Kc, dim=-1, sorted=False).values.amin(-1).contiguous()
    keys = torch.full((R, cap), INVALID_KEY, dtype=torch.int64, device=s.device)
    count = torch.zeros(R, dtype=torch.int32, device=s.device)
    select_above(s, tau, keys, count)
    cand = torch.sort(key_index(torch.topk(keys, Kc, dim=-1, sorted=False).values), dim=-1).values
    overflow = count > cap
    if short_window:
        short = torch.isneginf(tau)
        w = min(short_window, T)
        top = torch.topk(tie_keys(s[:, :w], idx[:w]), Kc, dim=-1, sorted=False).values
        cand = torch.where(short[:, None], torch.sort(key_index(top), dim=-1).values, cand)
        overflow = overflow & ~short
    if sync and bool(overflow.any()):
        rows = overflow.nonzero()[:, 0]
        top = torch.topk(tie_keys(s[rows], idx), Kc, dim=-1, sorted=False).values
        cand[rows] = torch.sort(key_index(top), dim=-1).values
        overflow = torch.zeros_like(overflow)
    return cand, overflow


def _certificate(ub: torch.Tensor, cand: torch.Tensor, out: torch.Tensor, m_c: torch.Tensor, zsum: torch.Tensor,
                 vm: torch.Tensor, eps: torch.Tensor):
    """(L̂, error bound, gap) per row from the scan's bounds ``ub`` (R, T) (overwritten: the candidates' entries
    become −inf), the candidates ``cand`` (R, Kc), ``out`` (R, Dv) and the rescoring's m_C, z_C sums
    (``kernels/rescore.py``); ``vm`` (R,) ≥ every value norm of the row; ``eps`` (R,) the rescoring's
    bound on its exponents' error. All float32, outward: L̂ = Z̄_out / (Z_C + Z̄_out) ≥ dense mass
    outside C, error ≤ L̂·(max‖v‖ + ‖o_C‖) + (e^{2ε} − 1)·max‖v‖ + o's own rounding, with o_C the exact
    softmax over C and ‖o_C‖ ≤ ‖o‖ + (e^{2ε} − 1)·max‖v‖."""
    from .kernels.row_lse import row_lse_upper
    from .kernels.sketch_scan import U32, _gamma

    Kc, Dv = cand.shape[1], out.shape[1]
    # Z̄_out from the bounds of the non-candidates (ub is the step's own buffer)
    ub.scatter_(1, cand, -math.inf)
    m_o, z_out = row_lse_upper(ub)
    # Δ̂ = max_C lb − max_out ub, rounded down (+inf when every token is a candidate)
    gap = torch.nextafter(m_c - m_o, torch.full_like(m_c, -math.inf))
    out_any = torch.isfinite(m_o)
    m_o = torch.where(out_any, m_o, torch.zeros_like(m_o))
    z_out = torch.where(out_any, z_out, torch.ones_like(z_out))
    # Z_C from below: x − m is rounded within u·|x − m|, so the kernel widened the exponent by
    # 2u·|x − m| away from 0; the device exponential is within 16u, the sum within γ_Kc
    z_c = zsum * ((1 - 16 * U32) * (1 - _gamma(Kc + 2, U32)))
    # L̂ = 1/(1 + e^d) with d = log(Z_C/Z̄_out) = (m_c − m_o) + log z_c − log z_out, lowered by the
    # rounding of its three operations and the two logs (each within a few ulp of its magnitude)
    dm, lc, lo = m_c - m_o, torch.log(z_c), torch.log(z_out)
    d = dm + lc - lo
    d = d - (dm.abs() + lc.abs() + lo.abs() + d.abs()) * (8 * U32) - 8 * U32
    leak = torch.exp(-torch.nn.functional.softplus(d))       # 1/(1 + e^d) without overflow
    # softplus/exp within a few ulp; underflow is covered by the floor (far above exp's subnormal error)
    leak = (leak * (1 + 16 * U32) + (d.abs() * (16 * U32)) * leak).clamp(min=1e-37, max=1.0)
    leak = torch.where(out_any, leak, torch.zeros_like(leak))
    # the weights' error from the exponents' (e^{2ε} − 1, rounded up) and the float32 rounding of o
    # itself (softmax and a Kc-term weighted sum of values ≤ vmax)
    w_err = vm * torch.expm1(2 * eps) * (1 + 16 * U32)
    error = _f32_up((vm + torch.linalg.vector_norm(out, dim=-1) + w_err) * leak * (1 + (Dv + 8) * 2 * U32)
                    + w_err + vm * ((2 * Kc + Dv + 16) * 4 * U32))
    return leak, error, gap


def fused_sketch_step(q: torch.Tensor, K: torch.Tensor, V: torch.Tensor, codes: torch.Tensor, offset: torch.Tensor,
                      step: torch.Tensor, vmax: torch.Tensor, *, bits: int, group: int, Kc: int,
                      scale: float | None = None, cap: int | None = None, sync: bool = True,
                      one_sided: bool = True, block_tokens: int | None = None) -> FusedCertifiedStep:
    """Certified step for a batch of equal-length sequences, everything on the device:

    1. one Triton pass over the sketch (``kernels/sketch_scan.py``): ŝ, the per-token upper bounds
       ub and the largest ŝ of every 16 tokens;
    2. the top-Kc of ŝ under the tie rule by threshold compaction (``kernels/select_above.py``,
       ``cap`` slots per row, default 4·Kc) and a ``topk`` of the few survivors;
    3. exact float32 rescoring of the Kc candidates against ``K``, softmax, gather of ``V``, in one
       program per query head (``kernels/rescore.py``);
    4. the certificate L̂ = Z̄_out / (Z_C + Z̄_out) ≥ dense mass outside C, with Z̄_out ≥ Σ_{j∉C} e^{ub_j}
       in one read of ub (``kernels/row_lse.py``), Z_C ≤ Σ_C e^{s_j}, and the error bound
       L̂·(max‖v‖ + ‖o‖) (``vmax`` (B, Hkv) ≥ every value norm of the row's KV head).

    ``sync=True`` checks for overflowed rows (one host synchronisation) and reselects them from all
    keys; ``sync=False`` never synchronises (CUDA-graph capturable) and reports them in ``overflow``
    — their candidates are then a subset chosen by the buffer, still *certified* (the certificate is
    computed for whatever set was chosen), but not the tie rule's top-Kc.

    Shapes: q (B, Hq, D); K (B, Hkv, T, D), V (B, Hkv, T, Dv) in the cache dtype; ``codes`` (B·Hkv,
    T, ⌈D·bits/8⌉) uint8 and ``offset``/``step`` (B·Hkv, ⌈T/group⌉, D) as produced by
    :func:`quantize_keys` on K viewed as (B·Hkv, T, D). The float32 sums of the certificate are
    rounded outward by γ_n(2⁻²⁴) factors (n the number of terms), valid for any summation order.
    """
    from .kernels.rescore import rescore
    from .kernels.sketch_scan import sketch_scan_bound

    B, Hq, D = q.shape
    _, Hkv, T, Dv = V.shape
    G = Hq // Hkv
    scale = 1.0 / math.sqrt(D) if scale is None else float(scale)
    q32 = q.float().reshape(B * Hq, D).contiguous()
    s, ub, smax = sketch_scan_bound(q32, codes, offset, step, bits=bits, group=group, scale=scale,
                                    one_sided=one_sided, block_tokens=block_tokens)
    cand, overflow = _select_candidates(s, smax, Kc, cap or 4 * Kc, sync)
    # exact part (``kernels/rescore.py``): rescoring, softmax, values, and m_C, z_C of the lower bounds
    out, m_c, zsum, eps = rescore(q32, K.contiguous(), V.contiguous(), cand, scale=scale)
    rows = torch.arange(B * Hq, device=q.device)
    vm = vmax.float().reshape(B * Hkv)[(rows // Hq) * Hkv + (rows % Hq) // G]
    leak, error, gap = _certificate(ub, cand, out, m_c, zsum, vm, eps)
    return FusedCertifiedStep(out=out.view(B, Hq, Dv), candidates=cand.view(B, Hq, Kc),
                              certified_leakage=leak.view(B, Hq), certified_error=error.view(B, Hq),
                              overflow=overflow.view(B, Hq), gap=gap.view(B, Hq))


def __getattr__(name):
    """The paged fused step lives in ``sketch_plan.py`` (plan/launch split); re-exported here lazily
    (an import at the top would be circular)."""
    if name in ("fused_paged_sketch_step", "plan_sketch_step", "run_sketch_plan", "paged_certified_decode"):
        from . import sketch_plan
        return getattr(sketch_plan, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
