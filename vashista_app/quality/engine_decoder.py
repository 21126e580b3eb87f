"""The engine (``vashista_gpu.engine``, issue 14) as the long-context suite's decoder (``decoder.py`` seam).

``prefill`` is the HF decoder's (a dense forward of the context, in chunks, into a ``DynamicCache``), so
the two decoders start every mode from the same keys and values. ``run`` copies that cache into a fresh
:class:`~vashista_gpu.engine.Engine` whose ``VashistaCache`` is laid out for the mode, then decodes one
token per step through the engine's attention: on CUDA the whole step of the model — the feed or
greedy token, every layer, the LM head, the log-probability and the argmax — is captured once in a
CUDA graph and replayed per token; on the CPU the same step runs eagerly on the engine's host path.

How each mode of ``modes.py`` maps onto the engine (every budget exactly as ``mode_setting`` sets it:
``StepConfig.kc`` / ``pages`` carry the suite's Kc and P, not the engine's own budget rule):

* ``dense``           engine ``mode="dense"`` (exact attention over the paged cache, 16-token pages);
* ``cert-intB-b-*``   ``mode="certified"``, ``bits`` B, page size = the sketch group (64 for int8, 16
  for int4), Kc = b·ctx; ``report`` → ReportOnly, ``fallback[@t]`` → DenseFallback(t), on the device
  inside the graph (capacity B·Hq: cannot overflow);
* ``paged-b``         ``mode="paged"`` (bound router, 16-token pages, one sink page), P and Kc of
  ``budget_setting``;
* ``window-b``        ``mode="dense"`` with the sparse layers' attention replaced, inside the captured
  step, by the sink + recent-window baseline (``window.py``'s selection: the first ``sink`` and the last
  ``window`` tokens, gathered from the pool through its page table; :func:`window_attention`). It has no
  certificate: its steps record a vacuous one (+inf) and, with the shadow, their true error. (Until the
  fifth session this mode ran on the HF decoder, at ~7.5 s per 32k record against ~2 s for a certified
  mode on the engine.)

Statistics per sparse layer, as the HF decoder reports them (``hf.stats.DecodeStats`` keys): decode
steps (row × head queries), fallback rate, certified error (the engine's ``StepStats``: mean over the
finite certificates), and — with the float64 shadow, on by default — the true error of the output the
model consumes against exact dense attention in float64 over the same cache, and certificate
violations (true > certified + the shadow's own float64 rounding allowance, as ``hf/stats.py``). The
shadow reads the engine's pool (the only copy of K/V), at the padded segment length, so it is captured
in the graph with the step. Not produced by the engine: the dense gap Δ̂, supports and true leakage
per head (``hf/stats.py`` extras the long-context records do not carry). Bytes read per token are the
model of ``modes.relative_bytes``, as for the HF decoder. Exceedance curves on ``modes.TOL_GRID``
(``EngineStats.exceedance``, as ``DecodeStats.exceedance``): per layer and tolerance t, the queries
whose certified error exceeds t (the certificate the step reports, the first attempt's on a fallen-back
head, as the HF decoder records it) and, with the shadow, those whose true error does — counted on
the device into one (layers, len(TOL_GRID), 2) float64 tensor, in place, so the captured step
accumulates them with no host synchronisation.

A fallback mode runs DenseFallback at its own tolerance (``cert-...-fallback@t``) or the decoder's
``tol`` (the suite's ``--tol``), as the HF decoder does.

Batches (``run_batch``; ``run`` is a batch of one; the suite's ``--batch``). Several items of one
context decode together, one batch row each, in one engine: what they share is the fixed cost of a run
— the engine's construction, the plan, the graph capture (its two eager steps) — and each step's
fixed latency (one graph replay of the same launches, one host read per generated token), which does
not grow with B; the attention's reads and the shadow's work do.
What they do not share: each row's own prefill (copied into its own pages; ragged lengths, each row's
next position is its length), its fed tokens (rows of different lengths: row b is fed while the step
counter is below its feed's length, then takes its previous argmax), its ``max_new`` and ``stop``, its
log-probabilities and its statistics. The step is one (B, 1) forward; nll and the argmax are written
to (steps, B) device buffers, indexed by the 1-element step counter (no host synchronisation). Rows
finish at different steps: the batch steps until its last row is done (a finished row keeps stepping,
harmlessly — every row's pages are reserved for the longest row's steps), and each row's statistics
are per row — its own ``StepStats``, shadow and exceedance accumulators (``_instrument``) — copied on
the device when the row is done, so they count its own steps only. The float64 shadow checks every
row in one batched gather (each row masked to its length); the window baseline runs row by row. On the
CPU host path a sparse layer's attention runs one row at a time (that path reports its statistics per
group of rows of equal Kc, which would not say whose they are); the planned (CUDA) path runs every row
in one launch per kernel. There a segment has one
Kc (the mode's, capped at the shortest row: the suite's budgets are far below any item's length) and
one padded length (the longest row's reservation), so a row's step matches its lone run up to the
rounding of a differently shaped launch. ``seconds`` and ``phases`` of a batched result are the
batch's divided by its rows.

Example::

    >>> dec = EngineDecoder(model, tok)                                   # doctest: +SKIP
    >>> r = dec.run(dec.prefill(item.context), parse_mode("cert-int8-1/16-fallback"), 32768, item.query, 12)
    >>> rs = dec.run_batch([dec.prefill(it.context) for it in items], parse_mode("paged-1/16"), 32768,
    ...                    [it.query for it in items], [it.max_new for it in items])   # doctest: +SKIP
"""
from __future__ import annotations

