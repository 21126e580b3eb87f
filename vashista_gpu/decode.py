"""Sparse paged decode on torch tensors: the public entry point of the GPU tier (SPEC 2 and 3).

For a query q of KV head h // G in sequence b (G = Hq / Hkv query heads per KV head), one step solves,
on a candidate set C chosen by routing,

    softmax (default)   a = argmax_{a ∈ Δ_C} ⟨s_C, a⟩ + H(a) = softmax(s_C),   s_j = scale·⟨q, k_j⟩,
    eg / fw             α ≈ argmin_{α ∈ Δ_C} ½‖K_Cᵀα − q‖² − ε H(α)   (projection model; ``solvers.py``),

and returns o = Σ_C a_j v_j with a certificate on ‖o − o_dense‖ — the same algorithm, tie rule and
certificate as ``vashista_ref.sparse_decode`` (routing: sinks + newest page + top-P others, per level
of the hierarchy; candidates: top-Kc tokens of the routed pages).

For eg/fw the output matches the reference's, but the projection model's residual certificate is not
implemented on this tier: ``gap``/``certified_leakage``/``certified_error`` are NaN (never
"certified"), and a fallback policy with eg/fw is refused.

Differences from the reference, by design: the certificate reported as ``certified_error`` is the
reference's ``error_middle`` form L̂·(max_{j∉C} vmax_page(j) + ‖o‖) — sound, never below the
reference's tightest form — raised by the float32 rounding allowances of ``allowance.py`` (scores,
exponentials, sums, the output and its final cast to q's dtype), so it bounds the distance from the
returned output to exact dense attention over the stored keys and values (docs/ROUNDING.md).

Two backends behind one API: ``"triton"`` (kernels in ``kernels/``; on CUDA, or on CPU under
``TRITON_INTERPRET=1``) and ``"torch"`` (vectorised torch, ``torch_path.py``); ``"auto"`` picks triton
on CUDA. Planning (host) and execution (device) are separate: ``plan_decode`` + ``run_plan`` can be
graph-captured; ``sparse_decode`` does both and applies the policy (a policy that falls back needs one
host synchronisation to know which queries to recompute).

Example::

    >>> import torch
    >>> from vashista_gpu.paged_cache import TorchPagedKVCache
    >>> from vashista_gpu.decode import sparse_decode
    >>> from vashista_gpu.dense import dense_decode
    >>> torch.manual_seed(0) and None
    >>> cache = TorchPagedKVCache(16, 2, 32, num_pages=64, max_seqs=2, dtype=torch.float32)
    >>> s = cache.add_sequence(); cache.append(s, torch.randn(300, 2, 32), torch.randn(300, 2, 32))
    >>> q = torch.randn(1, 4, 32)
    >>> r = sparse_decode(q, cache, [s], P=4, Kc=32)
    >>> err = (r.out - dense_decode(q, cache, [s])).norm(dim=-1)
    >>> bool((err <= r.certified_error + 1e-6).all())
    True
"""
from __future__ import annotations

import math

import torch

from vashista_core.errors import VashistaInputError
from vashista_core.options import check_sketch_options
from vashista_core.policies import Capped, ReportOnly
from vashista_core.policy_loop import check_policy, run_policy
from vashista_core.rounding import U32, gamma

from . import sketch_plan, validate as V
from .allowance import cast_output, never_nan, score_radius, weights_tv, widen_leakage
from .dense import dense_decode
from .paged_cache import resolve_backend
from .plan import DecodePlan, plan_decode
from .result import StepResult
from .routing import Routed, route, select_torch
from .selection import INVALID_KEY, key_index
from .sketch import HAS_TRITON, sketch_decode

__all__ = ["run_plan", "sparse_decode"]


def _backend_module(backend: str):
    if backend == "torch":
        from . import torch_path
        return torch_path
    from . import triton_path
    return triton_path


