"""Triton kernel: solve, gather and certify one query head's candidates in one program (SPEC 2 steps
3–4 and SPEC 3), reading each candidate value row once.

    m = max_C s,  a_j = e^{s_j − m} / Z_C  (softmax: argmax_{a∈Δ_C} ⟨s_C, a⟩ + H(a)),  o = Σ_C a_j v_j,
    log Z_scored = logsumexp of s_j over the scored non-candidates (key valid and below the last
                   selected key), with their pages' max value norms,
    L̂ = Z_out/(Z_C + Z_out) with log Z_out = logaddexp(log Z_scored, lse_out of the dropped blocks),
    error ≤ L̂·(max(vnorm of pages holding a non-candidate, vmax_out) + ‖o‖),
    gap = m − max(max scored non-candidate s, ub_out).

Loop trip counts are compile-time (NK = ⌈Kc/BK⌉, NT = ⌈W·S/BT⌉): fixed per plan, and the Triton
interpreter of 3.6 cannot take a runtime scalar as a ``range`` bound under NumPy 2.
Everything is evaluated in the log domain relative to running maxima (an online logsumexp), so
bounds far above m never overflow — as in the reference certificate.
"""
from __future__ import annotations

import triton
import triton.language as tl

__all__ = ["finish"]

INVALID = tl.constexpr(-9223372036854775807 - 1)   # globals used in kernels must be constexpr


@triton.jit
def _logaddexp(a, b):
    mx = tl.maximum(a, b)
    mn = tl.minimum(a, b)
    return tl.where(mx == float("-inf"), mx, mx + tl.log(1.0 + tl.exp(mn - mx)))


@triton.jit
def _candidates(s_ptr, cpos_ptr, cvals_ptr, pid, Kc, WS, i, BK: tl.constexpr):
    """Chunk i of the program's candidate slots: (slot, live, window position, score); a slot past Kc
    or holding the INVALID key is not live, its score −inf. Each pass below reads the chunks again
    (from L1/L2) rather than keeping Kc scores in registers."""
    idx = i * BK + tl.arange(0, BK)
    cv = tl.load(cvals_ptr + pid * Kc + idx, mask=idx < Kc, other=INVALID)
    ok = (idx < Kc) & (cv != INVALID)
    pos = tl.load(cpos_ptr + pid * Kc + idx, mask=ok, other=0)
    sv = tl.load(s_ptr + pid * WS + pos, mask=ok, other=float("-inf"))
    return idx, ok, pos, sv