import math
import time

import torch

from vashista_core.errors import VashistaInputError
from vashista_core.policies import DenseFallback, ReportOnly

from .decoder import DecodeResult, HFDecoder
from .modes import TOL_GRID, Mode, mode_setting, mode_tol

__all__ = ["ENGINE_KINDS", "EngineDecoder", "EngineStats", "pick_decoder", "window_attention"]

ENGINE_KINDS = ("dense", "certified", "paged", "window")
# shadow accumulators per layer: queries checked, sum and max of the true error, violations
_SH_N, _SH_SUM, _SH_MAX, _SH_VIOL = range(4)
# exceedance counters per layer and tolerance of TOL_GRID: certified error above t, true error above t
_EX_CERT, _EX_TRUE = range(2)


def pick_decoder(name: str, device: str) -> str:
    """``auto`` → the engine on CUDA, the HF decoder on the CPU (the HF path stays the CPU/debug path
    and the differential check); ``engine`` / ``hf`` as asked."""
    if name == "auto":
        return "engine" if device == "cuda" else "hf"
    return name


class EngineStats:
    """The statistics of one row of an engine run (one item), with the methods ``longctx.stats_fields`` reads
    (``summary``, ``per_layer``, ``exceedance``, as ``hf.stats.DecodeStats``). ``step`` the engine's
    ``StepStats`` tensor (layers × STAT_FIELDS), ``shadow`` the (layers × 4) float64 shadow accumulators
    or None, ``exceed`` the (layers × len(TOL_GRID) × 2) exceedance counters, ``sparse`` the sparse
    layers."""

    def __init__(self, step: torch.Tensor, shadow: torch.Tensor | None, sparse: list[int], exceed: torch.Tensor):
        from vashista_gpu.engine.step import STAT_FIELDS

        self.f = {k: i for i, k in enumerate(STAT_FIELDS)}
        self.step = step.cpu()
        self.shadow = None if shadow is None else shadow.cpu()
        self.exceed = exceed.cpu()
        self.sparse = sparse

    def per_layer(self) -> list[dict]:
        f, out = self.f, []
        for L in self.sparse:
            r = self.step[L]
            q, fin = float(r[f["queries"]]), float(r[f["queries"]] - r[f["nonfinite"]])
            d = dict(layer=L, steps=int(q), fallback_rate=float(r[f["fell_back"]]) / q if q else 0.0,
                     certified_error_mean=float(r[f["error_sum"]]) / fin if fin else math.nan)
            if self.shadow is not None:
                s = self.shadow[L]
                d.update(true_error_mean=float(s[_SH_SUM] / s[_SH_N]) if s[_SH_N] else math.nan,
                         violations=int(s[_SH_VIOL]))
            out.append(d)
        return out

    def exceedance(self, thresholds) -> list[dict]:
        """Per sparse layer: queries, and per tolerance of ``TOL_GRID`` (the only ``thresholds`` the
        engine counts on) the number of certified and of true errors (None without the shadow) above it."""
        if tuple(float(t) for t in thresholds) != TOL_GRID:
            raise VashistaInputError("thresholds", f"the engine decoder counts on TOL_GRID {TOL_GRID} only, "
                                                   f"got {tuple(thresholds)}")
        out = []
        for L in self.sparse:
            ex = self.exceed[L].long()
            out.append(dict(layer=L, queries=int(self.step[L, self.f["queries"]]),
                            certified=ex[:, _EX_CERT].tolist(),
                            true=None if self.shadow is None else ex[:, _EX_TRUE].tolist()))
        return out

    def summary(self) -> dict:
        f = self.f
        rows = self.step[self.sparse]
        q, fell = float(rows[:, f["queries"]].sum()), float(rows[:, f["fell_back"]].sum())
        s = dict(steps=int(q), fallback_rate=fell / q if q else 0.0, shadow=self.shadow is not None,
                 certificate_violations=0, overflow=int(rows[:, f["overflow"]].sum()),
                 nonfinite=int(rows[:, f["nonfinite"]].sum()))
        if self.shadow is not None and q:
            sh = self.shadow[self.sparse]
            s.update(certificate_violations=int(sh[:, _SH_VIOL].sum()), max_true_error=float(sh[:, _SH_MAX].max()),
                     max_certified_error=float(rows[:, f["error_max"]].max()))
        return s


