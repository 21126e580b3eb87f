"""Plain, vectorised PyTorch stages of a planned sparse decode step (SPEC 2 and 3).

The readable version of what the Triton kernels do, and the CPU path of the model integration.
For every batch row b and query head h (KV head h // G — K/V are indexed, never repeated):

* ``score_blocks``  the routing pass over summaries (see ``routing.py``);
* ``score_tokens``  s_j = scale·⟨q, k_j⟩ for every token of the routed pages, with tie-rule keys;
* ``finish``        for the top-Kc candidates C (chosen by the caller from the keys):
      weights  a = softmax(s_C) = argmax_{a∈Δ_C} ⟨s_C, a⟩ + H(a)   (solver "softmax"; eg/fw: solvers.py)
      output   o = Σ_{j∈C} a_j v_j
      certificate (SPEC 3, the reference's ``error_middle`` form):
        m = max_C s,  Z_C = Σ_C e^{s−m},
        Z_out = Σ_{scored j∉C} e^{s_j−m} + e^{lse_out − m}        (lse_out: routing's dropped blocks)
        L̂ = Z_out / (Z_C + Z_out),   error ≤ L̂ · (max_{page holding a token ∉ C} vnorm + ‖o‖),
        gap Δ̂ = m − max(ub_out, max_{scored j∉C} s_j).

Example::

    >>> import torch
    >>> from vashista_gpu.paged_cache import TorchPagedKVCache
    >>> from vashista_gpu.decode import sparse_decode
    >>> c = TorchPagedKVCache(2, 1, 4, num_pages=8, max_seqs=1, dtype=torch.float32)
    >>> s = c.add_sequence(); c.append(s, torch.randn(5, 1, 4), torch.randn(5, 1, 4))
    >>> r = sparse_decode(torch.randn(1, 1, 4), c, [s], P=3, Kc=5, backend="torch")
    >>> float(r.certified_leakage[0, 0])    # every token is a candidate
    0.0
"""
from __future__ import annotations

import torch

from .routing import child_blocks, forced_blocks, valid_blocks
from .selection import INVALID_KEY, tie_keys

__all__ = ["finish", "score_blocks", "score_tokens"]


