"""One sparse paged decode step with a runtime certificate per (batch row, query head) — SPEC 2 and 3.

For a query q of KV head h // G in sequence b (G = Hq / Hkv query heads share a KV head):

  1. route (``routing.py``): score page summaries (``router="bound"``: scale·UB_p(q) from the min/max box;
     ``"mean"``: scale·⟨q, mean key⟩), keep the sink page(s), the newest page and the top-P others;
  2. candidates: score every token of the routed pages exactly, s_j = scale·⟨q, k_j⟩, keep the top-Kc
     (ties to the lower logical index);
  3. solve on the candidates C:
       softmax (default)  a = argmax_{a ∈ Δ_C} ⟨s_C, a⟩ + H(a) = softmax(s_C)  (dense attention restricted to C);
       eg / fw            α ≈ argmin_{α ∈ Δ_C} ½‖K_Cᵀα − q‖² − ε H(α)  (the projection model, paper's
                          ablation) by ``entropic.eg_weights`` / ``fw_weights`` with ``iters`` iterations;
  4. gather o = Σ_C a_j v_j;
  5. certify (``runtime_certificate.py``) from the exact scores read and the min/max boxes of every page
     not read — whatever the router — and apply the policy (``policies.py``).

Per-head vs shared selection (GQA). By default each query head routes and picks candidates on its own
(``share_selection_in_group=False``): best accuracy, G× the routing work. With
``share_selection_in_group=True`` the G heads of a group use one selection (scores: max over the group's
heads) so a kernel reads each page once per group; each head is still certified separately, on the
shared selection.

Hierarchical routing (``hierarchical=True``, cache built with ``fanout``) descends pages-of-pages; the
blocks it prunes enter the certificate through their own (looser) boxes.

Cost (per query; work shared by a GQA group is counted for every head that used it):
``summaries_scored`` (routing, plus the boxes the certificate evaluates when routing did not),
``pages_read`` and ``tokens_scored`` (keys read and scored exactly), ``values_read`` (values gathered);
all attempts of a ``Capped`` policy and a dense fallback (every page and token) are included.

Example:
    >>> import numpy as np
    >>> from vashista_ref.sparse_decode import sparse_decode_single
    >>> rng = np.random.default_rng(0)
    >>> K, V, q = rng.normal(size=(256, 16)), rng.normal(size=(256, 8)), rng.normal(size=16)
    >>> r = sparse_decode_single(q, K, V, P=4, Kc=32, page_size=16)
    >>> r.out.shape, bool(r.certified_error[0, 0] >= np.linalg.norm(r.out[0, 0] - r.dense_out()[0, 0]))
    ((1, 1, 8), True)
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from vashista_core.errors import VashistaInputError
from vashista_core.policies import Capped
from vashista_core.policy_loop import check_policy, run_policy

from .dense import (attend, check_decode_inputs, check_solver, dense_decode, projection_weights,
                    resolve_eps, resolve_scale, token_scores)
from .paged_cache import PagedKVCache
from .routing import ROUTERS, excluded_summaries, route, top_indices
from .runtime_certificate import projection_certificate, softmax_certificate
from .sketch import check_sketch_options, sketch_attempt
from .state import finalize, from_scores
from .validate import as_real_array, positive_int, query_and_keys

__all__ = ["COST_FIELDS", "DecodeResult", "sparse_decode", "sparse_decode_single"]

COST_FIELDS = ("summaries_scored", "pages_read", "tokens_scored", "values_read")


@dataclass
class DecodeResult:
    """Output and per-(batch, query head) certificate of a sparse decode step; arrays are (B, Hq).

    ``certified_error`` bounds ‖out − dense‖ (softmax solver; the tightest form, see
    ``runtime_certificate``); ``error_middle`` and ``error_2lv`` are the looser SPEC 3 forms. For eg/fw
    there is no output-error certificate: those are NaN and ``gap`` is the projection residual gap
    (``projection_gap``); for softmax ``gap`` is Δ̂ and ``projection_gap`` is NaN.
    ``pages[b][h]`` routed logical pages (ascending) and ``candidates[b][h]`` logical token indices (in
    selection order) of the last sparse attempt. ``fell_back`` marks queries recomputed densely.
    """
    out: np.ndarray
    certified_leakage: np.ndarray
    certified_error: np.ndarray
    error_middle: np.ndarray
    error_2lv: np.ndarray
    gap: np.ndarray
    projection_gap: np.ndarray
    solver_certificate: np.ndarray
    rounding: np.ndarray
    certified: np.ndarray
    fell_back: np.ndarray
    P_used: np.ndarray
    Kc_used: np.ndarray
    summaries_scored: np.ndarray
    pages_read: np.ndarray
    tokens_scored: np.ndarray
    values_read: np.ndarray
    pages: list = field(default_factory=list)
    candidates: list = field(default_factory=list)
    solver: str = "softmax"
    _dense: tuple | None = field(default=None, repr=False)

    def dense_out(self) -> np.ndarray:
        """Dense attention for the same queries (computed on demand, for comparisons and the CLI)."""
        q, cache, seq_ids, kw = self._dense
        return dense_decode(q, cache, seq_ids, **kw)


def _nonneg_int(name: str, value) -> int:
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)) or int(value) < 0:
        raise VashistaInputError(name, f"expected an integer >= 0, got {value!r}")
    return int(value)


def _routed_tokens(cache: PagedKVCache, sid: int, kvh: int, pages: np.ndarray):
    """Keys, values, logical indices and page max value norms of the routed pages' tokens."""
    S = cache.page_size
    vmax_page = cache.summaries(sid, kvh).vmax
    Ks, Vs, idx, vm = [], [], [], []
    for p in pages:
        k, v = cache.page_tokens(sid, int(p), kvh)
        Ks.append(k)
        Vs.append(v)
        idx.append(int(p) * S + np.arange(k.shape[0]))
        vm.append(np.full(k.shape[0], vmax_page[p]))
    return np.concatenate(Ks), np.concatenate(Vs), np.concatenate(idx), np.concatenate(vm)


