"""Triton kernels of the certified step's certificate tail (``certificate.fused_certificate``), so that
the tail is three launches — the −∞ scatter of the candidates into the bounds, the chunked
log-sum-exp of the bounds (``row_lse.py``), and :func:`cert_finish` — instead of ~95 small torch ops
(~2 µs each inside a CUDA graph, ~0.2 ms per layer), plus :func:`finite_rows`, the query's finiteness
check, in one launch instead of six.

``cert_finish``: one program per row r (a query head), float32, every bound rounded outward
(docs/ROUNDING.md §4.4 derives each constant; the constants are computed on the host by
:func:`finish_constants`, rounded outward to float32):

    (M, Z)  = combine_chunks(bounds' chunks)                   Z·e^M ≥ Z̄_out = Σ_{j∉C} e^{ub_j}
    Δ̂       = down(m_C − M)                                    (+∞ when every token is a candidate)
    z_C     = zsum·ZC                                          ≤ Σ_C e^{lb_j − m_C}
    d       = (m_C − M) + log z_C − log Z, lowered by D_REL·(|m_C − M| + |log z_C| + |log Z| + |d|) + D_ABS
    L̂       = min(1, max(10⁻³⁷, ℓ·L_FAC + |d|·L_DFAC·ℓ)),   ℓ = 1/(1 + e^d)      (0 when M = −∞)
    E_C     = max‖v‖·(e^{2ε} − 1)·WE
    error   = up((max‖v‖ + ‖o‖·ON + E_C)·L̂·E_FAC + E_C + max‖v‖·E_ABS + 4·2⁻¹²⁶)

A row is uncertified — leakage 1, error +∞ — when its query was not finite (``q_ok`` False), its
output is not finite, max‖v‖ is negative or NaN, the bounds held +∞ or NaN (M), or anything above
came out NaN. With ``poison`` the output rows of ``q_ok`` False are overwritten with NaN (the step's
contract: a non-finite query gives a non-finite output).

exp and log are the accurate ones (``libm.py``); e^y − 1 is a degree-10 Taylor polynomial for
y < 1/2 (all terms positive, truncation < 10⁻¹⁰ relative) and e^y − 1 above (within 24u either way).
"""
from __future__ import annotations

import math

import triton
import triton.language as tl

from vashista_core.rounding import U32, gamma

from .libm import exp_acc, f32_down, f32_up, log_acc, next_down, next_up
from .row_lse import BLOCK, combine_chunks, lse_factor, lse_floor

__all__ = ["cert_finish", "finish_constants", "finite_rows", "zc_lowering"]


@triton.jit
def _expm1_pos(y):
    """e^y − 1 for y ≥ 0 (+∞ and NaN propagate), within 24u."""
    ys = tl.minimum(y, 0.5)
    p = 1.0 + ys * 0.1
    p = 1.0 + ys * 0.1111111119389534 * p
    p = 1.0 + ys * 0.125 * p
    p = 1.0 + ys * 0.1428571492433548 * p
    p = 1.0 + ys * 0.1666666716337204 * p
    p = 1.0 + ys * 0.2 * p
    p = 1.0 + ys * 0.25 * p
    p = 1.0 + ys * 0.3333333432674408 * p
    p = 1.0 + ys * 0.5 * p
    return tl.where(y < 0.5, ys * p, exp_acc(y) - 1.0)


@triton.jit
def _finite_rows_kernel(q_ptr, q32_ptr, ok_ptr, sr, sd, D, BD: tl.constexpr):
    r = tl.program_id(0)
    d = tl.arange(0, BD)
    dm = d < D
    x = tl.load(q_ptr + r.to(tl.int64) * sr + d * sd, mask=dm, other=0.0).to(tl.float32)
    bad = dm & ((x != x) | (tl.abs(x) == float("inf")))
    ok = tl.sum(bad.to(tl.int32), axis=0) == 0
    tl.store(q32_ptr + r.to(tl.int64) * D + d, tl.where(ok, x, 0.0), mask=dm)
    tl.store(ok_ptr + r, ok)


