"""The certificate tail's Triton kernels (``kernels/cert_tail.py``, ``kernels/row_lse.py``) against the
float32 torch tail they replaced (frozen below as ``_torch_tail``, the code of ``certificate.
fused_certificate`` before the fusion) and against exact arithmetic.

What must hold (docs/ROUNDING.md §4.4): on every row — random, adversarial (huge and tiny magnitudes,
every token a candidate, poisoned outputs, NaN/inf queries, bounds or sums) — the kernel's leakage
and error are ≥ the torch tail's on the same inputs (its allowances are a superset, with a margin
for the different libm and summation order), ≥ the exact leakage, never NaN, and no looser than the
documented allowance change; the gap equals the torch tail's (+∞ where every token is a candidate).
"""
from __future__ import annotations

import math

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("triton")

from vashista_core.rounding import U32, gamma  # noqa: E402
import triton  # noqa: E402
import triton.language as tl  # noqa: E402

from vashista_gpu.kernels.cert_tail import _expm1_pos, cert_finish, finite_rows  # noqa: E402
from vashista_gpu.kernels.row_lse import row_lse_chunks  # noqa: E402

from helpers import REL_TOL  # noqa: E402

DEV = "cuda" if torch.cuda.is_available() else "cpu"
BLOCK = 64                       # small chunks: several per row at test sizes, the combination is exercised


def _torch_tail(m_ch, z_ch, T, Kc, out, m_c, zsum, vm, eps, q_ok, block=BLOCK):
    """The float32 torch tail before the fusion (row_lse_upper's chunk combination + fused_certificate),
    verbatim but for taking the chunks as input."""
    u = 2.0 ** -24
    gam = lambda n: n * u / (1 - n * u)          # noqa: E731
    NC = m_ch.shape[1]
    M = m_ch.amax(-1)
    M_safe = torch.where(torch.isfinite(M), M, torch.zeros_like(M))
    m_safe = torch.where(torch.isfinite(m_ch), m_ch, M_safe[:, None])
    w = torch.exp((m_safe - M_safe[:, None]) * (1 - 2 * u))
    F = (1 + 16 * u) ** 2 * (1 + gam(block + 2)) * (1 + gam(NC + 2)) * (1 + 2 * u)
    Z = (z_ch * w).sum(-1) * F + T * 2.0 ** -126
    m_o, z_out = M, torch.where(torch.isfinite(M), Z, torch.zeros_like(Z))
    Dv = out.shape[1]
    gap = torch.nextafter(m_c - m_o, torch.full_like(m_c, -math.inf))
    out_any = torch.isfinite(m_o)
    m_o = torch.where(out_any, m_o, torch.zeros_like(m_o))
    z_out = torch.where(out_any, z_out, torch.ones_like(z_out))
    z_c = zsum * ((1 - 16 * U32) * (1 - gamma(Kc + 2, U32)))
    dm, lc, lo = m_c - m_o, torch.log(z_c), torch.log(z_out)
    d = dm + lc - lo
    d = d - (dm.abs() + lc.abs() + lo.abs() + d.abs()) * (8 * U32) - 8 * U32
    leak = torch.exp(-torch.nn.functional.softplus(d))
    leak = (leak * (1 + 16 * U32) + (d.abs() * (16 * U32)) * leak).clamp(min=1e-37, max=1.0)
    leak = torch.where(out_any, leak, torch.zeros_like(leak))
    w_err = vm * torch.expm1(2 * eps) * (1 + 16 * U32)
    error = torch.nextafter((vm + torch.linalg.vector_norm(out, dim=-1) + w_err) * leak * (1 + (Dv + 8) * 2 * U32)
                            + w_err + vm * ((2 * Kc + Dv + 16) * 4 * U32), torch.full_like(vm, math.inf))
    ok = torch.isfinite(out).all(-1) & q_ok
    leak = torch.where(ok, leak, torch.ones_like(leak))
    error = torch.where(ok, error, torch.full_like(error, math.inf))
    bad = torch.isnan(leak) | torch.isnan(error)
    return (torch.where(bad, torch.ones_like(leak), leak), torch.where(bad, torch.full_like(error, math.inf), error),
            gap)