def _attempt(qs, cache, sid, kvh, P, Kc, o):
    """One sparse step for queries qs (G', D) of one sequence and KV head; one record per query."""
    if o["router"] == "sketch":
        return sketch_attempt(qs, cache, sid, kvh, P, Kc, o)
    shared = qs.shape[0] > 1
    routing = route(qs, cache, sid, kvh, P, o["sink_pages"], o["router"], o["scale"],
                    hierarchical=o["hierarchical"])
    Kr, Vr, tok, vmax_tok = _routed_tokens(cache, sid, kvh, routing.pages)
    scores = np.stack([token_scores(q, Kr, o["scale"]) for q in qs])     # raises if a score overflows
    kc = min(Kc, Kr.shape[0])
    shared_sel = top_indices(scores.max(axis=0), kc) if shared else None
    ex = excluded_summaries(cache, sid, kvh, routing)
    # the top summary level (pages, or the ≤ F root nodes of the hierarchy) covers every token: its
    # boxes bound Σ_d |q_d k_d| for the rounding term and its value norms give max_j ‖v_j‖
    top = cache.summaries(sid, kvh, cache.n_levels(sid) - 1 if o["hierarchical"] else 0)
    key_abs = np.maximum(np.abs(top.kmin), np.abs(top.kmax))
    vmax_all, n_total = float(top.vmax.max()), cache.length(sid)
    # the certificate evaluates every excluded box; the bound router already did during routing
    cert_cost = routing.summaries_scored + (ex.count.shape[0] if o["router"] == "mean" else 0)
    records = []
    for i, q in enumerate(qs):
        sel = shared_sel if shared else top_indices(scores[i], kc)
        out_mask = np.ones(Kr.shape[0], dtype=bool)
        out_mask[sel] = False
        ub = ex.upper_bound(q) * o["scale"]
        rec = dict(pages=routing.pages.copy(), candidates=tok[sel], P=P, Kc=Kc,
                   cost=dict(summaries_scored=cert_cost, pages_read=len(routing.pages),
                             tokens_scored=Kr.shape[0], values_read=len(sel)))
        if o["solver"] == "softmax":
            rec["out"] = finalize(from_scores(scores[i, sel], Vr[sel]))
            c = softmax_certificate(
                s_cand=scores[i, sel], o_sparse=rec["out"], s_scored_out=scores[i, out_mask],
                vmax_scored_out=vmax_tok[out_mask], log_u_blocks=np.log(ex.count) + ub, s_bound_blocks=ub,
                vmax_blocks=ex.vmax, vmax_all=vmax_all, n_total=n_total,
                score_abs_max=float((key_abs @ np.abs(q)).max()) * o["scale"], head_dim=q.shape[0])
            rec.update(leakage=c.leakage, error=c.error, error_middle=c.error_middle, error_2lv=c.error_2lv,
                       gap=c.gap, rounding=c.rounding, projection_gap=np.nan, solver_certificate=np.nan)
            rec["certified"] = bool(np.isfinite(c.error) and c.error <= o["tol"])   # ∞ = nothing can be said
        else:
            alpha, solver_cert = projection_weights(o["solver"], q, Kr[sel], o["eps"], o["iters"])
            rec["out"] = alpha @ Vr[sel]
            pc = projection_certificate(q, alpha @ Kr[sel], Kr[out_mask], ex.kmin, ex.kmax)
            rec.update(leakage=np.nan, error=np.nan, error_middle=np.nan, error_2lv=np.nan, gap=pc.gap,
                       rounding=np.nan, projection_gap=pc.gap, solver_certificate=solver_cert)
            rec["certified"] = bool(pc.gap > 0)          # NaN (q inside the hull) is not certified
        records.append(rec)
    return records


