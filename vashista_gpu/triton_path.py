"""Triton execution of a planned sparse decode step: the stages over the launchers of ``kernels/`` (each
kernel file sets its own grid), with the same stage
functions as ``torch_path`` (``score_blocks``, ``score_tokens``, ``finish``), so ``decode.run_plan``
and ``routing.route`` drive either backend. Selections between the stages (top-P blocks, top-Kc
tokens) use ``torch.topk`` on the kernels' int64 tie-rule keys.

Outputs are allocated uninitialised; with ``POISON = True`` (tests) they are NaN / sentinel filled
first, so an element a kernel fails to write shows up. eg/fw weights run in torch on the gathered
candidates (``solvers.py``).

Example (CPU, under ``TRITON_INTERPRET=1``)::

    r = sparse_decode(q, cache, seq_ids, P=4, Kc=32, backend="triton")
"""
from __future__ import annotations

import math

import torch
import triton

from .kernels.block_scores import block_scores
from .kernels.finish import finish as finish_kernel
from .kernels.fold_dropped import fold_dropped as fold_dropped_kernel
from .kernels.select_blocks import select_blocks
from .kernels.token_scores import token_scores
from .routing import select_torch

__all__ = ["BLOCK_SCORES_BM", "BLOCK_SCORES_WARPS", "POISON", "SELECT_MAX_BLOCKS", "finish", "fold_dropped",
           "score_blocks", "score_tokens", "select"]

POISON = False
# block-scoring tile: BM summaries × D per program (the routing pass is the bandwidth-bound kernel;
# benchmarks/decode_scaling.py sweeps these on the device and records the choice)
BLOCK_SCORES_BM = 32
BLOCK_SCORES_WARPS = 4


def _out(shape, dtype, device):
    if not POISON:
        return torch.empty(shape, dtype=dtype, device=device)
    if dtype == torch.int8:
        return torch.full(shape, 77, dtype=dtype, device=device)
    if dtype.is_floating_point:
        return torch.full(shape, float("nan"), dtype=dtype, device=device)
    return torch.full(shape, 2 ** 62 + 12345, dtype=dtype, device=device)   # a plausible-looking lie


def score_blocks(plan, q32, cache, level, parent):
    dev = q32.device
    B, Hq = plan.B, plan.Hq
    per_head = parent is not None
    if per_head:
        kept, ok = parent
        M = kept.shape[-1] * plan.F
        nodes_c, pvalid = kept.contiguous(), ok.to(torch.int8).contiguous()
    else:
        # blocks shared by the whole GQA group: the top level (or the only one) scores all blocks
        M = plan.level_size(level)
        nodes_c = pvalid = q32                      # unused by the kernel in this mode
    keys = _out((B, Hq, M), torch.int64, dev)
    ub = _out((B, Hq, M), torch.float32, dev)
    vn = _out((B, Hq, M), torch.float32, dev)
    if level == 0:
        kmin, kmax, kmean, vnorm, n_lvl = cache.kmin, cache.kmax, cache.kmean, cache.vnorm, 0
    else:
        Lv = cache.levels[level - 1]
        kmin, kmax, kmean, vnorm, n_lvl = Lv["kmin"], Lv["kmax"], Lv["kmean"], Lv["vnorm"], Lv["kmin"].shape[1]
    block_scores(q32.contiguous(), nodes_c, pvalid, plan.seq_ids, plan.lens, cache.block_table,
                 kmin, kmax, kmean, vnorm, keys, ub, vn, Hkv=plan.Hkv, D=plan.D, S=plan.S,
                 span=plan.F ** level if level else 1, n_lvl=n_lvl, sink_pages=plan.sink_pages, scale=plan.scale,
                 G=plan.G, F=plan.F, per_head=per_head, level0=(level == 0), mean=(plan.router == "mean"),
                 block=BLOCK_SCORES_BM, num_warps=BLOCK_SCORES_WARPS)
    return keys, ub, vn