@triton.jit
def _finish_kernel(s_ptr, keys_ptr, cpos_ptr, cvals_ptr, pages_ptr, seq_ptr, table_ptr, v_ptr, vnorm_ptr,
                   lse_out_ptr, ub_out_ptr, vmax_out_ptr,
                   out_ptr, w_ptr, leak_ptr, err_ptr, gap_ptr, m_ptr,
                   Kc, W, Hq, Hkv, S, Dv, table_stride,
                   G: tl.constexpr, BK: tl.constexpr, BDV: tl.constexpr, BT: tl.constexpr,
                   NK: tl.constexpr, NT: tl.constexpr, CERT: tl.constexpr):
    pid = tl.program_id(0)
    b = pid // Hq
    h = pid % Hq
    kvh = h // G
    WS = W * S
    seq = tl.load(seq_ptr + b).to(tl.int64)
    cols = tl.arange(0, BDV)
    cmask = cols < Dv
    # pass 1: the candidates' max score
    m = tl.max(tl.full((BK,), float("-inf"), tl.float32), axis=0)
    for i in range(NK):
        idx, ok, pos, sv = _candidates(s_ptr, cpos_ptr, cvals_ptr, pid, Kc, WS, i, BK)
        m = tl.maximum(m, tl.max(sv, axis=0))
    # pass 2: Z_C and the unnormalised output, one gather of each candidate's value row
    zc = tl.sum(tl.zeros((BK,), tl.float32), axis=0)
    acc = tl.zeros((BDV,), tl.float32)
    for i in range(NK):
        idx, ok, pos, sv = _candidates(s_ptr, cpos_ptr, cvals_ptr, pid, Kc, WS, i, BK)
        e = tl.where(ok, tl.exp(sv - m), 0.0)
        wi = pos // S
        slot = pos % S
        page = tl.load(pages_ptr + pid * W + wi, mask=ok, other=0).to(tl.int64)
        phys = tl.load(table_ptr + seq * table_stride + page, mask=ok, other=0).to(tl.int64)
        v = tl.load(v_ptr + ((phys * Hkv + kvh) * S + slot)[:, None] * Dv + cols[None, :],
                    mask=ok[:, None] & cmask[None, :], other=0.0).to(tl.float32)
        acc += tl.sum(e[:, None] * v, axis=0)
        zc += tl.sum(e, axis=0)
    o = acc / zc
    tl.store(out_ptr + pid * Dv + cols, o, mask=cmask)
    for i in range(NK):
        idx, ok, pos, sv = _candidates(s_ptr, cpos_ptr, cvals_ptr, pid, Kc, WS, i, BK)
        tl.store(w_ptr + pid * Kc + idx, tl.where(ok, tl.exp(sv - m) / zc, 0.0), mask=idx < Kc)
    tl.store(m_ptr + pid, m)
    if CERT:
        onorm = tl.sqrt(tl.sum(o * o, axis=0))
        # certificate over the scored non-candidates
        thr = tl.load(cvals_ptr + pid * Kc + Kc - 1)
        tlane = tl.arange(0, BT)
        mx = tl.max(tl.full((BT,), float("-inf"), tl.float32), axis=0)
        z = tl.sum(tl.zeros((BT,), tl.float32), axis=0)
        vsc = tl.sum(tl.zeros((BT,), tl.float32), axis=0)
        for i in range(NT):
            t = i * BT + tlane
            key = tl.load(keys_ptr + pid * WS + t, mask=t < WS, other=INVALID)
            so = (t < WS) & (key != INVALID) & (key < thr)
            sv = tl.load(s_ptr + pid * WS + t, mask=so, other=float("-inf"))
            new = tl.maximum(mx, tl.max(tl.where(so, sv, float("-inf")), axis=0))
            part = tl.sum(tl.where(so, tl.exp(sv - new), 0.0), axis=0)
            z = tl.where(new == float("-inf"), 0.0, z * tl.exp(mx - new) + part)
            mx = new
            page = tl.load(pages_ptr + pid * W + t // S, mask=so, other=0).to(tl.int64)
            phys = tl.load(table_ptr + seq * table_stride + page, mask=so, other=0).to(tl.int64)
            vnp = tl.load(vnorm_ptr + phys * Hkv + kvh, mask=so, other=0.0)
            vsc = tl.maximum(vsc, tl.max(vnp, axis=0))
        log_sc = tl.where(mx == float("-inf"), mx, mx + tl.log(z))
        log_out = _logaddexp(log_sc, tl.load(lse_out_ptr + pid))
        log_zc = m + tl.log(zc)
        leak = 1.0 / (1.0 + tl.exp(log_zc - log_out))        # Z_out/(Z_C+Z_out), exact as a ratio
        vmax = tl.maximum(vsc, tl.load(vmax_out_ptr + pid))
        tl.store(leak_ptr + pid, leak)
        tl.store(err_ptr + pid, leak * (vmax + onorm))
        tl.store(gap_ptr + pid, m - tl.maximum(mx, tl.load(ub_out_ptr + pid)))


def finish(s, keys, cpos, cvals, pages, seq_ids, block_table, v_pages, vnorm, lse_out, ub_out, vmax_out,
           out, w, leak, err, gap, m, *, Hkv: int, S: int, Dv: int, G: int, certify: bool) -> None:
    """Launch the solve/gather/certificate of every query head: one program per (batch row, query
    head), grid (B·Hq,). Inputs: the token scores ``s`` and keys (B, Hq, W·S), the top-Kc positions
    ``cpos`` and keys ``cvals`` (B, Hq, Kc), the routed ``pages`` (B, Hq, W), the routing's folded
    bounds ``lse_out``/``ub_out``/``vmax_out`` (B, Hq). Writes (preallocated) ``out`` (B, Hq, Dv),
    ``w`` (B, Hq, Kc) and ``leak``/``err``/``gap``/``m`` (B, Hq) float32.

    Bytes moved per query head: the Kc candidates' value rows (Kc·Dv·itemsize, read once), their
    scores and keys (12·Kc B), the W·S token scores and keys for the certificate (12·W·S B when
    ``certify``), and Dv·4 + Kc·4 + 16 B written.
    """
    B, Hq, W = pages.shape
    Kc = cpos.shape[-1]
    BK = min(64, triton.next_power_of_2(Kc))
    BT = min(256, triton.next_power_of_2(W * S))
    _finish_kernel[(B * Hq,)](
        s, keys, cpos, cvals, pages, seq_ids, block_table, v_pages, vnorm, lse_out, ub_out, vmax_out,
        out, w, leak, err, gap, m,
        Kc, W, Hq, Hkv, S, Dv, block_table.stride(0),
        G=G, BK=BK, BDV=triton.next_power_of_2(Dv), BT=BT,
        NK=triton.cdiv(Kc, BK), NT=triton.cdiv(W * S, BT), CERT=certify)