def sparse_decode(q, cache: PagedKVCache, seq_ids, P: int, Kc: int, *, solver: str = "softmax",
                  scale: float | None = None, sink_pages: int = 1, router: str = "bound",
                  policy=None, share_selection_in_group: bool = False, hierarchical: bool = False,
                  eps: float | None = None, iters: int = 50, bits: int | None = None) -> DecodeResult:
    """Sparse decode of q (B, Hq, D) over ``cache`` sequences ``seq_ids`` (one per batch row).

    ``P`` >= 1 pages routed besides the forced ones (sink_pages first pages and the newest page), ``Kc``
    candidate tokens (1 <= Kc <= the shortest sequence's length; fewer when the routed pages hold fewer),
    ``scale`` defaults to 1/sqrt(D), ``eps`` (eg/fw only) to 1/scale, ``iters`` their iteration count,
    ``policy`` one of ReportOnly() (default), DenseFallback(tol), Capped(tol, P_max, Kc_max).
    ``router="sketch"`` is certified mode (``sketch.py``, SPEC 3b; ``bits`` 4 or 8, default 4): top-Kc by
    a quantized key sketch of every token, certified from per-token sketch bounds; P is not used.
    """
    q, seq_ids, G = check_decode_inputs(q, cache, seq_ids)
    solver = check_solver(solver)
    if router not in ROUTERS + ("sketch",):
        raise VashistaInputError("router", f"must be one of {ROUTERS + ('sketch',)}, got {router!r}")
    bits = check_sketch_options(router, bits, solver, share_selection_in_group, hierarchical)
    P = positive_int("P", P)
    shortest = min(cache.length(s) for s in seq_ids)
    Kc = positive_int("Kc", Kc, upper=shortest, upper_name="tokens in the shortest sequence")
    sink_pages = _nonneg_int("sink_pages", sink_pages)
    iters = positive_int("iters", iters)
    policy = check_policy(policy)
    if isinstance(policy, Capped):
        policy.check_start(P, Kc)
    if not isinstance(share_selection_in_group, (bool, np.bool_)):
        raise VashistaInputError("share_selection_in_group", "expected a bool")
    if hierarchical and cache.fanout is None:
        raise VashistaInputError("hierarchical", "the cache was built without a hierarchy (fanout=None)")
    scale = resolve_scale(scale, cache.head_dim)
    opts = dict(solver=solver, scale=scale, sink_pages=sink_pages, router=router, hierarchical=bool(hierarchical),
                eps=resolve_eps(eps, scale), iters=iters,
                tol=getattr(policy, "tol", np.inf), bits=bits)

    B, Hq, _ = q.shape
    Dv = cache.value_dim
    f = lambda v, dt=float: np.full((B, Hq), v, dtype=dt)  # noqa: E731
    res = DecodeResult(out=np.empty((B, Hq, Dv)), certified_leakage=f(np.nan), certified_error=f(np.nan),
                       error_middle=f(np.nan), error_2lv=f(np.nan), gap=f(np.nan), projection_gap=f(np.nan),
                       solver_certificate=f(np.nan), rounding=f(np.nan), certified=f(False, bool),
                       fell_back=f(False, bool), P_used=f(0, np.int64), Kc_used=f(0, np.int64),
                       **{c: f(0, np.int64) for c in COST_FIELDS},
                       pages=[[None] * Hq for _ in range(B)], candidates=[[None] * Hq for _ in range(B)],
                       solver=solver,
                       _dense=(q, cache, seq_ids, dict(solver=solver, scale=scale, eps=opts["eps"], iters=iters)))
    for b, sid in enumerate(seq_ids):
        for kvh in range(cache.n_kv_heads):
            heads = list(range(kvh * G, (kvh + 1) * G))
            units = [heads] if share_selection_in_group else [[h] for h in heads]
            for unit in units:
                _decode_unit(res, q, cache, b, sid, kvh, unit, P, Kc, policy, opts)
    return res


