"""Prototype, not the engine's kernel: an int8 sketch scan whose integer dots run on tensor cores, for
a step shared by a span of pages (issue 14; benchmarks/results/step_span_cpu/REPORT.md says why).

At the 1B shape (G = 4 query heads per KV head, D = 64) the engine's scan (kernels/sketch_scan.py) is
bound by integer instructions: each code byte meets G query heads in ``dp2a``s. Tensor cores do that
G-fold work for free, but their operand v = q ⊙ δ (the per-channel step) changed with every page. With
the step shared by SPAN pages (the CPU study: int8 loses 1-3 % of certificate at a span of 1,024
tokens) the operand is built once per span:

    ŝ_{j,h} = Σ_d q_{h,d}·o_{p,d} + sv_h·Σ_d ṽ_{h,d}·c_{j,d},   ṽ = round(q_h ⊙ δ / sv_h), |ṽ| ≤ 16256

with sv_h the power of two ≥ max|v_h|/16256, so that ṽ = 128·hi + lo with lo ∈ [−64, 63] and
hi ∈ [−127, 127] are int8 digits; the codes enter as c − 128 (int8), whose missing 128·Σ_d ṽ_d is added
back. One ``tl.dot`` of the page's (S, D) codes against a (D, 16) operand (columns h·2 + digit, heads
padded to 8) gives both digits' exact int32 dots. Per page it writes what the engine's scan writes with
``bounds="slack"``: ŝ per token and query head, the block maxima of 16 tokens, the page's two-sided slack
e = ½Σ|q|δ + 255·Σ|v − sv·ṽ|.

What it is for: one device call says whether such a scan reaches copy bandwidth at the 1B shape (the
engine's int8 scan ran at ~63 % there) before the sketch format, the append, the proof and the
engine change. What it is not: certificate-grade. Its float32 rounding of qo, of sv·(int → float)
and of the slack is not bounded outward, and ``benchmarks/`` is its only caller.

    PYTHONPATH=. python benchmarks/scan_mma_prototype.py --out /tmp/scan_mma.json      (CUDA)
    TRITON_INTERPRET=1 PYTHONPATH=. python benchmarks/scan_mma_prototype.py --smoke --out /tmp/x.json
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

import torch
import triton
import triton.language as tl

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from vashista_gpu.kernels.sketch_scan import pow2_at_least  # noqa: E402

VMAX = 16256.0                 # |ṽ| bound: two int8 digits, lo ∈ [−64, 63], hi ∈ [−127, 127]
GP = 8                         # query heads per KV head, padded (2·GP = 16 = tl.dot's smallest N)


@triton.jit
def _scan_mma_kernel(q_ptr, codes_ptr, off_ptr, step_ptr, s_ptr, smax_ptr, slack_ptr, ints_ptr,
                     table_ptr, table_stride, T, NS, NP, Hkv,
                     G: tl.constexpr, D: tl.constexpr, S: tl.constexpr, SPAN: tl.constexpr, PPP: tl.constexpr,
                     GP: tl.constexpr, VMAX: tl.constexpr, DEBUG: tl.constexpr, STAGES: tl.constexpr = 1):
    blk = tl.program_id(0)                 # PPP consecutive pages of one row; PPP divides SPAN
    row_kv = tl.program_id(1)
    b = row_kv // Hkv
    kvh = row_kv % Hkv
    h = tl.arange(0, GP)
    d = tl.arange(0, D)
    hm = h < G
    rows = (b * Hkv * G + kvh * G + h).to(tl.int64)
    q = tl.load(q_ptr + rows[:, None] * D + d[None, :], mask=hm[:, None], other=0.0)          # (GP, D)
    # the operand, once per program: the step of its span's first page (every page of the span has it)
    trow = table_ptr + b.to(tl.int64) * table_stride
    phys0 = tl.load(trow + (blk * PPP // SPAN) * SPAN).to(tl.int64)
    step = tl.load(step_ptr + (phys0 * Hkv + kvh) * D + d).to(tl.float32)
    v = q * step[None, :]
    sv = pow2_at_least(tl.max(tl.abs(v), axis=1) / VMAX)                                    # (GP,)
    vt = tl.floor(v / sv[:, None] + 0.5).to(tl.int32)
    lo = ((vt + 64) & 127) - 64
    hi = (vt - lo) >> 7
    bop = tl.reshape(tl.permute(tl.join(lo, hi), (1, 0, 2)), (D, 2 * GP)).to(tl.int8)          # cols h·2 + digit
    csum = tl.sum(vt, axis=1)                                                                  # (GP,)
    e = 0.5 * tl.sum(tl.abs(q) * step[None, :], axis=1) + 255.0 * tl.sum(tl.abs(v - sv[:, None] * vt), axis=1)
    t = tl.arange(0, S)
    for p in tl.range(PPP, num_stages=STAGES):
        lp = blk * PPP + p
        live = lp * S < T
        phys = tl.load(trow + lp, mask=live, other=0).to(tl.int64)
        base = phys * Hkv + kvh
        qo = tl.sum(q * tl.load(off_ptr + base * D + d).to(tl.float32)[None, :], axis=1)           # (GP,)
        c = tl.load(codes_ptr + base * S * D + t[:, None] * D + d[None, :])                       # (S, D) u8
        acc = tl.dot((c.to(tl.int32) - 128).to(tl.int8), bop, out_dtype=tl.int32)                # (S, 2·GP)
        lo_a, hi_a = tl.split(tl.reshape(acc, (S, GP, 2)))
        ints = lo_a + 128 * hi_a + 128 * csum[None, :]                                            # Σ ṽ·c, exact
        shat = qo[None, :] + sv[None, :] * ints.to(tl.float32)
        tok = lp * S + t
        ok = hm[None, :] & (tok[:, None] < T)
        tl.store(s_ptr + rows[None, :] * T + tok[:, None], shat, mask=ok)
        if DEBUG:
            tl.store(ints_ptr + rows[None, :] * T + tok[:, None], ints, mask=ok)
        j = lp * (S // 16) + tl.arange(0, S // 16)
        sm = tl.max(tl.reshape(shat, (S // 16, 16, GP)), axis=1)
        tl.store(smax_ptr + rows[None, :] * NS + j[:, None], sm, mask=hm[None, :] & (j[:, None] < NS))
        tl.store(slack_ptr + rows * NP + lp, e, mask=hm & live)


def scan_mma(q, codes, offset, step, table, T, span, *, pages_per_program=None, stages=1, debug=False, num_warps=4):
    """Launch over every (span, batch row × KV head): ``q`` (B·Hkv·G, D) float32, ``codes`` (N, Hkv, S, D)
    uint8, ``offset``/``step`` (N, Hkv, D) float16 (step equal on the pages of each span), ``table``
    (B, ≥ T/S) int32; T a multiple of S·span. Returns ŝ (R, T), smax (R, T/16), slack (R, T/S)
    [, the exact ints (R, T) int32 with ``debug``]. ``pages_per_program`` (default: the span) divides the
    span: fewer pages per program give more programs (batch 1) and rebuild the operand more often."""
    R, D = q.shape
    N, Hkv, S, W = codes.shape
    B = table.shape[0]
    G = R // (B * Hkv)
    ppp = pages_per_program or span
    assert W == D and G <= GP and T % (S * span) == 0 and S % 16 == 0 and span % ppp == 0
    s = torch.empty((R, T), dtype=torch.float32, device=q.device)
    smax = torch.empty((R, T // 16), dtype=torch.float32, device=q.device)
    slack = torch.empty((R, T // S), dtype=torch.float32, device=q.device)
    ints = torch.empty((R, T), dtype=torch.int32, device=q.device) if debug else s
    _scan_mma_kernel[(T // (S * ppp), B * Hkv)](q, codes, offset, step, s, smax, slack, ints, table,
                                                table.stride(0), T, T // 16, T // S, Hkv, G=G, D=D, S=S,
                                                SPAN=span, PPP=ppp, GP=GP, VMAX=VMAX, DEBUG=debug, STAGES=stages,
                                                num_warps=num_warps)
    return (s, smax, slack, ints) if debug else (s, smax, slack)


def reference(q, codes, offset, step, table, T, span):
    """The same quantities in torch: the ints exactly (int64), ŝ and the slack in float64; and the
    dequantized keys' exact dot ⟨q, o + δ·c⟩ (float64), which both scans approximate."""
    R, D = q.shape
    N, Hkv, S, _ = codes.shape
    B = table.shape[0]
    G = R // (B * Hkv)
    P = T // S
    phys = table[:, :P].long()                                                      # (B, P)
    span0 = phys[:, ::span].repeat_interleave(span, 1)                              # each page's span head
    kv = torch.arange(Hkv, device=q.device)
    st = step[span0][:, :, kv].float()                                              # (B, P, Hkv, D)
    qv = q.view(B, Hkv, G, D)
    v = qv[:, None] * st[:, :, :, None, :]                                          # (B, P, Hkv, G, D) float32
    sv = v.abs().amax(-1) / VMAX
    bits = sv.view(torch.int32)
    sv = torch.maximum(((bits + 0x7FFFFF) & 0x7F800000).view(torch.float32), torch.tensor(1.1754943508222875e-38))
    vt = torch.floor(v / sv[..., None] + 0.5)
    c = codes[phys][:, :, kv].long()                                                # (B, P, Hkv, S, D)
    ints = torch.einsum("bphsd,bphgd->bphgs", c, vt.long())
    off = offset[phys][:, :, kv].double()
    qo = torch.einsum("bhgd,bphd->bphg", qv.double(), off)
    shat = qo[..., None] + sv.double()[..., None] * ints.double()
    slack = 0.5 * (qv.abs()[:, None].double() * st[:, :, :, None].double()).sum(-1) \
        + 255 * (v.double() - sv.double()[..., None] * vt.double()).abs().sum(-1)
    true = qo[..., None] + torch.einsum("bphsd,bphgd->bphgs", c.double(), (qv[:, None].double() * st[:, :, :, None].double()))
    to_rows = lambda x: x.permute(0, 2, 3, 1, *range(4, x.dim())).reshape(R, -1)   # noqa: E731  (B,Hkv,G,P,...)
    return to_rows(shat), to_rows(ints), to_rows(slack), to_rows(true)