# Levels of more blocks (long single-level routing) use torch.topk + the fold kernel: measured on an
# H200 (benchmarks/RESULTS.md), the in-register sort wins at M ≤ 1024 (8k: 0.32 → 0.24 ms per step)
# and loses at 2048 (32k: 0.45 → 0.52 ms) and 4096 (64k: 0.65 → 1.09 ms).
SELECT_MAX_BLOCKS = 1024


def select(plan, level, keys, ub, vn, Wl, acc):
    """Fused per-level selection (``kernels/select_blocks.py``) when the level is small enough to sort
    in registers; otherwise the torch selection with the fold kernel."""
    B, Hq, M = keys.shape
    if triton.next_power_of_2(M) > SELECT_MAX_BLOCKS:
        return select_torch(plan, level, keys, ub, vn, Wl, acc, fold=fold_dropped)
    kept = _out((B, Hq, Wl), torch.int64, keys.device)
    ok = _out((B, Hq, Wl), torch.int8, keys.device)
    # the kernels index rows by their dense strides: every input is made contiguous (a no-op when it is)
    keys, ub, vn = keys.contiguous(), ub.contiguous(), vn.contiguous()
    select_blocks(keys, ub, vn, kept, ok, acc["lse"], acc["ub"], acc["vmax"], P=plan.P, big=plan.level_size(level),
                  log_n=math.log(plan.S * (plan.F ** level if level else 1)), certify=plan.certify)
    return kept, ok


def fold_dropped(plan, level, keys, thr, ub, vn):
    """Kernel version of ``routing.fold_dropped``: one pass over (key, ub, vnorm) per row."""
    B, Hq, M = keys.shape
    dev = keys.device
    lse, ubm, vnm = (_out((B, Hq), torch.float32, dev) for _ in range(3))
    fold_dropped_kernel(keys.contiguous(), thr.contiguous(), ub.contiguous(), vn.contiguous(), lse, ubm, vnm,
                        log_n=math.log(plan.S * (plan.F ** level if level else 1)))
    return lse, ubm, vnm


def score_tokens(plan, q32, cache, routed):
    B, Hq, W = routed.pages.shape
    S = plan.S
    dev = q32.device
    s = _out((B, Hq, W * S), torch.float32, dev)
    keys = _out((B, Hq, W * S), torch.int64, dev)
    token_scores(q32.contiguous(), routed.pages.contiguous(), routed.ok.to(torch.int8).contiguous(),
                 plan.seq_ids, plan.lens, cache.block_table, cache.k_pages, s, keys,
                 Hkv=plan.Hkv, D=plan.D, S=S, scale=plan.scale, G=plan.G)
    return s, keys


def finish(plan, q32, cache, routed, s, keys, cvals, cpos):
    B, Hq, W = routed.pages.shape
    Kc = cpos.shape[-1]
    dev = q32.device
    out = _out((B, Hq, plan.Dv), torch.float32, dev)
    w = _out((B, Hq, Kc), torch.float32, dev)
    leak, err, gap, m = (_out((B, Hq), torch.float32, dev) for _ in range(4))
    finish_kernel(s.contiguous(), keys.contiguous(), cpos.contiguous(), cvals.contiguous(), routed.pages.contiguous(), plan.seq_ids,
                  cache.block_table, cache.v_pages, cache.vnorm,
                  routed.lse_out.contiguous(), routed.ub_out.contiguous(), routed.vmax_out.contiguous(),
                  out, w, leak, err, gap, m, Hkv=plan.Hkv, S=plan.S, Dv=plan.Dv, G=plan.G, certify=plan.certify)
    res = dict(out=out, weights=w, certified_leakage=leak, certified_error=err, gap=gap, max_score=m)
    if plan.solver != "softmax":
        from . import torch_path
        # projection solvers: weights and output recomputed in torch on the gathered candidates
        res.update({k: v for k, v in torch_path.finish(plan, q32, cache, routed, s, keys, cvals, cpos).items()
                    if k in ("out", "weights", "gap", "certified_leakage", "certified_error")})
    return res