def window_attention(pool, sid, q, scale: float, sink: int, window: int, page_size: int):
    """(1, Hq, Dv) softmax attention of the decode query ``q`` (1, Hq, D) of row ``sid`` over the first
    ``sink`` and the last ``window`` of its ``n`` stored tokens (``window.keep_mask``: positions p < sink
    or p ≥ n − window, each once), gathered from the pool's pages through its page table, in ``q``'s
    dtype. ``n`` is read on the device (this step's key included): no host synchronisation, static
    shapes, so it runs inside a captured step."""
    dev = q.device
    n = pool.seq_lens[sid].long()
    js, jr = torch.arange(sink, device=dev), torch.arange(window, device=dev)
    recent = n - window + jr
    pos = torch.cat([js, recent])
    keep = torch.cat([js < n, (recent >= sink) & (recent >= 0)])
    pos = torch.where(keep, pos, torch.zeros_like(pos))
    phys = pool.block_table[sid].long().index_select(0, torch.div(pos, page_size, rounding_mode="floor"))
    slot = pos % page_size
    k, v = pool.k_pages[phys, :, slot], pool.v_pages[phys, :, slot]        # (sink + window, Hkv, D)
    Hkv = k.shape[1]
    qg = q.reshape(Hkv, -1, q.shape[-1])                                   # (Hkv, G, D): GQA groups
    s = torch.einsum("hgd,nhd->hgn", qg, k.to(q.dtype)) * scale
    s = s.masked_fill(~keep, float("-inf"))
    o = torch.einsum("hgn,nhd->hgd", torch.softmax(s, dim=-1), v.to(q.dtype))
    return o.reshape(1, -1, o.shape[-1])


class _Instruments:
    """The per-row statistics of one engine run of ``rows`` batch rows (:func:`_instrument`): for each
    row its own ``StepStats`` (``steps[b]``), float64 shadow accumulators ``shadow[b]`` (layers × 4, or
    None without the shadow) and exceedance counters ``exceed[b]`` (layers × len(TOL_GRID) × 2).
    ``span`` = (first row, rows) that the statistics of the layer being decoded belong to: every row,
    except while the host path decodes one row at a time."""

    def __init__(self, rows: int, n_layers: int, device, shadow: bool, sparse: list[int]):
        from vashista_gpu.engine.step import StepStats

        self.rows, self.sparse = rows, sparse
        self.steps = [StepStats(n_layers, device) for _ in range(rows)]
        self.shadow = torch.zeros((rows, n_layers, 4), dtype=torch.float64, device=device) if shadow else None
        self.exceed = torch.zeros((rows, n_layers, len(TOL_GRID), 2), dtype=torch.float64, device=device)
        self.span = (0, rows)

    def snapshot(self, b: int) -> tuple:
        """Device copies of row ``b``'s accumulators now (no host synchronisation): taken when the row
        is done, so the steps the batch runs after it (for its other rows) are not counted."""
        return (self.steps[b].t.clone(), None if self.shadow is None else self.shadow[b].clone(),
                self.exceed[b].clone())

    def stats(self, snap: tuple) -> "EngineStats":
        step, shadow, exceed = snap
        return EngineStats(step, shadow, self.sparse, exceed)