@triton.jit
def _cert_finish_kernel(mch_ptr, zch_ptr, out_ptr, mc_ptr, zs_ptr, vm_ptr, eps_ptr, qok_ptr,
                        leak_ptr, err_ptr, gap_ptr,
                        NC, Dv, F, FLOOR, ZC, D_REL, D_ABS, L_FAC, L_DFAC, WE, ON, E_FAC, E_ABS,
                        BNC: tl.constexpr, BDV: tl.constexpr, POISON: tl.constexpr):
    r = tl.program_id(0)
    INF = float("inf")
    M, Z = combine_chunks(mch_ptr, zch_ptr, r, NC, F, FLOOR, BNC)
    # the output row: finiteness and ‖o‖ (scaled by max|o|: no overflow or underflow of the squares)
    dv = tl.arange(0, BDV)
    dvm = dv < Dv
    o = tl.load(out_ptr + r.to(tl.int64) * Dv + dv, mask=dvm, other=0.0)
    o_fin = tl.sum((dvm & ((o != o) | (tl.abs(o) == INF))).to(tl.int32), axis=0) == 0
    amax = tl.max(tl.abs(o), axis=0)
    a_s = tl.where((amax > 0) & (amax < INF), amax, 1.0)
    y = tl.div_rn(o, a_s)
    onorm = a_s * tl.sqrt_rn(tl.sum(y * y, axis=0)) * ON
    m_c = tl.load(mc_ptr + r)
    zsum = tl.load(zs_ptr + r)
    vm = tl.load(vm_ptr + r)
    eps = tl.load(eps_ptr + r)
    q_ok = tl.load(qok_ptr + r) != 0
    out_any = M > -INF
    gap = tl.where(out_any, next_down(m_c - M), INF)
    m_o = tl.where(out_any, M, 0.0)
    z_o = tl.where(out_any, Z, 1.0)
    # L̂ = 1/(1 + e^d), d = log(Z_C/Z̄_out) lowered by the evaluation of its operations and logs
    dm = m_c - m_o
    lc = log_acc(zsum * ZC)
    lo = log_acc(z_o)
    d = dm + lc - lo
    d = d - (tl.abs(dm) + tl.abs(lc) + tl.abs(lo) + tl.abs(d)) * D_REL - D_ABS
    t = exp_acc(-tl.abs(d))
    ell = tl.where(d > 0, tl.div_rn(t, 1.0 + t), tl.div_rn(1.0, 1.0 + t))
    raw = ell * L_FAC + (tl.abs(d) * L_DFAC) * ell
    # (a NaN must be caught before the clamp: CUDA's max/min return the other operand)
    nan = raw != raw
    leak = tl.where(out_any, tl.minimum(tl.maximum(raw, 1e-37), 1.0), 0.0)
    w_err = vm * _expm1_pos(2.0 * eps) * WE
    # (+ 4·2⁻¹²⁶: the products' flush-to-zero below the normal range, Triton's default on CUDA)
    err = next_up((vm + onorm + w_err) * leak * E_FAC + w_err + vm * E_ABS + 4.70197740328915e-38)
    ok = o_fin & q_ok & (vm >= 0) & (M < INF)            # M NaN fails M < ∞
    leak = tl.where(ok, leak, 1.0)
    err = tl.where(ok, err, INF)
    nan = (ok & out_any & nan) | (err != err)
    tl.store(leak_ptr + r, tl.where(nan, 1.0, leak))
    tl.store(err_ptr + r, tl.where(nan, INF, err))
    tl.store(gap_ptr + r, gap)
    if POISON:
        tl.store(out_ptr + r.to(tl.int64) * Dv + dv, tl.where(q_ok, o, float("nan")), mask=dvm)