def _kv_head(plan, device):
    return (torch.arange(plan.Hq, device=device) // plan.G)[None, :, None]


def score_blocks(plan, q32, cache, level, parent):
    """Router keys, scale·UB and value norms of the level's candidate blocks (B, Hq, M): every block
    at the top level, else the children of the parent level's kept blocks."""
    if parent is None:
        nodes = torch.arange(plan.level_size(level), device=q32.device)[None, None, :].expand(plan.B, plan.Hq, -1)
        parent_ok = None
    else:
        nodes, parent_ok = child_blocks(plan, parent)
    valid = valid_blocks(plan, level, nodes, parent_ok)
    forced = forced_blocks(plan, level, nodes)
    kvh = _kv_head(plan, q32.device)
    seq = plan.seq_ids[:, None, None]
    if level == 0:
        idx = cache.block_table[seq, nodes.clamp(0, cache.max_pages_per_seq - 1)].long()
        kmin, kmax, kmean, vn = cache.kmin[idx, kvh], cache.kmax[idx, kvh], cache.kmean[idx, kvh], cache.vnorm[idx, kvh]
    else:
        Lv = cache.levels[level - 1]
        idx = nodes.clamp(0, Lv["kmin"].shape[1] - 1)
        kmin, kmax, kmean, vn = (Lv[f][seq, idx, kvh] for f in ("kmin", "kmax", "kmean", "vnorm"))
    qq = q32[:, :, None, :]
    ub = torch.maximum(qq * kmin.float(), qq * kmax.float()).sum(-1) * plan.scale
    score = ub if plan.router == "bound" else (kmean * qq).sum(-1) * plan.scale
    return tie_keys(score, nodes, valid=valid, forced=forced), ub, vn


def score_tokens(plan, q32, cache, routed):
    """Scores s (B, Hq, W·S) of the routed pages' tokens and their tie-rule keys (logical index)."""
    B, Hq, S = plan.B, plan.Hq, plan.S
    dev = q32.device
    phys = cache.block_table[plan.seq_ids[:, None, None], routed.pages.clamp(max=cache.max_pages_per_seq - 1)].long()
    k = cache.k_pages[phys, _kv_head(plan, dev)].float()                                   # (B,Hq,W,S,D)
    s = (k * q32[:, :, None, None, :]).sum(-1) * plan.scale
    tok = routed.pages[..., None] * S + torch.arange(S, device=dev)
    tvalid = routed.ok[..., None] & (tok < plan.lens[:, None, None, None])
    s = torch.where(tvalid, s, float("-inf")).reshape(B, Hq, -1)
    keys = tie_keys(s, tok.reshape(B, Hq, -1), valid=tvalid.reshape(B, Hq, -1))
    return s, keys


def finish(plan, q32, cache, routed, s, keys, cvals, cpos):
    """Weights, output and certificate for the candidates at positions ``cpos``.

    ``keys`` are the selection keys (per head, or shared by a GQA group) and ``cvals`` the selected
    ones, sorted descending: a token is a scored non-candidate iff its key is valid and below the
    last selected key.
    """
    B, Hq, S, Dv = plan.B, plan.Hq, plan.S, plan.Dv
    dev = q32.device
    kvh = _kv_head(plan, dev)
    cvalid = cvals != INVALID_KEY
    cs = torch.where(cvalid, torch.gather(s, -1, cpos), float("-inf"))
    m = cs.amax(-1)
    e = torch.exp(cs - m[..., None])
    zc = e.sum(-1)
    phys = cache.block_table[plan.seq_ids[:, None, None], routed.pages.clamp(max=cache.max_pages_per_seq - 1)].long()
    vpage = cache.v_pages[phys, kvh]                                                        # (B,Hq,W,S,Dv)
    vc = torch.gather(vpage.reshape(B, Hq, -1, Dv), 2, cpos[..., None].expand(-1, -1, -1, Dv)).float()
    vc = torch.where(cvalid[..., None], vc, 0.0)      # fewer tokens than Kc: unused slots hold no value
    if plan.solver == "softmax":
        w = e / zc[..., None]
    else:
        from .solvers import projection_weights
        kpage = cache.k_pages[phys, kvh].reshape(B, Hq, -1, plan.D)
        kc = torch.gather(kpage, 2, cpos[..., None].expand(-1, -1, -1, plan.D)).float()
        w = projection_weights(plan, q32, kc, cvalid)
    out = (w[..., None] * vc).sum(2)
    if not plan.certify or plan.solver != "softmax":
        # eg/fw: the softmax certificate does not apply, and the projection model's residual
        # certificate (UB_p at r̂ over the dropped blocks) is not implemented on this tier: NaN
        nan = torch.full_like(m, float("nan"))
        return dict(out=out, weights=w, certified_leakage=nan, certified_error=nan, gap=nan, max_score=m)
    # certificate: scored non-candidates are valid keys below the Kc-th key
    thr = cvals[..., -1:]
    scored_out = (keys != INVALID_KEY) & (keys < thr)
    s_sc = torch.where(scored_out, s, float("-inf")).amax(-1)
    page_out = scored_out.reshape(B, Hq, -1, S).any(-1)
    v_sc = torch.where(page_out, cache.vnorm[phys, kvh], 0.0).amax(-1)
    # log domain throughout, as the reference: bounds far above m (huge score scales) never overflow
    log_sc = torch.logsumexp(torch.where(scored_out, s, float("-inf")), dim=-1)
    log_out = torch.logaddexp(log_sc, routed.lse_out)
    log_zc = m + torch.log(zc)
    leak = torch.sigmoid(log_out - log_zc)              # Z_out/(Z_C+Z_out) as a ratio of exps
    err = leak * (torch.maximum(v_sc, routed.vmax_out) + out.norm(dim=-1))
    gap = m - torch.maximum(s_sc, routed.ub_out)
    return dict(out=out, weights=w, certified_leakage=leak, certified_error=err, gap=gap, max_score=m)