def _instrument(runner, n_layers: int, device, shadow: bool, sparse: list[int], rows: int = 1) -> _Instruments:
    """Per-row statistics of a batch of ``rows`` rows (:class:`_Instruments`): wrap ``runner.stats.add``
    so every sparse layer's certificate is counted, per row, into the row's ``StepStats`` and on
    ``TOL_GRID`` and, with ``shadow``, ``runner.decode`` so every sparse layer's step is checked, for
    every row, against the float64 dense shadow and its true error counted on ``TOL_GRID`` (module
    doc). Device work only, in place (capturable). On the host path (CPU) a sparse layer's attention
    runs one row at a time (``runner.decode`` called with one row declared in the cache), because the
    host path splits the rows into groups of equal Kc, each reported by its own ``stats.add``; the
    planned path reports every row in one call."""
    from vashista_gpu.hf.stats import ROUNDING, exact_attention

    inst = _Instruments(rows, n_layers, device, shadow, sparse)
    grid = torch.tensor(TOL_GRID, dtype=torch.float64, device=device)[None, :, None]   # once, before capture
    # each layer's certificates of every row, the one each row's output reports (the shadow's reference)
    cert = torch.zeros((n_layers, rows, runner.cache.n_q_heads), dtype=torch.float64, device=device)
    decode, cache = runner.decode, runner.cache

    def above(x):
        # (n, len(TOL_GRID)) per row of x (n, Hq): not x <= t, as DenseFallback flags (a non-finite
        # certificate exceeds every tolerance)
        return (~(x.double().flatten(1)[:, None, :] <= grid)).sum(-1)

    def record(layer, err, leak, tol, fell=None, overflow=None):
        r0, n = inst.span
        err, leak = err.reshape(n, -1), leak.reshape(n, -1)               # (n, Hq): one line per row
        fell = None if fell is None else fell.reshape(n, -1)
        overflow = None if overflow is None else overflow.reshape(n, -1)
        cert[layer, r0:r0 + n].copy_(err)            # the certificate the step reports for its output
        inst.exceed[r0:r0 + n, layer, :, _EX_CERT].add_(above(err))
        for j in range(n):
            inst.steps[r0 + j].add(layer, err[j:j + 1], leak[j:j + 1], tol,
                                   fell=None if fell is None else fell[j:j + 1],
                                   overflow=None if overflow is None else overflow[j:j + 1])

    def by_row(layer, q, scale):
        if runner.cfg.planned or rows == 1 or layer not in sparse:
            return decode(layer, q, scale)
        held, outs = cache.rows, []
        try:
            for b, sid in enumerate(held):
                cache.begin([sid])
                inst.span = (b, 1)
                outs.append(decode(layer, q[b:b + 1], scale))
        finally:
            cache.begin(held)
            inst.span = (0, rows)
        return torch.cat(outs)

    def checked(layer, q, scale):
        out = by_row(layer, q, scale)
        if layer not in sparse:
            return out
        pool, S = cache.pools[layer], cache.page_size
        idx = cache.row_idx.long()
        # planned (graph) path: the segment's padded length, static; host path: the longest row now
        # (this step's key already appended); each row masked to its own length
        longest = runner.T_cap if runner.cfg.planned else max(pool.length(s) for s in cache.rows)
        NP = math.ceil(longest / S)
        pages = pool.block_table.index_select(0, idx)[:, :NP].long()                  # (rows, NP)
        B, H = pages.shape[0], pool.n_kv_heads
        k = pool.k_pages[pages].permute(0, 2, 1, 3, 4).reshape(B, H, NP * S, -1)
        v = pool.v_pages[pages].permute(0, 2, 1, 3, 4).reshape(B, H, NP * S, -1)
        valid = torch.arange(NP * S, device=q.device)[None] < pool.seq_lens.index_select(0, idx).long()[:, None]
        # unwritten slots are NaN in the pool: zero them so the masked positions stay exact zeros
        k, v = torch.nan_to_num(k), torch.nan_to_num(v)
        _, _, o, vmax = exact_attention(q, k, v, valid, scale)
        te = (out.to(q.dtype).double() - o).norm(dim=-1)                   # (rows, Hq): what the model reads
        allow = ROUNDING[torch.float64] * (vmax + o.norm(dim=-1))
        viol = te > cert[layer] + allow
        a = inst.shadow[:, layer]                                          # (rows, 4): a view
        a[:, _SH_N].add_(te.shape[1])
        a[:, _SH_SUM].add_(te.sum(1))
        a[:, _SH_MAX].copy_(torch.maximum(a[:, _SH_MAX], te.amax(1)))
        a[:, _SH_VIOL].add_(viol.sum(1))
        inst.exceed[:, layer, :, _EX_TRUE].add_(above(te))
        return out

    runner.stats.add = record
    runner.decode = checked if shadow else by_row
    return inst