def _share_in_group(plan, keys: torch.Tensor) -> torch.Tensor:
    """One selection per GQA group: each position's key becomes the group's max (same index, so the
    max key is the key of the max score) — the reference's max-over-heads rule."""
    B, Hq = keys.shape[:2]
    g = keys.view(B, plan.Hkv, plan.G, -1).amax(2, keepdim=True)
    # contiguous: with one KV head the reshape of the expansion is a stride-0 view, which the kernels
    # (row r at r·stride) read as other rows' memory (issue 15: NaN for heads 1..G−1, segfaults)
    return g.expand(-1, -1, plan.G, -1).reshape(keys.shape).contiguous()


def _row_bounds(plan: DecodePlan, cache):
    """R (B, Hkv, D) float32 ≥ |k_d| of every stored key of the row's sequence and KV head, and
    vmax (B, Hkv) ≥ every value norm (NaN or ∞ when a stored key or value is not finite): the cache's
    running maxima ``kabs``/``vabs`` of its pages' summaries (``paged_cache`` module doc), one gather
    on the device — the max over the live pages of max(|kmin|, |kmax|) and of vnorm, bit for bit,
    when the plan's lengths are the cache's (as ``sparse_decode`` and the engine step make them; a
    plan older than the last append gets bounds over more tokens, still sound). Scanning the pages
    here instead read NP·Hkv·D summaries per layer and step: 1.4–1.8× slower decode at 128k."""
    seq = plan.seq_ids.long()
    # the float32 norm summaries sit within γ_{Dv+2} of the exact norms
    return cache.kabs[seq], cache.vabs[seq] * (1 + 2 * (plan.Dv + 4) * U32)


def _sound_certificate(plan: DecodePlan, q32: torch.Tensor, cache, res: dict, all_in: torch.Tensor) -> dict:
    """Raise the float32 certificate of ``finish`` (exact arithmetic on the computed scores) to one on
    the distance to exact dense attention (docs/ROUNDING.md, GPU tier, paged step): the scores and
    the routing's box bounds err by ≤ δ (``allowance.score_radius``), the log-sum-exps by their float32
    evaluation, so the log-ratio behind L̂ drops by w = 2δ + slack (``allowance.widen_leakage``); the
    output differs from the exact softmax over C by E_C = TV(δ)·vmax + the float32 accumulation of
    Σ a_j v_j; error' = E_C·(1 + L̂') + L̂'·(max‖v‖_out + ‖o‖) (the kernel's error scaled by L̂'/L̂, or
    from the row's max‖v‖ when L̂ underflowed). NaN becomes ∞ (never certified)."""
    R, vm = _row_bounds(plan, cache)
    kv = torch.arange(plan.Hq, device=q32.device) // plan.G
    Rq, vmq = R[:, kv], vm[:, kv]                                                     # (B, Hq, D), (B, Hq)
    delta = score_radius(q32, Rq, plan.scale, plan.D)
    A = delta / (2 * gamma(plan.D + 2, U32) + 16 * U32)
    n = plan.NP * plan.S + plan.Kc
    # every log-domain quantity has magnitude ≤ A + log n + 4; each of the ≤ L + 8 chained float32
    # operations errs by a few u of it; each sum of ≤ n exponentials by γ_n relative (log1p of it)
    slack = (plan.L + 8) * 8 * U32 * (A + math.log(n + 1) + 4) + 2 * math.log1p(gamma(n + 2, U32) + 32 * U32)
    leak0, err0, out = res["certified_leakage"], res["certified_error"], res["out"]
    leak = torch.where(all_in, torch.zeros_like(leak0), widen_leakage(leak0, 2 * delta + slack))
    onorm = torch.linalg.vector_norm(out, dim=-1) * (1 + 2 * gamma(plan.Dv + 2, U32))
    e_c = weights_tv(delta, plan.Kc) * vmq + vmq * ((2 * plan.Kc + plan.Dv + 16) * 4 * U32)
    # err0 = L̂·(vmax_out + ‖o‖) from float32 summaries and norms: scaled by L̂'/L̂ and their rounding
    tiny = leak0 < 2.0 ** -100
    scaled = err0 * (leak / torch.where(tiny, torch.ones_like(leak0), leak0)) * (1 + 2 * (plan.Dv + 12) * U32)
    mid = torch.where(tiny, leak * (vmq + onorm), scaled)
    err = (e_c * (1 + leak) + mid) * (1 + 8 * U32)
    err = torch.where(torch.isfinite(out).all(-1), err, torch.full_like(err, math.inf))
    leak, err = never_nan(leak, err)
    gap = res["gap"] - 2 * delta * (1 + 4 * U32)
    return dict(res, certified_leakage=leak, certified_error=err, gap=torch.where(torch.isnan(gap), -math.inf, gap))