def _rows(seed, R=48, T=300, Kc=8, Dv=16, mag=5.0):
    """Consistent inputs as the step produces them: bounds ub, candidates' lower bounds lb (≤ their
    ub), m_C/zsum as the rescoring kernel sums them, ε, outputs and max‖v‖."""
    g = torch.Generator().manual_seed(seed)
    ub = torch.randn(R, T, generator=g, dtype=torch.float64) * mag
    # the candidates: the top bounds of their rows, with lower bounds a little below
    top = ub.topk(Kc, dim=-1)
    cand, lbv = top.indices, top.values - torch.rand(R, Kc, generator=g, dtype=torch.float64) * 0.1
    lb = lbv.float()
    m_c = lb.amax(-1)
    zsum = torch.exp((lb - m_c[:, None]) * (1 + 2 * U32)).sum(-1)
    vals = torch.randn(R, Kc, Dv, generator=g)
    out = torch.einsum("rk,rkd->rd", torch.softmax(lb, -1), vals)
    vm = torch.linalg.vector_norm(vals, dim=-1).amax(-1) * (1 + 1e-6)
    eps = torch.rand(R, generator=g) * 1e-6
    return ub.float(), cand, lb, out, m_c, zsum, vm, eps


def _both(ub, cand, out, m_c, zsum, vm, eps, q_ok):
    x = ub.clone()
    x.scatter_(1, cand, -math.inf)
    d = lambda t: t.to(DEV)  # noqa: E731
    m_ch, z_ch = row_lse_chunks(d(x).contiguous(), block=BLOCK)
    T, Kc = ub.shape[1], cand.shape[1]
    o = d(out).contiguous().clone()
    new = cert_finish(m_ch, z_ch, T, Kc, o, d(m_c), d(zsum), d(vm), d(eps), d(q_ok), poison=True, block=BLOCK)
    old = _torch_tail(m_ch.cpu(), z_ch.cpu(), T, Kc, out, m_c, zsum, vm, eps, q_ok)
    return [t.cpu() for t in new], old, o.cpu(), x


def _check_dominates(new, old):
    (ln, en, gn), (lo, eo, go) = new, old
    assert not bool(torch.isnan(ln).any() or torch.isnan(en).any()), "never NaN"
    assert bool((ln >= lo).all()), (ln - lo)[ln < lo]
    assert bool((en >= eo).all()), (en - eo)[en < eo]
    assert bool((ln <= 1).all() and (ln >= 0).all())
    fin = go.abs() < 3.4e38                 # (the torch tail gave FLT_MAX, not +∞, when nothing was excluded)
    assert torch.equal(gn[fin], go[fin]), "the gap is the same float32 value"
    assert bool((gn >= go).all())


def _exact_leak(ub_excl, lb):
    """Σ_{j∉C} e^{ub_j} / (Σ_C e^{lb_j} + Σ_{j∉C} e^{ub_j}) in float64 (log domain)."""
    lo = torch.logsumexp(ub_excl.double(), -1)
    lc = torch.logsumexp(lb.double(), -1)
    return torch.where(torch.isfinite(lo), 1 / (1 + torch.exp(lc - lo)), torch.zeros_like(lo))


@pytest.mark.parametrize("seed,mag", [(0, 1.0), (1, 5.0), (2, 30.0), (3, 300.0), (4, 3e4), (5, 1e-30), (6, 0.0)])
def test_finish_dominates_torch_tail_and_truth(seed, mag):
    ub, cand, lb, out, m_c, zsum, vm, eps = _rows(seed, mag=mag)
    q_ok = torch.ones(ub.shape[0], dtype=torch.bool)
    new, old, o, x = _both(ub, cand, out, m_c, zsum, vm, eps, q_ok)
    _check_dominates(new, old)
    truth = _exact_leak(x, lb)
    assert bool((new[0].double() >= truth).all()), (new[0].double() - truth).min()
    assert torch.equal(o, out), "certified rows keep their output"