def _decode_unit(res, q, cache, b, sid, kvh, unit, P, Kc, policy, opts) -> None:
    """Run the policy for one unit (a head, or a GQA group sharing a selection) and fill ``res``:
    every attempt adds its cost, the last attempt's records are reported, and heads left
    uncertified fall back to dense attention (``vashista_core.policy_loop`` owns the loop)."""
    recs: list = []
    K_all = V_all = None

    def attempt(_units, P_cur, Kc_cur):
        recs[:] = _attempt(q[b, unit], cache, sid, kvh, P_cur, Kc_cur, opts)
        for h, rec in zip(unit, recs):
            for c in COST_FIELDS:
                getattr(res, c)[b, h] += rec["cost"][c]
            res.out[b, h] = rec["out"]
            res.certified_leakage[b, h] = rec["leakage"]
            res.certified_error[b, h] = rec["error"]
            res.error_middle[b, h] = rec["error_middle"]
            res.error_2lv[b, h] = rec["error_2lv"]
            res.gap[b, h] = rec["gap"]
            res.projection_gap[b, h] = rec["projection_gap"]
            res.solver_certificate[b, h] = rec["solver_certificate"]
            res.rounding[b, h] = rec["rounding"]
            res.certified[b, h] = rec["certified"]
            res.P_used[b, h], res.Kc_used[b, h] = rec["P"], rec["Kc"]
            res.pages[b][h], res.candidates[b][h] = rec["pages"], rec["candidates"]

    def dense(_units):
        nonlocal K_all, V_all
        for h, rec in zip(unit, recs):
            if rec["certified"]:
                continue
            if K_all is None:
                K_all, V_all = cache.gather(sid, kvh)
            res.out[b, h] = attend(opts["solver"], q[b, h], K_all, V_all, opts["scale"], opts["eps"], opts["iters"])
            res.fell_back[b, h] = True
            res.pages_read[b, h] += cache.n_pages(sid)
            res.tokens_scored[b, h] += K_all.shape[0]
            res.values_read[b, h] += K_all.shape[0]

    run_policy(policy, [0], P, Kc, attempt=attempt,
               uncertified=lambda: [] if all(r["certified"] for r in recs) else [0],
               limits=lambda _u: (cache.length(sid), cache.n_pages(sid)), dense=dense)


def sparse_decode_single(q, K, V, P: int, Kc: int, *, page_size: int = 16, **kwargs) -> DecodeResult:
    """Convenience for one sequence and one head: q (D,), K (T, D), V (T, Dv) are paged with
    ``page_size`` and decoded by :func:`sparse_decode`; the result has B = Hq = 1."""
    q, K = query_and_keys(q, K)
    V = as_real_array("V", V, ndim=2)
    if V.shape[0] != K.shape[0]:
        raise VashistaInputError("V", f"has {V.shape[0]} rows but K has {K.shape[0]}")
    cache, seqs = PagedKVCache.from_dense(K[:, None, :], V[:, None, :], page_size)
    return sparse_decode(q[None, None, :], cache, seqs, P, Kc, **kwargs)