def run_plan(plan: DecodePlan, q: torch.Tensor, cache, *, backend: str = "auto",
             share_selection_in_group: bool = False, out_dtype: torch.dtype | None = None) -> StepResult:
    """Device work of one step for a plan: routing, candidates, solve, gather, certificate. Returns
    a ``StepResult`` with the step's fields (out float32, or ``out_dtype`` with the cast's rounding in
    the certificate; certificate, gap, pages, candidates, weights, summaries_scored; the policy's
    fields None). The softmax certificate bounds the distance from the returned output to exact dense
    attention over the stored keys and values (float32 rounding included; ∞ for a non-finite query,
    key or value — checked on the device).

    No host synchronisation and static shapes: capturable in a CUDA graph (softmax solver).
    """
    if not isinstance(plan, DecodePlan):
        raise VashistaInputError("plan", f"expected a DecodePlan (plan.plan_decode), got {type(plan).__name__}")
    q = V.tensor("q", q, ndim=3, check_finite=False)       # finiteness: on the device, below
    V.same_device("q", q, cache.device)
    if tuple(q.shape) != (plan.B, plan.Hq, plan.D):
        raise VashistaInputError("q", f"expected shape {(plan.B, plan.Hq, plan.D)} (the plan's), got {tuple(q.shape)}")
    if (cache.n_kv_heads, cache.head_dim, cache.value_dim, cache.page_size) != (plan.Hkv, plan.D, plan.Dv, plan.S):
        raise VashistaInputError("cache", "is not the cache the plan was made for (heads, dimensions or page size differ)")
    mod = _backend_module(resolve_backend(backend, q.device))
    q32 = q.float()
    # a non-finite query row is routed as 0 (no NaN reaches the selections and kernels); its output is
    # NaN and its certificate ∞ — on the device, no synchronisation
    q_ok = torch.isfinite(q32).all(-1)
    q32 = torch.where(q_ok[..., None], q32, torch.zeros_like(q32))
    score_blocks = mod.score_blocks
    if share_selection_in_group and plan.G > 1:
        def score_blocks(*a, _f=mod.score_blocks):
            keys, ub, vn = _f(*a)
            return _share_in_group(plan, keys), ub, vn
    routed: Routed = route(plan, q32, cache, score_blocks, getattr(mod, "select", select_torch))
    s, keys = mod.score_tokens(plan, q32, cache, routed)
    sel_keys = _share_in_group(plan, keys) if share_selection_in_group and plan.G > 1 else keys
    cvals, cpos = torch.topk(sel_keys, plan.Kc, dim=-1, sorted=True)
    res = mod.finish(plan, q32, cache, routed, s, sel_keys, cvals, cpos)
    if plan.certify and plan.solver == "softmax":
        # every token a candidate: nothing is outside, the leakage stays exactly 0
        res = _sound_certificate(plan, q32, cache, res, (cvals != INVALID_KEY).sum(-1) >= plan.lens[:, None])
    res["out"] = torch.where(q_ok[..., None], res["out"], torch.full_like(res["out"], math.nan))
    if plan.certify and plan.solver == "softmax":
        res["certified_error"] = torch.where(q_ok, res["certified_error"], math.inf)
        res["certified_leakage"] = torch.where(q_ok, res["certified_leakage"], 1.0)
    if out_dtype is not None:
        res["out"], res["certified_error"] = cast_output(res["out"], res["certified_error"], out_dtype)
    cvalid = cvals != INVALID_KEY
    cand = torch.where(cvalid, key_index(cvals), torch.iinfo(torch.int64).max)
    cand, order = torch.sort(cand, dim=-1)
    return StepResult(out=res["out"], certified_leakage=res["certified_leakage"],
                      certified_error=res["certified_error"], gap=res["gap"],
                      candidates=torch.where(cand == torch.iinfo(torch.int64).max, -1, cand),
                      weights=torch.gather(res["weights"], -1, order),
                      pages=torch.where(routed.ok, routed.pages, -1), summaries_scored=routed.scored)


