"""Certified mode (SPEC 3b) on a paged cache as an engine runs it: host planning, device launches,
policies, and the ``StepResult`` that ``sparse_decode(router="sketch")`` and the HF integration use.

Problem solved for every query head h of batch row b (KV head h // G, sequence ``seq_ids[b]``):

    o_h = Σ_{j∈C_h} a_j v_j,  a = argmax_{a∈Δ_{C_h}} ⟨s_{C_h}, a⟩ + H(a) = softmax(s_{C_h}),
    C_h = top-Kc tokens by sketch score ŝ_j = ⟨q_h, k̃_j⟩ (ties to the lower index),

with L̂_h = Z̄_out/(Z_C + Z̄_out) ≥ the dense mass outside C_h and ‖o_h − o_dense‖ ≤ L̂_h·(max‖v‖ + ‖o_h‖)
(``sketch.fused_sketch_step`` documents the kernels and the float32 rounding allowances).

Why a plan: the eager step rebuilt its index tensors from host lists on every call (lengths, ids,
sketch checks) and was host-bound (4-6x slower than dense flash at batch 4, 32k on an H200).
:func:`plan_sketch_step` does all host work once — validation against the cache's *host mirrors*, the
padded row length T (``max_tokens``), the sequence index tensor, the row → KV-head map — and
:func:`run_sketch_plan` only issues device work with static shapes. Everything it reads that changes
as sequences grow is read on the device: each row's length (``cache.seq_lens``, by the scan and by
the max‖v‖ mask), the page table, the page sketch and value norms (updated in place on append). So
with ``sync=False`` the step can be captured in a CUDA graph and replayed after appends, as long as
every sequence stays within ``max_tokens`` (and no sequence is freed, nor the sketch re-attached with
another metadata dtype); re-plan before a sequence outgrows it. The padding past each row's end is
−inf in ŝ and in the bounds (excluded from selection and certificate); a row with fewer than Kc
16-token blocks (a short row of a padded batch) is selected by a top-k over its first 16·Kc columns,
decided on the device per row (``selection.select_candidates``).

:func:`paged_certified_decode` adds the policies (ReportOnly, DenseFallback(tol), Capped(tol, ·,
Kc_max) — Kc only is widened, doubling per batch row, by the one policy loop
``vashista_core.policy_loop``) and returns a ``result.StepResult`` with ``path="fused"``. Its certified_error is the middle form above; the
torch path (``sketch.sketch_decode``) reports the smallest of four forms, so it can be tighter.

Example::

    >>> import torch
    >>> from vashista_gpu.paged_cache import TorchPagedKVCache
    >>> cache = TorchPagedKVCache(16, n_kv_heads=2, head_dim=16, dtype=torch.float32)
    >>> sid = cache.add_sequence()
    >>> cache.append(sid, torch.randn(100, 2, 16), torch.randn(100, 2, 16))
    >>> plan = plan_sketch_step(cache, [sid], num_q_heads=4, Kc=8, bits=8, max_tokens=160)
    >>> q = torch.randn(1, 4, 16)
    >>> r = run_sketch_plan(plan, q)                       # sync=False: no host synchronisation
    >>> cache.append(sid, torch.randn(30, 2, 16), torch.randn(30, 2, 16))
    >>> r2 = run_sketch_plan(plan, q)                      # same plan, 130 tokens now
    >>> r2.candidates.shape, bool((r2.certified_leakage <= 1).all())
    (torch.Size([1, 4, 8]), True)
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass

import torch

from vashista_core.errors import VashistaInputError
from vashista_core.policies import Capped
from vashista_core.policy_loop import check_policy, run_policy
from vashista_core.rounding import U32

from . import validate as V
from .allowance import cast_output
from .dense import dense_decode
from .plan import decode_batch
from .result import StepResult
from .selection import select_candidates
from .sketch import attach_sketch, check_current, scanned_pages

__all__ = ["SketchStepPlan", "candidate_weights", "fused_paged_sketch_step", "fused_shapes_ok",
           "paged_certified_decode", "plan_sketch_step", "row_vmax", "run_sketch_plan"]


@dataclass
class SketchStepPlan:
    """Launch sizes and device index tensors of one certified step (see module doc)."""
    cache: object
    store: object               # the cache's TorchPageSketchStore for ``bits``
    B: int
    Hq: int
    Hkv: int
    D: int
    Dv: int
    S: int                      # page size (= quantization group)
    T: int                      # padded row length: max_tokens, ≥ every sequence's length
    Kc: int
    cap: int                    # threshold-selection slots per row
    bits: int
    scale: float
    one_sided: bool
    short_window: int           # > 0: some row may have < Kc blocks; they are selected in [0, short_window)
    seq_ids: list               # host ids
    seq_idx: torch.Tensor       # (B,) int32 on the cache device
    row_kv: torch.Tensor        # (B·Hq,) int64: row r = b·Hq + h -> b·Hkv + h // G
    page_idx: torch.Tensor      # (ceil(T/S),) int64 logical page numbers

    def check(self) -> None:
        """Host-mirror checks that a replayed plan is still valid (no device synchronisation)."""
        if self.cache.sketches.get(self.bits) is not self.store:
            # a re-attached sketch (another metadata dtype) is the one kept current on append
            raise VashistaInputError("cache", f"the cache's {self.bits}-bit sketch was replaced; re-plan")
        check_current(self.store, self.cache, self.bits, then="re-attach it (sketch.attach_sketch) and re-plan")
        for s in self.seq_ids:
            if not self.cache.is_live(s):
                raise VashistaInputError("seq_ids", f"sequence {s} is no longer in the cache; re-plan")
            n = self.cache.length(s)
            if n > self.T:
                raise VashistaInputError("max_tokens", f"sequence {s} has {n} tokens > the plan's {self.T}; re-plan")
            if n < self.Kc:
                raise VashistaInputError("Kc", f"sequence {s} has {n} < Kc = {self.Kc} tokens; re-plan")


def fused_shapes_ok(cache, bits: int) -> str | None:
    """None when the fused kernels support this cache and ``bits``, else the reason (page size a
    multiple of 16, head dimension a power of two, D·bits a multiple of 32)."""
    from .kernels.sketch_scan import SUB

    D, S, Dv = cache.head_dim, cache.page_size, cache.value_dim
    if S % SUB:
        return f"page size {S} is not a multiple of {SUB} (the fused scan's token blocks)"
    if D & (D - 1) or (D * int(bits)) % 32:
        return f"the fused scan needs D a power of two and D·bits a multiple of 32 (D = {D}, bits = {bits})"
    if Dv & (Dv - 1):
        return f"the fused rescoring needs a power-of-two value dimension (Dv = {Dv})"
    return None


def plan_sketch_step(cache, seq_ids, num_q_heads: int, Kc: int, *, bits: int, scale: float | None = None,
                     one_sided: bool = True, cap: int | None = None, max_tokens: int | None = None) -> SketchStepPlan:
    """Validate against the cache's host mirrors and fix the launch sizes (no device synchronisation
    beyond attaching the sketch on first use). ``cap`` slots per row for the threshold selection
    (default 4·Kc, ≥ Kc); ``max_tokens`` the padded row length T (default: the longest sequence)."""
    from .kernels.sketch_scan import SUB     # tokens per block maximum of the scan (Triton: imported on use)

    ids, host_ids, lens, Hq, Hkv = decode_batch(cache, seq_ids, num_q_heads)
    if isinstance(bits, bool) or bits not in (4, 8):
        raise VashistaInputError("bits", f"the fused step supports 4 or 8 bits, got {bits!r}")
    why = fused_shapes_ok(cache, bits)
    if why is not None:
        raise VashistaInputError("bits" if why.startswith("the fused scan") else "cache", why)
    if cache.device.type != "cuda" and os.environ.get("TRITON_INTERPRET", "0") != "1":
        # (a Triton launch on CPU tensors would fail inside the driver with a pointer error)
        raise VashistaInputError("cache", f"is on {cache.device}: the fused step runs Triton kernels, which need "
                                          "a CUDA device (or TRITON_INTERPRET=1 on CPU)")
    Kc = V.positive_int("Kc", Kc, upper=min(lens), upper_name="tokens in the shortest sequence")
    sc = 1.0 / math.sqrt(cache.head_dim) if scale is None else float(V.positive_scalar("scale", scale))
    if not isinstance(one_sided, bool):
        raise VashistaInputError("one_sided", f"expected a bool, got {one_sided!r}")
    cap = 4 * Kc if cap is None else V.positive_int("cap", cap)
    if cap < Kc:
        raise VashistaInputError("cap", f"must be >= Kc ({Kc}), got {cap}")
    S = cache.page_size
    T = max(lens)
    if max_tokens is not None:
        max_tokens = V.positive_int("max_tokens", max_tokens, upper=cache.max_pages_per_seq * S,
                                    upper_name="cache.max_pages_per_seq · page_size")
        if max_tokens < T:
            raise VashistaInputError("max_tokens", f"{max_tokens} < the longest sequence's {T} tokens")
        T = max_tokens
    store = attach_sketch(cache, bits)
    check_current(store, cache, bits)
    dev = cache.device
    B, G = len(host_ids), Hq // Hkv
    r = torch.arange(B * Hq, device=dev)
    # lengths only grow between replays: a row with ≥ Kc blocks at plan time keeps a finite threshold
    short = -(-min(lens) // SUB) < Kc
    return SketchStepPlan(cache=cache, store=store, B=B, Hq=Hq, Hkv=Hkv, D=cache.head_dim, Dv=cache.value_dim,
                          S=S, T=T, Kc=Kc, cap=cap, bits=int(bits), scale=sc, one_sided=one_sided,
                          short_window=min(T, SUB * Kc) if short else 0, seq_ids=host_ids,
                          seq_idx=ids.to(device=dev, dtype=torch.int32),
                          row_kv=(r // Hq) * Hkv + (r % Hq) // G,
                          page_idx=torch.arange(-(-T // S), device=dev))


def row_vmax(plan: SketchStepPlan) -> torch.Tensor:
    """(B·Hq,) float32 ≥ every value norm of the row's sequence and KV head: the maximum of the pages'
    float32 norm summaries (the cache keeps it as a running maximum, ``vabs``), raised by their
    rounding. One launch (``kernels/row_vmax.py``: the maximum, times this float32 factor)."""
    from .kernels.row_vmax import row_vmax_seqs

    return row_vmax_seqs(plan.cache, plan.seq_idx, plan.Hq, 1 + 2 * (plan.Dv + 4) * U32)


def run_sketch_plan(plan: SketchStepPlan, q: torch.Tensor, *, sync: bool = False) -> StepResult:
    """Device work of one certified step for ``plan``; ``q`` (B, Hq, D). Returns a ``StepResult``
    with the step's fields (out, candidates, certificate, gap, overflow; ``path="fused"``).

    ``sync=False``: no host synchronisation, static shapes (CUDA-graph capturable); rows whose
    threshold selection overflowed (more than ``cap`` tokens at or above τ) are flagged in
    ``overflow`` (their candidate set is certified but not the tie rule's top-Kc). ``sync=True``: q is
    also checked for NaN/inf (one synchronisation) and overflowed rows get their exact top-Kc
    (``selection.select_candidates``: on the device with the radix kernel, by a reselection from all
    keys with one synchronisation on the torch path)."""
    from .certificate import fused_certificate          # the fused step's Triton modules, imported on use
    from .kernels.cert_tail import finite_rows
    from .kernels.rescore import rescore_paged
    from .kernels.row_lse import excluded_terms
    from .kernels.sketch_scan import paged_sketch_scan_bound, step_bounds

    q = V.tensor("q", q, ndim=3, check_finite=bool(sync))
    V.same_device("q", q, plan.cache.device)
    if tuple(q.shape) != (plan.B, plan.Hq, plan.D):
        raise VashistaInputError("q", f"expected shape {(plan.B, plan.Hq, plan.D)} (the plan's), got {tuple(q.shape)}")
    plan.check()
    B, Hq, Kc = plan.B, plan.Hq, plan.Kc
    # a non-finite query row is scanned as 0 (no NaN reaches the selection), certified ∞ and its
    # output set to NaN by the certificate's finish kernel (no sync)
    q32, q_ok = finite_rows(q)
    # two-sided: the scan writes each page's slack, not a bound per token and query head (the tail
    # derives them from ŝ: ``kernels/sketch_scan.py``, "Slack")
    s, ub, smax = paged_sketch_scan_bound(q32, plan.store, plan.cache, plan.seq_idx, plan.T, scale=plan.scale,
                                          one_sided=plan.one_sided, bounds=step_bounds(plan.one_sided))
    cand, overflow = select_candidates(s, smax, Kc, plan.cap, sync, short_window=plan.short_window)
    # exact part (``kernels/rescore.py``): rescoring, softmax, values, and m_C, z_C of the lower bounds
    out, m_c, zsum, eps = rescore_paged(q32, plan.cache, plan.seq_idx, cand, scale=plan.scale)
    x, lse_kw = excluded_terms(s, ub, one_sided=plan.one_sided, group=plan.S, scale=plan.scale)
    leak, error, gap = fused_certificate(x, cand, out, m_c, zsum, row_vmax(plan), eps, q_ok=q_ok, **lse_kw)
    return StepResult(out=out.view(B, Hq, plan.Dv), candidates=cand.view(B, Hq, Kc),
                      certified_leakage=leak.view(B, Hq), certified_error=error.view(B, Hq),
                      overflow=overflow.view(B, Hq), gap=gap.view(B, Hq), path="fused")


def fused_paged_sketch_step(q: torch.Tensor, cache, seq_ids, Kc: int, *, bits: int = 4, scale: float | None = None,
                            one_sided: bool = True, cap: int | None = None, sync: bool = True,
                            max_tokens: int | None = None) -> StepResult:
    """One call = :func:`plan_sketch_step` + :func:`run_sketch_plan`: the certified step on a paged
    cache (``TorchPagedKVCache``), sequences of any lengths. The scan walks the cache's page sketch
    (``sketch.attach_sketch``: quantization group = page) through the page table, the exact part
    reads only the candidates' key and value rows from their pages, and max‖v‖ comes from the pages'
    value-norm summaries: the bytes read are the sketch of every token plus Kc key/value rows per query
    head. ``q`` (B, Hq, D); page size a multiple of 16; D a power of two, D·bits a multiple of 32;
    Kc ≤ the shortest sequence.

    >>> import torch
    >>> from vashista_gpu.paged_cache import TorchPagedKVCache
    >>> cache = TorchPagedKVCache(16, n_kv_heads=2, head_dim=16, dtype=torch.float32)
    >>> sid = cache.add_sequence()
    >>> cache.append(sid, torch.randn(100, 2, 16), torch.randn(100, 2, 16))
    >>> r = fused_paged_sketch_step(torch.randn(1, 4, 16), cache, [sid], Kc=8, bits=8)
    >>> r.candidates.shape, bool((r.certified_leakage <= 1).all())
    (torch.Size([1, 4, 8]), True)
    """
    q, ids = V.batch_query(q, cache, seq_ids)
    plan = plan_sketch_step(cache, ids, q.shape[1], Kc, bits=bits, scale=scale, one_sided=one_sided, cap=cap,
                            max_tokens=max_tokens)
    return run_sketch_plan(plan, q, sync=sync)


def candidate_weights(plan: SketchStepPlan, q: torch.Tensor, cand: torch.Tensor) -> torch.Tensor:
    """Softmax weights (B, Hq, Kc) float32 of the candidates ``cand`` (B, Hq, Kc) — the a of the module
    doc, recomputed from the candidates' key rows (Kc·D reads per head, as the rescoring kernel)."""
    cache = plan.cache
    B, Hq, Kc = cand.shape
    c = cand.reshape(B * Hq, Kc)
    seq = plan.seq_idx.long().repeat_interleave(Hq)                                  # (B·Hq,)
    phys = cache.block_table[seq[:, None], c // plan.S].long()
    kvh = (plan.row_kv % plan.Hkv)[:, None]
    k = cache.k_pages[phys, kvh, c % plan.S].float()                                 # (B·Hq, Kc, D)
    s = (k * q.float().reshape(B * Hq, 1, plan.D)).sum(-1) * plan.scale
    return torch.softmax(s, dim=-1).view(B, Hq, Kc)


def paged_certified_decode(q: torch.Tensor, cache, seq_ids, Kc: int, *, bits: int = 4, scale: float | None = None,
                           policy=None, one_sided: bool = True, cap: int | None = None) -> StepResult:
    """Certified-mode decode of q (B, Hq, D) on the fused paged step with a policy from
    ``vashista_core.policies``, run by ``vashista_core.policy_loop`` with a batch row as the unit:
    ReportOnly (default); DenseFallback(tol) recomputes densely every head whose certified error
    exceeds tol; Capped(tol, P_max, Kc_max) first doubles Kc per batch row (capped at Kc_max and the
    row's length; P is not used) for the rows with an uncertified head, replacing the uncertified
    heads' results, until certified or capped, then falls back densely. Returns a ``StepResult``
    (``path="fused"``; candidates/weights (B, Hq, max Kc_used), −1/0 padded). Synchronises
    (policies need the certificates on the host)."""
    q, ids = V.batch_query(q, cache, seq_ids)
    policy = check_policy(policy)
    B, Hq = q.shape[:2]

    def planned(rows, kc):
        return plan_sketch_step(cache, [ids[b] for b in rows], Hq, kc, bits=bits, scale=scale,
                                one_sided=one_sided, cap=cap)

    plan = planned(list(range(B)), Kc)
    if isinstance(policy, Capped):
        policy.check_start(1, plan.Kc)
    tol = getattr(policy, "tol", math.inf)
    st: dict = {}

    def attempt(rows, _P, kc):
        p = planned(rows, kc) if st else plan
        w = run_sketch_plan(p, q[rows], sync=True)
        # returned in q's dtype: the certificate covers the cast (allowance.cast_output)
        w.out, w.certified_error = cast_output(w.out, w.certified_error, q.dtype)
        ww = candidate_weights(p, q[rows], w.candidates)
        if not st:                 # the first attempt covers every row
            st.update(out=w.out.clone(), leak=w.certified_leakage.clone(), err=w.certified_error.clone(),
                      gap=w.gap.clone(), cand=w.candidates.clone(), wts=ww.clone(),
                      certified=w.certified_error <= tol,
                      Kc_used=torch.full((B, Hq), plan.Kc, dtype=torch.int64, device=q.device))
            return
        if kc > st["cand"].shape[-1]:        # wider attempts: pad the candidate columns (−1 / weight 0)
            pad = kc - st["cand"].shape[-1]
            st["cand"] = torch.nn.functional.pad(st["cand"], (0, pad), value=-1)
            st["wts"] = torch.nn.functional.pad(st["wts"], (0, pad), value=0.0)
        certified = st["certified"]
        redo = ~certified[rows]
        st["out"][rows] = torch.where(redo[..., None], w.out, st["out"][rows])
        for t, new in ((st["leak"], w.certified_leakage), (st["err"], w.certified_error), (st["gap"], w.gap)):
            t[rows] = torch.where(redo, new, t[rows])
        st["cand"][rows, :, :kc] = torch.where(redo[..., None], w.candidates, st["cand"][rows, :, :kc])
        st["wts"][rows, :, :kc] = torch.where(redo[..., None], ww, st["wts"][rows, :, :kc])
        st["Kc_used"][rows] = torch.where(redo, kc, st["Kc_used"][rows])
        certified[rows] = torch.where(redo, w.certified_error <= tol, certified[rows])

    def uncertified():
        return torch.nonzero(~st["certified"].all(-1)).flatten().tolist()

    def dense(rows):
        fell_back = ~st["certified"]
        st["out"] = st["out"].to(q.dtype)
        d = dense_decode(q[rows], cache, [ids[b] for b in rows], scale=plan.scale)
        st["out"][rows] = torch.where(fell_back[rows][..., None], d.to(q.dtype), st["out"][rows])
        st["fell_back"] = fell_back

    # a batch row is the unit; P is not routed in certified mode, so its page limit pins P at 1
    run_policy(policy, list(range(B)), 1, plan.Kc, attempt=attempt, uncertified=uncertified,
               limits=lambda b: (cache.length(ids[b]), 1), dense=dense)
    out = st["out"].to(q.dtype)
    return StepResult(out=out, certified_leakage=st["leak"], certified_error=st["err"], gap=st["gap"],
                      certified=st["certified"], fell_back=st.get("fell_back", torch.zeros_like(st["certified"])),
                      P_used=torch.zeros((B, Hq), dtype=torch.int64, device=q.device), Kc_used=st["Kc_used"],
                      pages=scanned_pages(cache, ids, Hq, q.device), candidates=st["cand"], weights=st["wts"],
                      summaries_scored=max(cache.length(s) for s in ids), path="fused")