def finite_rows(q):
    """(q32 (R, D) float32 contiguous, q_ok (R,) bool) for ``q`` (…, D) floating: the rows of q
    upcast (exactly), a row with a NaN or ±∞ replaced by zeros and flagged False. One launch."""
    import torch

    D = q.shape[-1]
    q2 = q.reshape(-1, D)
    R = q2.shape[0]
    q32 = torch.empty((R, D), dtype=torch.float32, device=q.device)
    ok = torch.empty(R, dtype=torch.bool, device=q.device)
    _finite_rows_kernel[(R,)](q2, q32, ok, q2.stride(0), q2.stride(1), D, BD=triton.next_power_of_2(D))
    return q32, ok


def zc_lowering(Kc: int) -> tuple[float, float, float]:
    """The relative errors by which the rescoring's sum ``zsum`` may exceed Σ_C e^{lb_j − m_C}
    (docs/ROUNDING.md §4.4): the device exponential (16u), the Kc-term sum (γ_{Kc+2}) and the
    exponents' widening by 2u against four CUDA roundings (2u(ln Kc + 2)). Z_C from below is
    zsum·Π(1 − t); the single-process tail and the context-parallel terms both lower by them."""
    return 16 * U32, gamma(Kc + 2, U32), 2 * U32 * (math.log(Kc) + 2)


def finish_constants(Kc: int, Dv: int, nc: int, block: int = BLOCK) -> dict:
    """The float32 constants of the finish kernel (module doc; docs/ROUNDING.md §4.4), each rounded
    outward (factors that raise a bound up, those that lower z_C down)."""
    u = U32
    e_exp, e_sum, e_wid = zc_lowering(Kc)
    return dict(F=lse_factor(block, nc),
                ZC=f32_down((1 - e_exp) * (1 - e_sum) * (1 - e_wid) * (1 - 4 * u)),
                D_REL=f32_up(32 * u), D_ABS=f32_up(24 * u + 2 * gamma(nc + 2, u)),
                L_FAC=f32_up(1 + 48 * u), L_DFAC=f32_up(24 * u), WE=f32_up(1 + 64 * u),
                ON=f32_up(1 + (Dv + 8) * u), E_FAC=f32_up(1 + (Dv + 8) * 2 * u),
                E_ABS=f32_up((2 * Kc + Dv + 16) * 4 * u))


def cert_finish(m_ch, z_ch, T: int, Kc: int, out, m_c, zsum, vm, eps, q_ok, *, poison: bool = True,
                block: int = BLOCK):
    """(leakage, error, gap) (R,) float32 from the bounds' chunks ``m_ch``/``z_ch`` (R, NC)
    (``row_lse.row_lse_chunks`` of rows of T bounds, block ``block``), the output ``out`` (R, Dv)
    float32 contiguous (its rows with ``q_ok`` False become NaN when ``poison``), the rescoring's
    ``m_c``/``zsum``/``eps`` (R,), ``vm`` (R,) ≥ every value norm of the row, ``q_ok`` (R,) bool. One
    launch."""
    import torch

    R, NC = m_ch.shape
    Dv = out.shape[1]
    leak = torch.empty(R, dtype=torch.float32, device=out.device)
    err = torch.empty_like(leak)
    gap = torch.empty_like(leak)
    c = finish_constants(Kc, Dv, NC, block)
    _cert_finish_kernel[(R,)](m_ch, z_ch, out, m_c, zsum, vm, eps, q_ok, leak, err, gap,
                              NC, Dv, c["F"], lse_floor(T), c["ZC"], c["D_REL"], c["D_ABS"], c["L_FAC"],
                              c["L_DFAC"], c["WE"], c["ON"], c["E_FAC"], c["E_ABS"],
                              BNC=triton.next_power_of_2(NC), BDV=triton.next_power_of_2(Dv), POISON=poison)
    return leak, err, gap
