"""One rank's share of the certified step on the fused kernels (CUDA; TRITON_INTERPRET=1 on CPU):
the planned paged step's pieces (``sketch_plan``: scan through the page table, threshold top-Kc,
rescoring of the candidates' rows, ``row_lse_upper`` over the excluded bounds) stopped before the
certificate, returning the rank's packed ``merge.ShardState`` instead — device-only, static shapes,
no host synchronisation (CUDA-graph capturable, as ``run_sketch_plan``).

Selection is local (``step`` module doc, ``selection="local"``): Kc candidates per rank, so every
rank's shard of every sequence needs ≥ Kc tokens (``plan_sketch_step`` checks it); shorter shards take
the torch path (``step.cp_certified_decode``). Why each term is sound: docs/CONTEXT_PARALLEL.md §2.
"""
from __future__ import annotations

import math

import torch

from vashista_core.rounding import FN_REL, U32

from ..selection import select_candidates
from ..sketch_plan import row_vmax
from ..allowance import down, up
from .merge import ShardState

__all__ = ["fused_shard_state"]


def fused_shard_state(plan, q: torch.Tensor) -> torch.Tensor:
    """Packed (B, Hq, 10 + Dv) float64 ``ShardState`` of this rank for ``plan`` (``sketch_plan.
    plan_sketch_step`` on the rank's local cache) and q (B, Hq, D). (The kernels are imported here:
    Triton is optional for the torch path's users.)"""
    from ..kernels.cert_tail import zc_lowering
    from ..kernels.rescore import rescore_paged
    from ..kernels.row_lse import excluded_terms, row_lse_upper
    from ..kernels.sketch_scan import paged_sketch_scan_bound, step_bounds

    B, Hq, D, Kc = plan.B, plan.Hq, plan.D, plan.Kc
    q32 = q.float().reshape(B * Hq, D).contiguous()
    s, ub, smax = paged_sketch_scan_bound(q32, plan.store, plan.cache, plan.seq_idx, plan.T, scale=plan.scale,
                                          one_sided=plan.one_sided, bounds=step_bounds(plan.one_sided))
    # sync=False: an overflowed row keeps a non-top-Kc set, still certified (the terms are its own)
    cand, _ = select_candidates(s, smax, Kc, plan.cap, False, short_window=plan.short_window)
    out, m_c, zsum, eps = rescore_paged(q32, plan.cache, plan.seq_idx, cand, scale=plan.scale)
    x, lse_kw = excluded_terms(s, ub, one_sided=plan.one_sided, group=plan.S, scale=plan.scale)
    x.scatter_(1, cand, -math.inf)
    m_o, z_o = row_lse_upper(x, **lse_kw)
    vm = row_vmax(plan).double()
    # Z_C from below by the same relative errors as the single-process tail (kernels/cert_tail.zc_lowering)
    e_exp, e_sum, e_wid = zc_lowering(Kc)
    z_c = zsum.double() * ((1 - e_exp) * (1 - e_sum) * (1 - e_wid))
    m_c, m_o = m_c.double(), m_o.double()
    ls = torch.log(z_c)
    log_zc = down(m_c + down(torch.where(ls < 0, ls * (1 + FN_REL), ls * (1 - FN_REL))))
    lo = torch.log(z_o.double())
    log_zout = torch.where(torch.isfinite(m_o), up(m_o + up(torch.where(lo > 0, lo * (1 + FN_REL), lo * (1 - FN_REL)))),
                           torch.full_like(m_o, -math.inf))
    # x_j = s̃_j − log Σ_C e^{s̃} + log Z_C: within ε (scores) + ε (lb vs s̃) + the lowering of z_C
    # (zc_lowering) + the kernel's exponent widening (≤ Kc·u relative on the sum) of s_j
    e = up(2 * eps.double() * (1 + 4 * U32) + 2 * (e_exp + e_sum + e_wid) + 2 * Kc * U32 + 4 * FN_REL)
    o_rnd = up(vm * ((2 * Kc + plan.Dv + 16) * 4 * U32))
    st = ShardState(m=m_c, l=z_c, o=out.double() * z_c[:, None], log_zc=log_zc, log_zout=log_zout,
                    vmax_c=vm, vmax_out=torch.where(torch.isfinite(m_o), vm, torch.zeros_like(vm)), eps=e,
                    o_rnd=o_rnd, lb_max=m_c, ub_max=m_o)
    return st.pack().view(B, Hq, -1)