def test_finish_is_no_looser_than_its_allowance_change():
    """new/old ≤ the documented extra allowance (docs/ROUNDING.md §4.4): d lowered by a further 24u
    per magnitude and 16u + 2γ_{NC+2}, ℓ raised by a further 32u + 8u|d|, ‖o‖ by (Dv + 8)u, the
    exponent term by 48u — nothing more (e.g. no spurious factor 2)."""
    ub, cand, lb, out, m_c, zsum, vm, eps = _rows(7, R=64, mag=3.0)
    q_ok = torch.ones(ub.shape[0], dtype=torch.bool)
    (ln, en, _), (lo, eo, _), _, _ = _both(ub, cand, out, m_c, zsum, vm, eps, q_ok)
    u = U32
    # |d| and the magnitudes are ≤ ~100 here: the extra lowering is ≤ 24u·400 + 16u + 2γ ≈ 6e-4
    slack = math.exp(24 * u * 400 + 16 * u + 2 * gamma(8, u)) * (1 + 32 * u + 8 * u * 100) * (1 + 8 * u)
    assert bool((ln.double() <= lo.double() * slack).all()), (ln / lo).max()
    assert bool((en.double() <= eo.double() * slack * (1 + 64 * u)).all()), (en / eo).max()
    # where nothing is excluded both are the fixed allowance: equal to float32 accuracy
    ub2, cand2 = ub[:, :8].contiguous(), torch.arange(8).repeat(ub.shape[0], 1)
    (l2, e2, g2), (l2o, e2o, _), _, _ = _both(ub2, cand2, out, m_c, zsum, vm, eps, q_ok)
    assert bool((l2 == 0).all()) and bool(torch.isinf(g2).all()) and bool((g2 > 0).all())
    assert bool((e2 >= e2o).all())
    assert float(((e2 - e2o) / e2o).abs().max()) <= REL_TOL["float32"]


def test_finish_adversarial_rows():
    """Poisoned outputs, non-finite queries, +inf/NaN bounds, NaN sums, negative max‖v‖, huge ε and
    value norms, Kc = T: never NaN, uncertified rows (1, ∞), always ≥ the torch tail."""
    ub, cand, lb, out, m_c, zsum, vm, eps = _rows(8, R=16, T=100, Kc=4, Dv=8, mag=10.0)
    R = ub.shape[0]
    q_ok = torch.ones(R, dtype=torch.bool)
    out[0, 3] = math.nan                      # poisoned output
    out[1, 0] = math.inf
    q_ok[2] = False                           # non-finite query
    ub[3, (cand[3, 0] + 1) % 100] = math.inf  # an excluded bound overflowed (the torch tail said leak 0)
    ub[4, (cand[4, 0] + 1) % 100] = math.nan
    zsum[5] = math.nan
    vm[6] = -1.0                              # a caller's bad max‖v‖
    vm[7] = math.inf
    eps[8] = math.inf
    eps[9] = 30.0                             # e^{60} − 1: huge but finite
    vm[10] = 1e30
    out[11] = 1e25                            # ‖o‖ beyond float32 when squared
    m_c[12] = 1e30                            # one-hot at a huge score: leak underflows to the floor
    out[13] = 1e-30                           # tiny output
    vm[13] = 1e-30
    new, old, o, _ = _both(ub, cand, out, m_c, zsum, vm, eps, q_ok)
    ln, en, gn = new
    assert not bool(torch.isnan(ln).any() or torch.isnan(en).any())
    for r in (0, 1, 2, 3, 4, 5, 6):
        assert float(ln[r]) == 1.0 and math.isinf(float(en[r])), r
    assert math.isinf(float(en[7])) and math.isinf(float(en[8]))     # max‖v‖ or ε infinite: no error bound
    assert float(old[0][3]) < 1.0, "the torch tail read an overflowed bound as no mass outside C"
    assert bool(torch.isnan(o[2]).all()), "a non-finite query's output is NaN"
    assert not bool(torch.isnan(o[[3, 4, 5]]).any()), "only q_ok False rows are poisoned"
    # ≥ the torch tail (row 11: torch's float32 norm overflows at ‖o‖² ~ 1e50, ∞; the kernel scales by max|o|)
    keep = torch.arange(R) != 11
    assert bool((ln >= old[0]).all()) and bool((en[keep] >= old[1][keep]).all())
    assert math.isfinite(float(en[9])) and float(en[9]) >= float(vm[9]) * math.expm1(60)
    assert math.isfinite(float(en[10])) and math.isfinite(float(en[11]))
    assert 0 < float(ln[12]) <= 1e-36
    assert 0 < float(en[13]) < 1e-28
    # every token a candidate (Kc = T): leakage 0, gap +∞, error the fixed allowance
    T = 12
    ub2, cand2 = ub[:, :T].contiguous(), torch.stack([torch.randperm(T) for _ in range(R)])
    (l2, e2, g2), (l2o, e2o, _), _, _ = _both(ub2, cand2, out, m_c, zsum, vm, eps, q_ok)
    ok = torch.tensor([r not in (0, 1, 2, 5, 6, 7, 8) for r in range(R)])
    assert bool((l2[ok] == 0).all()) and bool((g2[ok] == math.inf).all())
    assert bool((e2[keep] >= e2o[keep]).all()) and bool((l2[keep] >= l2o[keep]).all())
    assert float(e2o[6]) < 0, "the torch tail returned a negative error for a negative max‖v‖"