def _unwrap(runner) -> None:
    """Undo :func:`_instrument`'s and the window's wrappers (instance attributes over the class's
    methods). They close over the runner, a reference cycle that only Python's cyclic collector frees,
    and it runs on Python allocations, not device memory: on a GPU every run's cache (~6 GB at 32k,
    batch 8, for the 0.5B model) stayed allocated until it did, and a sweep ran out of memory after
    ~10 batches (the eleventh session). Unwrapped, the engine and its cache go when the run returns."""
    runner.__dict__.pop("decode", None)
    runner.stats.__dict__.pop("add", None)


class _PhaseClock:
    """Seconds per phase of one engine run (``DecodeResult.phases``): where a mode's time goes — the
    engine's construction, the prefill copy and plan, the capture (two eager steps included), the
    teacher-forced replays, the greedy loop, the statistics. On CUDA each lap synchronises first (a
    handful per run, none inside the decode loop), so device work is charged to its phase."""

    def __init__(self, device):
        self.cuda = torch.device(device).type == "cuda"
        self.t = time.perf_counter()
        self.laps: dict[str, float] = {}

    def lap(self, name: str) -> None:
        if self.cuda:
            torch.cuda.synchronize()
        now = time.perf_counter()
        self.laps[name] = round(self.laps.get(name, 0.0) + now - self.t, 4)
        self.t = now


