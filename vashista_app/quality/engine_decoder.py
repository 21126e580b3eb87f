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

Example::

    >>> dec = EngineDecoder(model, tok)                                   # doctest: +SKIP
    >>> r = dec.run(dec.prefill(item.context), parse_mode("cert-int8-1/16-fallback"), 32768, item.query, 12)
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
    """The statistics of one engine run, with the methods ``longctx.stats_fields`` reads
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


def _instrument(runner, n_layers: int, device, shadow: bool, sparse: list[int]):
    """Wrap ``runner.stats.add`` so every sparse layer's certificate is counted on ``TOL_GRID`` and, with
    ``shadow``, ``runner.decode`` so every sparse layer's step is checked against the float64 dense
    shadow and its true error counted on ``TOL_GRID`` (module doc). Device work only, in place
    (capturable); batch of one row. Returns (shadow accumulators or None, exceedance counters)."""
    from vashista_gpu.hf.stats import ROUNDING, exact_attention

    grid = torch.tensor(TOL_GRID, dtype=torch.float64, device=device)[:, None]   # once per run, before capture
    exceed = torch.zeros((n_layers, len(TOL_GRID), 2), dtype=torch.float64, device=device)
    acc = torch.zeros((n_layers, 4), dtype=torch.float64, device=device) if shadow else None
    last = {}
    add, decode = runner.stats.add, runner.decode

    def above(x):
        # not x <= t, as DenseFallback flags: a non-finite certificate exceeds every tolerance
        return (~(x.double().flatten()[None] <= grid)).sum(-1)

    def record(layer, err, leak, tol, fell=None, overflow=None):
        last[layer] = err                       # the certificate the step reports for its output
        exceed[layer, :, _EX_CERT].add_(above(err))
        add(layer, err, leak, tol, fell=fell, overflow=overflow)

    def checked(layer, q, scale):
        out = decode(layer, q, scale)
        if layer not in sparse:
            return out
        cache = runner.cache
        pool, S = cache.pools[layer], cache.page_size
        sid = cache.rows[0]
        # planned (graph) path: the segment's padded length, static; host path: the length now
        # (this step's key already appended)
        NP = math.ceil((runner.T_cap if runner.cfg.planned else pool.length(sid)) / S)
        pages = pool.block_table[sid, :NP].long()
        k = pool.k_pages[pages].permute(1, 0, 2, 3).reshape(1, pool.n_kv_heads, NP * S, -1)
        v = pool.v_pages[pages].permute(1, 0, 2, 3).reshape(1, pool.n_kv_heads, NP * S, -1)
        valid = torch.arange(NP * S, device=q.device)[None] < pool.seq_lens[sid].long()
        # unwritten slots are NaN in the pool: zero them so the masked positions stay exact zeros
        k, v = torch.nan_to_num(k), torch.nan_to_num(v)
        _, _, o, vmax = exact_attention(q, k, v, valid, scale)
        te = (out.to(q.dtype).double() - o).norm(dim=-1)                   # (1, Hq): what the model reads
        allow = ROUNDING[torch.float64] * (vmax + o.norm(dim=-1))
        viol = te > last[layer].double() + allow
        a = acc[layer]
        a[_SH_N] += te.numel()
        a[_SH_SUM] += te.sum()
        a[_SH_MAX:_SH_MAX + 1].copy_(torch.maximum(a[_SH_MAX:_SH_MAX + 1], te.max().view(1)))
        a[_SH_VIOL] += viol.sum()
        exceed[layer, :, _EX_TRUE].add_(above(te))
        return out

    runner.stats.add = record
    if shadow:
        runner.decode = checked
    return acc, exceed


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

    def _engine(self, mode: Mode, ctx: int, total: int, tol: float | None):
        from vashista_gpu.engine import Engine

        s = mode_setting(mode, ctx)
        S = s.get("page_size", 16)
        policy = ReportOnly() if tol is None else DenseFallback(tol)
        kind = "dense" if mode.kind == "window" else mode.kind       # the window replaces dense attention
        eng = Engine(self.model, mode=kind, bits=s.get("bits") or 4, budget=1.0, policy=policy,
                     tol=self.tol if tol is None else tol, max_seqs=1, max_tokens=S * math.ceil(total / S),
                     page_size=S, graph=self.graph, dense_layers=self.dense_layers, progress=False,
                     one_sided=True)    # the suite's modes: the one-sided bound, as every recorded run
        eng.runner.cfg.kc = s.get("Kc")
        eng.runner.cfg.pages = s.get("P")           # certified: only the CPU path reads it
        if mode.kind == "window":
            self._window(eng, s["sink"], s["window"])
        return eng

    def _window(self, eng, sink: int, window: int):
        """Route the sparse layers' decode attention to :func:`window_attention` (batch of one row)."""
        runner, cache = eng.runner, eng.cache
        dense, tol = runner.decode, self.tol
        # no certificate: a vacuous one (error +inf, leakage 1) per (row, head), made once, not per step
        inf = torch.full((1, cache.n_q_heads), float("inf"), dtype=torch.float64, device=eng.device)
        one = torch.ones_like(inf)

        def windowed(layer, q, scale):
            if layer in self.dense_layers:
                return dense(layer, q, scale)
            out = window_attention(cache.pools[layer], cache.rows[0], q, scale, sink, window, cache.page_size)
            runner.stats.add(layer, inf, one, tol)
            return out
        runner.decode = windowed

    def run(self, state, mode: Mode, ctx: int, feed: list[int], max_new: int, stop=None) -> DecodeResult:
        if mode.kind not in ENGINE_KINDS:
            raise VashistaInputError("mode", f"the engine decoder runs {ENGINE_KINDS}, got {mode.kind!r}")
        t0 = time.perf_counter()
        n0 = state.get_seq_length()
        feed = [int(t) for t in feed]
        total = n0 + len(feed) + max_new
        clock = _PhaseClock(self.device)
        tol = mode_tol(mode, self.tol)
        eng = self._engine(mode, ctx, total, tol)
        clock.lap("engine")
        with eng, torch.no_grad():
            nll, gen, stats = self._decode(eng, mode, state, n0, feed, max_new, stop, clock)
        return DecodeResult(nll=nll, generated=gen, stats=stats, seconds=time.perf_counter() - t0,
                            decoder="engine-graph" if eng.graph else "engine", phases=clock.laps, tol=tol)

    def _decode(self, eng, mode: Mode, state, n0, feed, max_new, stop, clock):
        cache, dev = eng.cache, eng.device
        sid = cache.add_sequence(n0 + len(feed) + max_new)
        cache.begin([sid], None, position=n0)
        for i, pool in enumerate(cache.pools):               # the shared dense prefill, copied in
            layer = state.layers[i]
            pool.append(sid, layer.keys[0].transpose(0, 1), layer.values[0].transpose(0, 1))
        eng.reserved[sid] = n0 + len(feed) + max_new
        eng.plan_segment([sid])
        # the layers whose attention is not exact: every layer but the dense ones, none in dense mode
        sparse = [] if mode.kind == "dense" else [L for L in range(cache.n_layers) if L not in self.dense_layers]
        shadow, exceed = _instrument(eng.runner, cache.n_layers, dev, self.shadow, sparse)
        clock.lap("copy_and_plan")
        nf = len(feed)
        steps = nf + max(max_new - 1, 0)                      # the last greedy token needs no step
        feed_t = torch.tensor(feed + [feed[-1]], dtype=torch.long, device=dev)
        # the step counter and every index are 1-element device tensors: indexing with a 0-d tensor
        # would read it on the host, which a captured graph cannot do
        i = torch.zeros(1, dtype=torch.long, device=dev)
        nll = torch.zeros(max(steps, 1), dtype=torch.float64, device=dev)
        top = torch.zeros(max(steps, 1), dtype=torch.long, device=dev)
        pool0 = cache.pools[0]

        def step():
            # input: the fed token while feeding, then the previous step's argmax (greedy)
            tok = torch.where(i < nf, feed_t.index_select(0, i.clamp(max=nf)), top.index_select(0, (i - 1).clamp(min=0)))
            pos = pool0.seq_lens[cache.row_idx.long()].long()[:, None]
            logits = eng._forward(tok.view(1, 1), pos)[0].double()
            lp = torch.log_softmax(logits, -1)
            nll.index_copy_(0, i, -lp.index_select(0, feed_t.index_select(0, (i + 1).clamp(max=nf))))
            top.index_copy_(0, i, torch.argmax(logits).view(1))
            i.add_(1)

        if eng.graph and nf >= 2 and steps >= 3:
            from vashista_gpu.cuda_graph import capture
            replay = capture(step)                 # runs two real steps (feed tokens 0 and 1), then captures
            done = 2
        else:
            replay, done = step, 0
        clock.lap("capture")
        while done < nf:                            # teacher forcing: no host synchronisation
            replay()
            done += 1
        clock.lap("feed")
        gen: list[int] = []
        if max_new > 0:
            while True:                                   # greedy: one host read per token for stop/eos
                nxt = int(top[done - 1])
                if nxt == self.eos:
                    break
                gen.append(nxt)
                if len(gen) == max_new or (stop is not None and stop(gen)):
                    break
                replay()
                done += 1
        clock.lap("generate")
        eng._sync()
        if eng.runner.cfg.mode == "certified":
            eng.check_sketch()
        stats = None if mode.kind == "dense" else EngineStats(eng.runner.stats.t, shadow, sparse, exceed)
        clock.lap("stats")
        return nll[:nf - 1].tolist(), gen, stats