@triton.jit
def _expm1_probe(x_ptr, y_ptr, N: tl.constexpr):
    i = tl.arange(0, N)
    tl.store(y_ptr + i, _expm1_pos(tl.load(x_ptr + i)))


def test_expm1_within_24u():
    """e^y − 1 of the kernel (the exponent term e^{2ε} − 1): within 24u on both sides of the
    polynomial/exponential switch at 1/2, for tiny y, and ∞/NaN propagate."""
    y = torch.tensor([0.0, 1e-30, 1e-12, 1e-7, 1e-3, 0.1, 0.3, 0.4999999, 0.5, 0.5000001, 1.0, 2.0, 10.0, 80.0,
                      math.inf, math.nan, 3e-6, 0.25, 0.45, 0.49] + [float(v) for v in np.geomspace(1e-9, 50, 44)])
    out = torch.empty(y.shape, device=DEV)
    _expm1_probe[(1,)](y.to(DEV), out, N=64)
    out = out.cpu().double()
    ex = torch.expm1(y.double())
    fin = torch.isfinite(ex)
    rel = ((out[fin] - ex[fin]).abs() / ex[fin].clamp(min=1e-300))
    assert float(rel[ex[fin] > 0].max()) <= 24 * U32, rel.max()
    assert float(out[0]) == 0.0 and math.isinf(float(out[14])) and math.isnan(float(out[15]))


def test_finite_rows():
    q = torch.randn(3, 5, 16)
    q[0, 2, 7] = math.nan
    q[2, 4, 0] = -math.inf
    for x in (q, q.bfloat16(), q.transpose(0, 1)):
        q32, ok = finite_rows(x.to(DEV))
        ref = x.float().reshape(-1, 16)
        fin = torch.isfinite(ref).all(-1)
        assert torch.equal(ok.cpu(), fin) and ok.dtype == torch.bool
        assert torch.equal(q32.cpu(), torch.where(fin[:, None], ref, torch.zeros_like(ref)))
        assert q32.is_contiguous()


def test_next_up_down_match_torch():
    """The kernels' one-ulp steps are torch.nextafter's on the edge values (the gap and the error)."""
    from vashista_gpu.kernels.libm import f32_down, f32_up

    vals = torch.tensor([0.0, -0.0, 1.0, -1.0, 1e-45, -1e-45, 1.1754944e-38, 3.4028235e38, -3.4028235e38,
                         math.inf, -math.inf, 2.0, 0.5, 123.456])
    R = vals.numel()
    # gap = down(m_C − M) with M = 0 (one excluded bound at 0 and one candidate)
    ub = torch.zeros(R, 2)
    cand = torch.ones(R, 1, dtype=torch.long)
    (_, _, gap), (_, _, gap_old), _, _ = _both(ub, cand, torch.zeros(R, 4), vals, torch.ones(R), torch.ones(R),
                                              torch.zeros(R), torch.ones(R, dtype=torch.bool))
    assert torch.equal(gap, gap_old)
    assert f32_up(0.1) >= 0.1 and f32_down(0.1) <= 0.1 and np.float32(f32_up(0.1)) == f32_up(0.1)