class EngineDecoder:
    """Decoder on the engine (module docstring); the same constructor arguments as :class:`HFDecoder`
    plus ``graph`` (None: on CUDA). The prefill is an HF decoder's, built from the same model."""

    name = "engine"

    def __init__(self, model, tok, *, dense_layers=(0, 1), backend: str = "torch", tol: float = 1e-2,
                 shadow: bool = True, graph: bool | None = None):
        self.model, self.tok = model, tok
        self.dense_layers = tuple(sorted(set(int(i) for i in dense_layers)))
        self.tol, self.shadow, self.graph = float(tol), shadow, graph
        self.eos = getattr(tok, "eos_token_id", None)
        self.hf = HFDecoder(model, tok, dense_layers=dense_layers, backend=backend, tol=tol, shadow=False)
        self.device = next(model.parameters()).device

    def prefill(self, ids: list[int]):
        return self.hf.prefill(ids)

    def _engine(self, mode: Mode, ctx: int, total: int, tol: float | None, rows: int = 1):
        from vashista_gpu.engine import Engine

        s = mode_setting(mode, ctx)
        S = s.get("page_size", 16)
        policy = ReportOnly() if tol is None else DenseFallback(tol)
        kind = "dense" if mode.kind == "window" else mode.kind       # the window replaces dense attention
        eng = Engine(self.model, mode=kind, bits=s.get("bits") or 4, budget=1.0, policy=policy,
                     tol=self.tol if tol is None else tol, max_seqs=rows, max_tokens=S * math.ceil(total / S),
                     page_size=S, graph=self.graph, dense_layers=self.dense_layers, progress=False,
                     one_sided=True)    # the suite's modes: the one-sided bound, as every recorded run
        eng.runner.cfg.kc = s.get("Kc")
        eng.runner.cfg.pages = s.get("P")           # certified: only the CPU path reads it
        if mode.kind == "window":
            self._window(eng, s["sink"], s["window"])
        return eng

    def _window(self, eng, sink: int, window: int):
        """Route the sparse layers' decode attention to :func:`window_attention`, one row at a time."""
        runner, cache = eng.runner, eng.cache
        dense, tol = runner.decode, self.tol
        # no certificate: a vacuous one (error +inf, leakage 1) per (row, head), made once, not per step
        inf = torch.full((cache.max_seqs, cache.n_q_heads), float("inf"), dtype=torch.float64, device=eng.device)
        one = torch.ones_like(inf)

        def windowed(layer, q, scale):
            if layer in self.dense_layers:
                return dense(layer, q, scale)
            rows = cache.rows
            out = torch.cat([window_attention(cache.pools[layer], sid, q[b:b + 1], scale, sink, window, cache.page_size)
                             for b, sid in enumerate(rows)])
            runner.stats.add(layer, inf[:len(rows)], one[:len(rows)], tol)
            return out
        runner.decode = windowed

    def run(self, state, mode: Mode, ctx: int, feed: list[int], max_new: int, stop=None) -> DecodeResult:
        """One item: :meth:`run_batch` of one row."""
        return self.run_batch([state], mode, ctx, [feed], [max_new], [stop])[0]

    def run_batch(self, states, mode: Mode, ctx: int, feeds, max_news, stops=None) -> list[DecodeResult]:
        """Decode several items of one context together, one batch row each (module doc, "Batches"):
        row b starts from its prefill ``states[b]``, is fed ``feeds[b]`` and generates up to
        ``max_news[b]`` tokens, stopping at EOS or when ``stops[b](generated)`` says so (None: never).
        Returns one :class:`DecodeResult` per row, as :meth:`run` on that item alone gives (its tokens,
        log-probabilities and statistics of its own steps); ``seconds`` and ``phases`` are the batch's
        divided by its rows (the rows' shares of the time are not separable)."""
        if mode.kind not in ENGINE_KINDS:
            raise VashistaInputError("mode", f"the engine decoder runs {ENGINE_KINDS}, got {mode.kind!r}")
        states = list(states)
        B = len(states)
        if B == 0:
            raise VashistaInputError("states", "expected at least one prefill state")
        stops = [None] * B if stops is None else list(stops)
        feeds = [[int(t) for t in f] for f in feeds]
        max_news = list(max_news)
        for name, xs in (("feeds", feeds), ("max_news", max_news), ("stops", stops)):
            if len(xs) != B:
                raise VashistaInputError(name, f"expected one per state ({B}), got {len(xs)}")
        if any(len(f) == 0 for f in feeds):
            raise VashistaInputError("feeds", "every row needs at least one fed token")
        if any(isinstance(m, bool) or not isinstance(m, int) or m < 0 for m in max_news):
            raise VashistaInputError("max_news", f"expected integers >= 0, got {max_news}")
        t0 = time.perf_counter()
        n0 = [st.get_seq_length() for st in states]
        # every row's reservation covers the longest row's steps: a row that is done keeps stepping
        # with the others (one row: the tokens of the run, as before batching)
        reach = max(len(f) + m for f, m in zip(feeds, max_news))
        totals = [n + reach for n in n0]
        clock = _PhaseClock(self.device)
        tol = mode_tol(mode, self.tol)
        eng = self._engine(mode, ctx, max(totals), tol, B)
        clock.lap("engine")
        try:
            with eng, torch.no_grad():
                rows = self._decode(eng, mode, states, n0, totals, feeds, max_news, stops, clock)
        finally:
            _unwrap(eng.runner)
        seconds = (time.perf_counter() - t0) / B
        phases = {k: round(v / B, 4) for k, v in clock.laps.items()}
        return [DecodeResult(nll=nll, generated=gen, stats=stats, seconds=seconds,
                             decoder="engine-graph" if eng.graph else "engine", phases=phases, tol=tol)
                for nll, gen, stats in rows]

    def _decode(self, eng, mode: Mode, states, n0, totals, feeds, max_news, stops, clock):
        cache, dev = eng.cache, eng.device
        B = len(states)
        sids = [cache.add_sequence(t) for t in totals]
        cache.begin(sids, None, position=max(n0))
        for sid, state in zip(sids, states):
            for i, pool in enumerate(cache.pools):           # each row's dense prefill, copied in
                layer = state.layers[i]
                pool.append(sid, layer.keys[0].transpose(0, 1), layer.values[0].transpose(0, 1))
        for sid, t in zip(sids, totals):
            eng.reserved[sid] = t
        eng.plan_segment(sids)
        # the layers whose attention is not exact: every layer but the dense ones, none in dense mode
        sparse = [] if mode.kind == "dense" else [L for L in range(cache.n_layers) if L not in self.dense_layers]
        inst = _instrument(eng.runner, cache.n_layers, dev, self.shadow, sparse, rows=B)
        clock.lap("copy_and_plan")
        nf = [len(f) for f in feeds]
        # steps of the batch: until its last row is done (the last greedy token of a row needs no step)
        steps = max(n + max(m - 1, 0) for n, m in zip(nf, max_news))
        width = max(nf) + 1
        # row b's fed tokens, then its last one repeated (read only as the target of a step past its feed)
        feed_t = torch.tensor([f + [f[-1]] * (width - len(f)) for f in feeds], dtype=torch.long, device=dev)
        nf_t = torch.tensor(nf, dtype=torch.long, device=dev)
        # the step counter and every index are device tensors: indexing with a 0-d tensor would read
        # it on the host, which a captured graph cannot do
        i = torch.zeros(1, dtype=torch.long, device=dev)
        nll = torch.zeros((max(steps, 1), B), dtype=torch.float64, device=dev)
        top = torch.zeros((max(steps, 1), B), dtype=torch.long, device=dev)
        pool0 = cache.pools[0]

        def step():
            # input of row b: its fed token while it is fed, then its previous step's argmax (greedy)
            fed = feed_t.gather(1, torch.minimum(i, nf_t)[:, None])[:, 0]
            tok = torch.where(i < nf_t, fed, top.index_select(0, (i - 1).clamp(min=0))[0])
            pos = pool0.seq_lens[cache.row_idx.long()].long()[:, None]
            logits = eng._forward(tok.view(B, 1), pos).double()             # (B, vocab)
            lp = torch.log_softmax(logits, -1)
            target = feed_t.gather(1, torch.minimum(i + 1, nf_t)[:, None])
            nll.index_copy_(0, i, -lp.gather(1, target).view(1, B))
            top.index_copy_(0, i, torch.argmax(logits, -1).view(1, B))
            i.add_(1)

        if eng.graph and min(nf) >= 2 and steps >= 3:
            from vashista_gpu.cuda_graph import capture
            replay = capture(step)                 # runs two real steps (feed tokens 0 and 1), then captures
            done = 2
        else:
            replay, done = step, 0
        clock.lap("capture")
        while done < min(nf):                       # teacher forcing of every row: no host synchronisation
            replay()
            done += 1
        clock.lap("feed")
        gen: list[list[int]] = [[] for _ in range(B)]
        snaps: list = [None] * B
        live = set(range(B))
        while True:
            # a row is done once its last greedy token is known (EOS, max_new, stop); its statistics are
            # taken then, on the device, so the batch's later steps (for the other rows) are not counted
            ready = sorted(b for b in live if done >= nf[b])
            newest = top[done - 1].tolist() if any(max_news[b] > 0 for b in ready) else None  # one host read
            for b in ready:
                if max_news[b] > 0:
                    nxt = newest[b]
                    if nxt != self.eos:
                        gen[b].append(nxt)
                    if not (nxt == self.eos or len(gen[b]) == max_news[b]
                            or (stops[b] is not None and stops[b](gen[b]))):
                        continue
                snaps[b] = inst.snapshot(b)
                live.discard(b)
            if not live:
                break
            replay()
            done += 1
        clock.lap("generate")
        eng._sync()
        if eng.runner.cfg.mode == "certified":
            eng.check_sketch()
        out = [(nll[:nf[b] - 1, b].tolist(), gen[b], None if mode.kind == "dense" else inst.stats(snaps[b]))
               for b in range(B)]
        clock.lap("stats")
        return out
