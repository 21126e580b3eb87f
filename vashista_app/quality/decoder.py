"""The long-context suite's decode path, behind a two-method seam the engine (issue 14) can fill.

The suite needs exactly two operations of a decoder:

* ``prefill(ids) -> state``: dense prefill of the prompt's context, done once per item and shared by
  every mode (so modes differ only in their decode steps);
* ``run(state, mode, ctx, feed, max_new, stop) -> DecodeResult``: from a copy of ``state``, feed the
  tokens ``feed`` one per decode step under ``mode`` (teacher forcing: each step's log-probability of
  the next fed token is recorded), then generate up to ``max_new`` tokens greedily, stopping early when
  ``stop(generated)`` says so or the end-of-sequence token comes. Every decode step is a sparse step
  of the mode; the statistics (``hf.stats.DecodeStats``, with the float64 dense shadow) come back with
  the result. A fallback mode runs DenseFallback at its own tolerance (``cert-...-fallback@t``) or,
  without one, at the decoder's ``tol`` (the suite's ``--tol``); the result says which (``tol``).

:class:`HFDecoder` implements them on a transformers model through ``vashista_gpu.hf.enable_vashista``
(certified and paged modes), ``window.enable_window`` (the baseline) and the quality decode loop
(``decode_loop.py``). A graph-captured engine implements the same two methods over its own cache and
is passed to ``longctx.run`` instead (``engine_decoder.EngineDecoder``: selected on CUDA, or by
``--decoder``); nothing else in the suite changes.

Example::

    >>> dec = HFDecoder(model, tok)                                       # doctest: +SKIP
    >>> st = dec.prefill(item.context)                                    # doctest: +SKIP
    >>> r = dec.run(st, parse_mode("paged-1/16"), 4096, item.query, 12)  # doctest: +SKIP
"""
from __future__ import annotations

import time
from dataclasses import dataclass

import torch

from vashista_core.policies import DenseFallback, ReportOnly

from vashista_gpu.hf import disable_vashista, enable_vashista
from .decode_loop import decode_tokens, prefill
from .modes import Mode, mode_setting, mode_tol
from .window import disable_window, enable_window

__all__ = ["DecodeResult", "HFDecoder"]


@dataclass
class DecodeResult:
    nll: list[float]          # -log p(feed[i+1]) at the decode step of feed[i], i < len(feed) - 1
    generated: list[int]
    stats: object | None      # DecodeStats of the sparse layers (None for dense)
    seconds: float
    decoder: str = "hf"       # which decoder ran the mode: hf, engine, engine-graph (engine_decoder.py)
    decoder_note: str | None = None   # why a mode stayed on the HF decoder under the engine
    phases: dict | None = None        # engine decoder: seconds per phase of ``seconds`` (engine_decoder.py)
    tol: float | None = None          # the DenseFallback tolerance the mode ran at (None: no fallback)


class HFDecoder:
    """Decoder on a Hugging Face model (see module docstring). ``backend``: torch (CPU) or triton."""

    def __init__(self, model, tok, *, dense_layers=(0, 1), backend: str = "torch", tol: float = 1e-2,
                 shadow: bool = True):
        self.model, self.tok = model, tok
        self.dense_layers = tuple(dense_layers)
        self.backend, self.tol, self.shadow = backend, tol, shadow
        self.eos = getattr(tok, "eos_token_id", None)

    def prefill(self, ids: list[int]):
        return prefill(self.model, torch.tensor([ids], dtype=torch.long))[0]

    def _enable(self, mode: Mode, ctx: int, tol: float | None):
        s = mode_setting(mode, ctx)
        if mode.kind == "dense":
            return None, lambda: None
        if mode.kind == "window":
            h = enable_window(self.model, s["sink"], s["window"], dense_layers=self.dense_layers,
                              collect_stats=True, shadow_dense=self.shadow)
            return h.stats, lambda: disable_window(self.model)
        policy = ReportOnly() if tol is None else DenseFallback(tol)
        h = enable_vashista(self.model, s["P"], s["Kc"], page_size=s["page_size"], router=s["router"],
                            bits=s.get("bits"), policy=policy, dense_layers=self.dense_layers,
                            sink_pages=s["sink_pages"], backend=self.backend, collect_stats=True,
                            shadow_dense=self.shadow)
        return h.stats, lambda: disable_vashista(self.model)

    def run(self, state, mode: Mode, ctx: int, feed: list[int], max_new: int, stop=None) -> DecodeResult:
        t0 = time.perf_counter()
        tol = mode_tol(mode, self.tol)
        stats, undo = self._enable(mode, ctx, tol)
        try:
            nll, gen = decode_tokens(self.model, state, torch.tensor(feed, dtype=torch.long), generate=max_new,
                                     eos=self.eos, stop=stop)
        finally:
            undo()
        return DecodeResult(nll=nll.tolist(), generated=gen, stats=stats, seconds=time.perf_counter() - t0, tol=tol)