def make_span_case(B, Hkv, G, D, T, S, span, dev, gen):
    """An int8 paged sketch (random codes, float16 offsets, steps equal within each span of a row's pages,
    shuffled physical pages) and its page table, every row at length T."""
    from scan_variants_gpu import make_case

    store, cache, q, seq_idx, moved = make_case(B, Hkv, G, D, T, 8, S, dev, gen)
    table = cache.block_table.long()
    P = T // S
    head = table[:, ::span].repeat_interleave(span, 1)[:, :P]
    store.step[table.flatten()] = store.step[head.flatten()]
    return store, cache, q, seq_idx, moved


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--T", type=int, default=131072)
    ap.add_argument("--span", type=int, default=16, help="pages per step (16 pages of 64 = 1,024 tokens)")
    ap.add_argument("--rep-ms", type=int, default=60)
    ap.add_argument("--smoke", action="store_true", help="CPU check (TRITON_INTERPRET=1, tiny shapes)")
    a = ap.parse_args(argv)
    cuda = torch.cuda.is_available() and not a.smoke
    if not cuda and not a.smoke:
        sys.exit("scan_mma_prototype.py needs a CUDA device (or --smoke under TRITON_INTERPRET=1)")
    from vashista_app.timing import bench, copy_bandwidth, graph_of
    from vashista_gpu.kernels.sketch_scan import paged_sketch_scan_bound

    dev = "cuda" if cuda else "cpu"
    gen = torch.Generator(device=dev).manual_seed(0)
    bw = copy_bandwidth(dev) if cuda else 1e12
    S, span = 64, (a.span if not a.smoke else 2)
    T = a.T if not a.smoke else 2 * S * span
    shapes = [("1b_int8_b1", 1, 8, 4, 64), ("1b_int8_b4", 4, 8, 4, 64), ("mha_d128_int8_b16", 16, 32, 1, 128)]
    rows = {}
    for name, B, Hkv, G, D in shapes:
        if a.smoke:
            B, Hkv = 2, 2
        store, cache, q, seq_idx, moved = make_span_case(B, Hkv, G, D, T, S, span, dev, gen)
        table = cache.block_table
        engine = lambda: paged_sketch_scan_bound(q, store, cache, seq_idx, T, scale=0.125, one_sided=False,  # noqa: E731
                                                 bounds="slack")
        variants = {"engine scan (two-sided, slack)": engine}
        for ppp, st, nw in ((span, 1, 4), (span, 3, 4), (4, 1, 4), (4, 3, 4), (1, 1, 4), (span, 3, 8)):
            if span % ppp == 0:
                variants[f"prototype: {ppp} pages/program, {st} stages, {nw} warps"] = (
                    lambda ppp=ppp, st=st, nw=nw: scan_mma(q, store.codes, store.offset, store.step, table, T, span,
                                                           pages_per_program=ppp, stages=st, num_warps=nw))
        if a.smoke:
            variants = dict(list(variants.items())[:3])
        s, smax, slack, ints = scan_mma(q, store.codes, store.offset, store.step, table, T, span, debug=True,
                                        pages_per_program=max(1, span // 2))
        rs, rints, rslack, true = reference(q, store.codes, store.offset, store.step, table, T, span)
        es, _, _ = engine()
        big = true.abs().max()
        # ŝ vs the same integers in float64 (the prototype's own float32 error), and both scans' ŝ vs the
        # dequantized keys' exact dot (the int16 / 14-bit rounding of q ⊙ δ each scan makes)
        r = dict(B=B, Hkv=Hkv, G=G, D=D, T=T, page=S, span_pages=span, GB_moved=round(moved / 1e9, 3),
                 ints_exact=bool(torch.equal(ints.long(), rints)),
                 smax_is_block_max=bool(torch.equal(smax, s.view(s.shape[0], -1, 16).amax(-1))),
                 rel_err_shat_vs_own_ints=float((s.double() - rs).abs().max() / big),
                 rel_err_shat_vs_exact_dot=float((s.double() - true).abs().max() / big),
                 rel_err_engine_shat_vs_exact_dot=float((es.double() - true).abs().max() / big),
                 rel_err_slack=float(((slack.double() - rslack).abs() / rslack.abs()).max()),
                 slack_covers_dot=bool(((true - rs).abs() <= rslack.repeat_interleave(S, 1)).all()))
        del es
        ref_s = s
        for vname, fn in variants.items():
            try:
                same = bool(torch.equal(fn()[0], ref_s)) if vname.startswith("prototype") else None
                g = graph_of(fn, cuda)
                ms = bench(g, cuda=cuda, rep_ms=a.rep_ms)
                r[vname] = dict(ms=round(ms, 4), frac_of_copy=round(moved / (ms * 1e-3) / bw, 3), same_shat=same)
                del g
            except Exception as e:  # noqa: BLE001 — a configuration the compiler refuses is a result
                r[vname] = f"{type(e).__name__}: {e}"[:300]
        rows[name] = r
        print(name, json.dumps(r), flush=True)
    meta = dict(device=torch.cuda.get_device_name() if cuda else "cpu (smoke)", torch=torch.__version__,
                triton=triton.__version__, copy_TBps=round(bw / 1e12, 3), date=time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()))
    os.makedirs(os.path.dirname(os.path.abspath(a.out)), exist_ok=True)
    with open(a.out, "w") as f:
        json.dump(dict(meta=meta, shapes=rows), f, indent=1)


if __name__ == "__main__":
    main()