def sparse_decode(q: torch.Tensor, cache, seq_ids, P: int, Kc: int, *, solver: str = "softmax",
                  scale: float | None = None, sink_pages: int = 1, router: str = "bound", policy=None,
                  share_selection_in_group: bool = False, hierarchical: bool = False,
                  eps: float | None = None, iters: int = 50, backend: str = "auto",
                  check_finite: bool = True, bits: int | None = None) -> StepResult:
    """Sparse decode of q (B, Hq, D) over ``cache`` sequences ``seq_ids`` (one per batch row).

    Arguments as ``vashista_ref.sparse_decode.sparse_decode`` (``P`` pages besides the forced ones,
    ``Kc`` ≤ the shortest sequence's length, ``policy`` ReportOnly/DenseFallback/Capped from
    ``vashista_core.policies``, run by ``vashista_core.policy_loop``), plus ``backend`` and
    ``check_finite`` (skip the NaN scan of q). ``router="sketch"`` is certified mode (SPEC 3b,
    ``bits`` 4 or 8) by one of two paths, named in the result's ``path``:

    * ``"fused"`` — the Triton backend (CUDA, or ``backend="triton"`` under ``TRITON_INTERPRET=1``)
      on a cache the kernels support (``sketch_plan.fused_shapes_ok``):
      ``sketch_plan.paged_certified_decode``, which reads the page sketch through the page table and
      only the candidates' key/value rows; its certified error is the middle form L̂·(max‖v‖ + ‖o‖);
    * ``"torch"`` — otherwise: ``sketch.sketch_decode`` in float32 (per row: gathers the sequence),
      certified error the smallest of four forms.
    """
    q = V.tensor("q", q, ndim=3, check_finite=check_finite)
    V.same_device("q", q, cache.device)
    ids = V.index_tensor("seq_ids", seq_ids)
    if ids.numel() != q.shape[0]:
        raise VashistaInputError("seq_ids", f"has {ids.numel()} ids but q has batch size {q.shape[0]}")
    if q.shape[2] != cache.head_dim:
        raise VashistaInputError("q", f"has head dimension {q.shape[2]} but the cache stores keys of dimension {cache.head_dim}")
    policy = check_policy(policy)
    if solver in ("eg", "fw") and not isinstance(policy, ReportOnly):
        raise VashistaInputError("policy", "the eg/fw residual certificate is not implemented on the GPU tier; "
                                           "use ReportOnly() or the reference")
    if not isinstance(share_selection_in_group, bool):
        raise VashistaInputError("share_selection_in_group", "expected a bool")
    bits = check_sketch_options(router, bits, solver, share_selection_in_group, hierarchical)
    if bits is not None:
        V.positive_int("P", P)
        host_ids = [int(s) for s in ids.flatten().tolist()]
        be = resolve_backend(backend, q.device)
        if be == "triton" and HAS_TRITON and bits in (4, 8) and sketch_plan.fused_shapes_ok(cache, bits) is None:
            # through the module attribute, so a test's spy on sketch_plan.paged_certified_decode sees the call
            return sketch_plan.paged_certified_decode(q, cache, host_ids, Kc, bits=bits, scale=scale, policy=policy)
        return sketch_decode(q, cache, host_ids, Kc, bits=bits, scale=scale, policy=policy, backend=be)
    plan = plan_decode(cache, ids, q.shape[1], P, Kc, scale=scale, sink_pages=sink_pages, router=router,
                       solver=solver, hierarchical=hierarchical, eps=eps, iters=iters)
    shortest = min(plan.host_lens)
    V.positive_int("Kc", Kc, upper=shortest, upper_name="tokens in the shortest sequence")
    if isinstance(policy, Capped):
        policy.check_start(P, Kc)
    tol = getattr(policy, "tol", float("inf"))
    B, Hq = q.shape[:2]
    dev = q.device
    ok_of = (lambda r: r.certified_error <= tol) if solver == "softmax" else (lambda r: r.gap > 0)
    host_ids = ids.tolist()
    shared = share_selection_in_group and plan.G > 1
    st: dict = {}

    def unit_bad():
        """(B, Hq) uncertified, spread over the GQA group when the group shares its selection."""
        bad = ~st["certified"]
        if shared:
            bad = bad.view(B, plan.Hkv, plan.G).any(-1, keepdim=True).expand(-1, -1, plan.G).reshape(B, Hq)
        return bad

    def attempt(rows, P_cur, Kc_cur):
        if not st:                 # the first attempt covers every row, with the plan made above
            res = run_plan(plan, q, cache, backend=backend, share_selection_in_group=share_selection_in_group,
                           out_dtype=q.dtype)
            res.out = res.out.clone()
            res.certified = ok_of(res)
            res.P_used = torch.full((B, Hq), P, dtype=torch.int64, device=dev)
            res.Kc_used = torch.full((B, Hq), Kc, dtype=torch.int64, device=dev)
            st.update(res=res, certified=res.certified)
            return
        # a retry replaces the uncertified units of its rows (the schedule is the loop's, per batch row)
        res = st["res"]
        sub = run_plan(plan_decode(cache, ids[rows], Hq, P_cur, Kc_cur, scale=scale, sink_pages=sink_pages,
                                   router=router, solver=solver, hierarchical=hierarchical, eps=eps, iters=iters),
                       q[rows], cache, backend=backend, share_selection_in_group=share_selection_in_group,
                       out_dtype=q.dtype)
        redo = unit_bad()[rows]
        for f in ("certified_leakage", "certified_error", "gap"):
            getattr(res, f)[rows] = torch.where(redo, getattr(sub, f), getattr(res, f)[rows])
        res.out[rows] = torch.where(redo[..., None], sub.out, res.out[rows])
        res.P_used[rows] = torch.where(redo, P_cur, res.P_used[rows])
        res.Kc_used[rows] = torch.where(redo, Kc_cur, res.Kc_used[rows])
        res.certified[rows] = torch.where(redo, ok_of(sub), res.certified[rows])

    def dense(rows):
        res = st["res"]
        res.fell_back = ~res.certified
        d = dense_decode(q[rows], cache, ids[rows], scale=plan.scale).to(res.out.dtype)
        res.out[rows] = torch.where(res.fell_back[rows][..., None], d, res.out[rows])

    run_policy(policy, list(range(B)), P, Kc, attempt=attempt,
               uncertified=lambda: torch.nonzero(unit_bad().any(-1)).flatten().tolist(),
               limits=lambda b: (cache.length(host_ids[b]), cache.n_pages(host_ids[b])), dense=dense)
    res = st["res"]
    if res.fell_back is None:
        res.fell_back = torch.zeros((B, Hq), dtype=torch.bool, device=dev)
    if solver != "softmax":
        res.certified_error = torch.full_like(res.gap, float("nan"))
    res.out = res.out.to(q.dtype)
    return res

