"""Greedy generation with Vashista owning the KV cache: :class:`Engine` (sequences admitted and
finished during generation) and :func:`generate` (one batch of prompts, one call).

The pattern is gpt-fast's: the model owns a static cache (``VashistaCache``: paged pools sized up
front, pages for every sequence's remaining tokens reserved at admission), and one decode step of the
whole model — embedding, every layer's append and attention (``engine/step.py``), the LM head, the
argmax, writing the token and advancing the positions — issues only device work with static shapes.
On CUDA (``graph=True``, the default there) the step is captured once per decode segment in one CUDA
graph and replayed per token; the host does nothing per token but ``replay()``. Tokens and statistics
stay on the device until the segment ends. ``graph=False`` runs the same step eagerly (bit-identical
on CUDA: the same kernels in the same order); on CPU the step takes the host path (``step.py``).

Where the state lives (device tensors, so a replay needs no input from the host):
``last[s]`` the newest token of sequence s (the next step's input), the pools' ``seq_lens`` (the
next position of each row is its length: left padding is never paged), ``tokens[s, :count[s]]`` the
generated tokens. A segment is the run of steps between admissions and releases; Kc is fixed for a
segment (``step.kc_for``).

Example::

    >>> import torch
    >>> from transformers import LlamaConfig, LlamaForCausalLM
    >>> torch.manual_seed(0) and None
    >>> cfg = LlamaConfig(vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
    ...                   num_attention_heads=4, num_key_value_heads=2, head_dim=16)
    >>> model = LlamaForCausalLM(cfg).eval()
    >>> r = generate(model, [[1, 5, 9, 33, 7] * 8], mode="paged", budget=0.5, max_new_tokens=3)
    >>> len(r.tokens[0]), r.mode
    (3, 'paged')
"""
from __future__ import annotations

import math
import sys
import time
from dataclasses import asdict, dataclass, field

import torch

from vashista_core.errors import VashistaInputError
from vashista_core.policies import Capped, DenseFallback, ReportOnly

from .cache import VashistaCache
from .step import ATTN_NAME, MODES, Runner, StepConfig, register

__all__ = ['ALL_MODES', 'AUTO_CROSSOVER', 'Engine', 'GenerateResult', 'generate']

ALL_MODES = MODES + ("auto",)
# auto mode decodes densely below the crossover context (tokens of the longest row) and certified
# from it on. This is the placeholder for shapes not measured (engine/crossover.json): never, i.e.
# dense. End to end on an H100 the certified step was slower than the best dense graph everywhere but
# at batch 4 with two-sided bounds (1.05-1.10x, 1B shape, 128k) — Llama shapes at 8k-128k, batch 1
# and 4, and the real Qwen2.5-Coder-0.5B at 32k (3.2x slower) — so an unmeasured shape must not be
# sent to it. (Until the sixth
# session this was 16k, the middle of the bracket where the certified step alone passed dense flash
# on an H200: a kernel measurement, not an end-to-end one.)
AUTO_CROSSOVER = math.inf


@dataclass
class GenerateResult:
    """What :func:`generate` returns. ``tokens[i]`` the new token ids of prompt i (cut after the first
    EOS when one was given); ``text`` their decoding (with a tokenizer); times in seconds; cache bytes
    of ours (``VashistaCache.nbytes``) and of a dense cache of the same tokens; the certificate and
    fallback statistics (``step.StepStats.summary``); the configuration that ran. With a CUDA graph,
    ``decode_s``/``ms_per_token`` time the replays only; ``capture_s`` the capture and its two warm-up
    steps (which compile the kernels the first time)."""
    tokens: list
    text: list | None
    prefill_s: float
    capture_s: float
    decode_s: float
    decode_steps: int
    ms_per_token: float
    tokens_per_s: float
    cache_bytes: dict
    dense_cache_bytes: int
    stats: dict
    mode: str
    config: dict = field(default_factory=dict)

    def to_json(self) -> dict:
        return asdict(self)


def _check_options(mode, bits, budget, policy, tol, dense_layers, n_layers):
    if mode not in ALL_MODES:
        raise VashistaInputError("mode", f"must be one of {ALL_MODES}, got {mode!r}")
    if isinstance(bits, bool) or bits not in (4, 8):
        raise VashistaInputError("bits", f"must be 4 or 8, got {bits!r}")
    if isinstance(budget, bool) or not isinstance(budget, (int, float)) or not 0 < budget <= 1 or math.isnan(budget):
        raise VashistaInputError("budget", f"must be a fraction in (0, 1], got {budget!r}")
    policy = ReportOnly() if policy is None else policy
    if not isinstance(policy, (ReportOnly, DenseFallback, Capped)):
        raise VashistaInputError("policy", f"expected ReportOnly, DenseFallback or Capped, got {policy!r}")
    if tol is not None and (isinstance(tol, bool) or not isinstance(tol, (int, float)) or not tol >= 0):
        raise VashistaInputError("tol", f"must be a number >= 0, got {tol!r}")
    if tol is None:
        tol = getattr(policy, "tol", math.inf)
    try:
        layers = tuple(sorted({int(i) for i in dense_layers}))
    except (TypeError, ValueError):
        raise VashistaInputError("dense_layers", f"expected layer indices, got {dense_layers!r}") from None
    if any(not 0 <= i < n_layers for i in layers):
        raise VashistaInputError("dense_layers", f"expected indices in [0, {n_layers}), got {dense_layers!r}")
    return policy, float(tol), layers


def _forward_kwargs(model) -> str:
    """The name under which this transformers version takes the cache (``cache`` from 5.2x on)."""
    import inspect

    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


class Engine:
    """Greedy decoding of many sequences through one model and one :class:`VashistaCache`.

    ``add(prompts, max_new_tokens)`` admits and prefills sequences (chunked; their pages for the new
    tokens reserved), ``run(steps)`` decodes every active sequence, ``finish(seq)`` returns a
    sequence's new tokens and frees its pages for the next admission. Options as :func:`generate`;
    ``max_seqs``/``max_tokens``/``num_pages`` size the cache. ``one_sided=False`` (certified mode, CUDA
    path only) bounds every token through its page's two-sided constant: a scan of about half the
    instructions per code for a looser certificate (``kernels/sketch_scan.py``); ``None`` (default):
    two-sided for int8 on the CUDA path (no measurable loosening there), one-sided otherwise.
    ``compile=True`` runs the decoder layers' work outside attention (norms, MLP, residual adds) through
    ``torch.compile`` in one-token steps (``engine/compiled.py``; the first steps of the first and second
    batch sizes compile, inside the engine's warm-up on CUDA).
    """

    def __init__(self, model, *, mode: str = "certified", bits: int = 4, budget: float = 1 / 16, policy=None,
                 tol: float | None = None, max_seqs: int = 1, max_tokens: int = 4096, num_pages: int | None = None,
                 page_size: int = 16, graph: bool | None = None, dense_layers=(), prefill_chunk: int = 1024,
                 progress: bool | None = None, auto_crossover: int | None = None, one_sided: bool | None = None,
                 compile: bool = False):
        from ..hf.enable import attention_modules, check_supported
        from ..validate import positive_int

        check_supported(model)
        self.model = model
        p = next(model.parameters())
        self.device = p.device
        n_layers = model.config.num_hidden_layers
        self.policy, self.tol, dense_layers = _check_options(mode, bits, budget, policy, tol, dense_layers, n_layers)
        self.prefill_chunk = positive_int("prefill_chunk", prefill_chunk)
        if graph not in (None, True, False):
            raise VashistaInputError("graph", f"expected True, False or None (auto), got {graph!r}")
        on_cuda = self.device.type == "cuda"
        if graph and not on_cuda:
            raise VashistaInputError("graph", f"CUDA graphs need a CUDA device; the model is on {self.device}")
        # the planned (device-only) path on CUDA; Capped without a graph keeps the host path's doubling
        planned = on_cuda and not (isinstance(self.policy, Capped) and graph is False)
        self.graph = planned if graph is None else bool(graph)
        if not isinstance(compile, bool):
            raise VashistaInputError("compile", f"expected True or False, got {compile!r}")
        if compile:
            from .compiled import compile_unavailable
            if (why := compile_unavailable(self.device)) is not None:
                raise VashistaInputError("compile", why)
        self.compile = compile
        self._uncompile = None
        if one_sided is not None and not isinstance(one_sided, bool):
            raise VashistaInputError("one_sided", f"expected True, False or None (by bits), got {one_sided!r}")
        if one_sided is None:
            # two-sided where it runs and costs nothing measurable: int8 on the planned path (the
            # certificate 1.002x one-sided's on Qwen2.5-Coder-0.5B, the scan 1.8x faster; int4 loosens
            # 1.10x, so it stays one-sided unless asked; results/cert_sides_cpu)
            one_sided = not (planned and bits == 8)
        if not one_sided and not planned:
            raise VashistaInputError("one_sided", "two-sided token bounds run on the planned CUDA path only; "
                                                  "the host path (CPU, or Capped without a graph) is one-sided")
        self.requested_mode = mode
        self.mode = mode if mode != "auto" else None       # auto: decided per segment (_auto_mode)
        self.auto_crossover = None if auto_crossover is None else positive_int("auto_crossover", auto_crossover)
        self.crossover_source = "given" if auto_crossover is not None else None
        dtype = p.dtype if p.dtype in (torch.float16, torch.bfloat16, torch.float32) else torch.float32
        needs_sketch = mode in ("certified", "auto")
        self.cache = VashistaCache(model.config, max_seqs=max_seqs, max_tokens=max_tokens, num_pages=num_pages,
                                   page_size=page_size, bits=bits if needs_sketch else None, dtype=dtype,
                                   device=self.device, key_summaries=mode == "paged",
                                   value_norms=mode != "dense", dense_layers=dense_layers)
        self.runner = Runner(self.cache, StepConfig(mode=mode if mode != "auto" else "dense", bits=bits,
                                                    budget=float(budget), policy=self.policy, tol=self.tol,
                                                    dense_layers=dense_layers, planned=planned,
                                                    one_sided=one_sided))
        self.modules = attention_modules(model)
        self.scales = {i: float(getattr(m, "scaling", m.head_dim ** -0.5)) for i, m in self.modules.items()}
        self.progress = progress
        self.cache_arg = _forward_kwargs(model)
        S = self.cache.max_seqs
        dev = self.device
        self.last = torch.zeros(S, dtype=torch.long, device=dev)
        self.count = torch.zeros(S, dtype=torch.long, device=dev)
        self.max_new: dict[int, int] = {}
        self.tokens = torch.zeros((S, 1), dtype=torch.long, device=dev)
        self.reserved: dict[int, int] = {}
        self._done: dict[int, int] = {}          # tokens generated per sequence (host count)
        self.prefill_s = 0.0
        self.capture_s = 0.0        # graph capture, with its two warm-up steps (kernel compilation)
        self.decode_s = 0.0         # the timed decode steps: graph replays, or every eager step
        self.steps = 0              # timed steps (every step of every segment except the warm-ups)

    # ------------------------------------------------------------------ attach / detach
    def __enter__(self):
        register()
        self._previous = getattr(self.model.config, "_attn_implementation", None) or "sdpa"
        for m in self.modules.values():
            m._vashista_engine = self.runner
        self.model.set_attn_implementation(ATTN_NAME)
        if self.compile:
            from .compiled import compile_decode_layers
            self._uncompile = compile_decode_layers(self.model)
        return self

    def __exit__(self, *exc):
        if self._uncompile is not None:
            self._uncompile()
            self._uncompile = None
        for m in self.modules.values():
            if hasattr(m, "_vashista_engine"):
                del m._vashista_engine
        self.model.set_attn_implementation(self._previous)
        return False

    def _forward(self, ids, pos, keep: int = 1):
        kw = {self.cache_arg: self.cache}
        return self.model(input_ids=ids, position_ids=pos, use_cache=True, logits_to_keep=keep, **kw).logits[:, -1]

    # ------------------------------------------------------------------ admission
    def add(self, prompts, max_new_tokens: int) -> list[int]:
        """Admit and prefill ``prompts`` (lists of token ids, any lengths) together; returns their
        sequence ids. Pages for the prompt and ``max_new_tokens`` more are reserved now."""
        from ..validate import positive_int

        max_new = positive_int("max_new_tokens", max_new_tokens)
        prompts = [[int(t) for t in p] for p in prompts]
        if not prompts or any(len(p) == 0 for p in prompts):
            raise VashistaInputError("prompt", "every prompt needs at least one token")
        for p in prompts:
            if len(p) + max_new > self.cache.max_tokens:
                raise VashistaInputError("max_new_tokens", f"a prompt of {len(p)} tokens + {max_new} new tokens "
                                                           f"exceeds the cache's max_tokens={self.cache.max_tokens}")
        if len(prompts) > self.cache.max_seqs - len(self.cache.seq_ids):
            raise VashistaInputError("prompt", f"{len(prompts)} prompts but only "
                                               f"{self.cache.max_seqs - len(self.cache.seq_ids)} free sequence slots")
        need = sum(math.ceil((len(p) + max_new) / self.cache.page_size) for p in prompts)
        if need > self.cache.free_pages():
            raise VashistaInputError("max_new_tokens", f"the prompts need {need} pages, {self.cache.free_pages()} are free")
        self._sync()
        seqs = [self.cache.add_sequence(len(p) + max_new) for p in prompts]
        for s, p in zip(seqs, prompts):
            self.reserved[s] = len(p) + max_new
            self.max_new[s] = max_new
        if max_new > self.tokens.shape[1]:
            grown = torch.zeros((self.tokens.shape[0], max_new), dtype=torch.long, device=self.device)
            grown[:, :self.tokens.shape[1]] = self.tokens
            self.tokens = grown
        t0 = time.perf_counter()
        self._prefill(seqs, prompts)
        if self.device.type == "cuda":
            torch.cuda.synchronize()
        self.prefill_s += time.perf_counter() - t0
        return seqs

    def _prefill(self, seqs, prompts) -> None:
        T = max(len(p) for p in prompts)
        dev = self.device
        ids = torch.zeros((len(seqs), T), dtype=torch.long)
        valid = torch.zeros((len(seqs), T), dtype=torch.bool)
        for b, p in enumerate(prompts):                       # left padding: every row ends at column T
            ids[b, T - len(p):] = torch.tensor(p)
            valid[b, T - len(p):] = True
        pos = (valid.long().cumsum(1) - 1).clamp(min=0)
        chunks = range(0, T, self.prefill_chunk)
        show = self.progress if self.progress is not None else len(chunks) >= 8
        logits = None
        for i, c0 in enumerate(chunks):
            c1 = min(T, c0 + self.prefill_chunk)
            self.cache.begin(seqs, valid[:, c0:c1])
            with torch.no_grad():
                logits = self._forward(ids[:, c0:c1].to(dev), pos[:, c0:c1].to(dev))
            if show:
                done = (i + 1) / len(chunks)
                print(f"\rprefill [{'#' * int(30 * done):<30}] {c1}/{T} tokens", end="", file=sys.stderr, flush=True)
        if show:
            print(file=sys.stderr)
        self.cache.begin(seqs, None)
        idx = torch.tensor(seqs, device=dev)
        first = logits.argmax(-1)                 # the prefill's last position gives the first new token
        self.last[idx] = first
        self.tokens[idx, 0] = first
        self.count[idx] = 1
        for s in seqs:
            self._done[s] = 1

    # ------------------------------------------------------------------ decode
    def _auto_mode(self, lens) -> str:
        """Mode for a segment in ``auto``: dense below the crossover context, certified from it on.
        The crossover is ``auto_crossover`` if given, else the one measured for this model shape and
        batch (``dense_paged.crossover_context``), else the placeholder ``AUTO_CROSSOVER``."""
        from .dense_paged import crossover_context

        cross = self.auto_crossover
        if cross is None:
            variant = "ours_cert_int4_g16" if self.runner.cfg.bits == 4 else "ours_cert_int8_g64"
            try:
                cross = crossover_context(self.model.config, len(lens), variant=variant)
            except FileNotFoundError:          # no measured table shipped
                cross = None
            self.crossover_source = "measured" if cross is not None else "placeholder"
            cross = AUTO_CROSSOVER if cross is None else cross
        return "dense" if max(lens) < cross else "certified"

    def step(self) -> None:
        """One decode step of every active row: device work only (see module doc)."""
        rows = self.cache.row_idx.long()
        ids = self.last[rows][:, None]
        pos = self.cache.pools[0].seq_lens[rows].long()[:, None]     # next position = length (no padding)
        nxt = self._forward(ids, pos).argmax(-1)
        self.last[rows] = nxt
        col = self.count[rows].clamp(max=self.tokens.shape[1] - 1)
        self.tokens[rows, col] = nxt
        self.count[rows] += 1

    def plan_segment(self, rows) -> None:
        """Declare the rows of the next decode steps and plan them (host work, once per segment)."""
        self.cache.begin(rows, None)
        self.cache.device_append = self.runner.cfg.planned
        if self.mode is None:
            self.runner.cfg.mode = self._auto_mode([self.cache.length(s) for s in rows])
        if self.runner.cfg.planned:
            self.runner.plan({s: self.reserved[s] for s in rows}, self.scales)

    def run(self, steps: int | None = None, *, stop_tokens=None, check_every: int = 16, until: str = "all") -> int:
        """Decode ``steps`` tokens (default: as many as every active sequence still may) for every
        active sequence that has tokens left; returns the steps run.

        ``stop_tokens`` (token ids, e.g. the tokenizer's EOS): stop early once every active sequence
        has produced one of them (``until="all"``), or once any has (``until="any"``: a serving loop
        then finishes the sequences :meth:`stopped` names, admits new ones and runs again; a
        sequence already stopped when the call starts makes it return 0). The test reads the
        device's tokens (one host synchronisation): with a graph every ``check_every`` replays, so
        up to ``check_every - 1`` steps past the stop are decoded (the caller cuts them), and after
        every eager step. A captured segment stays valid when it ends early: the rows' lengths
        advance on the device, and the host mirrors catch up with the steps actually run."""
        from ..validate import positive_int

        rows = self._active()
        left = {s: self.max_new[s] - self._host_count(s) for s in rows}
        rows = [s for s in rows if left[s] > 0]
        if not rows:
            return 0
        n = min(left[s] for s in rows) if steps is None else int(steps)
        if n > min(left[s] for s in rows):
            raise VashistaInputError("steps", f"{n} steps exceed a sequence's remaining max_new_tokens")
        stop = _stop_ids(stop_tokens, self.device)
        if until not in ("all", "any"):
            raise VashistaInputError("until", f"expected 'all' or 'any', got {until!r}")
        every = positive_int("check_every", check_every)        # graph replays between tests
        if stop is not None and self._stop_now(rows, stop, until):
            return 0
        self.plan_segment(rows)
        ran = 0
        with torch.no_grad():
            if self.graph and n >= 3:
                from ..cuda_graph import capture
                t0 = time.perf_counter()
                replay = capture(self.step)              # two real steps (warm-up, JIT) + the capture
                torch.cuda.synchronize()
                self.capture_s += time.perf_counter() - t0
                ran = 2
                t0 = time.perf_counter()
                while ran < n and not (stop is not None and self._stop_now(rows, stop, until)):
                    chunk = min(every, n - ran)
                    for _ in range(chunk):
                        replay()
                    ran += chunk
                timed = ran - 2                          # the replays (the capture ran the first two)
            else:
                t0 = time.perf_counter()
                while ran < n and not (stop is not None and self._stop_now(rows, stop, until)):
                    self.step()
                    ran += 1
                timed = ran
            if self.device.type == "cuda":
                torch.cuda.synchronize()
        self.decode_s += time.perf_counter() - t0
        self.steps += timed
        for s in rows:
            self._done[s] = self._host_count(s) + ran
        self.cache.position += ran
        self._sync()
        return ran

    def _active(self) -> list[int]:
        """The admitted sequences not yet finished, in the cache's order."""
        return [s for s in self.cache.seq_ids if s in self.max_new]

    def _has_stopped(self, rows, stop) -> torch.Tensor:
        """(len(rows),) bool on the device: whether each row's tokens so far hold a stop token."""
        idx = torch.tensor(rows, device=self.device)
        toks = self.tokens[idx]
        made = torch.arange(toks.shape[1], device=self.device)[None] < self.count[idx][:, None]
        return (torch.isin(toks, stop) & made).any(1)

    def _stop_now(self, rows, stop, until: str) -> bool:
        hit = self._has_stopped(rows, stop)          # one host synchronisation
        return bool(hit.all() if until == "all" else hit.any())

    def stopped(self, stop_tokens) -> list[int]:
        """The active sequences whose tokens so far hold one of ``stop_tokens`` (to :meth:`finish`)."""
        rows = self._active()
        stop = _stop_ids(stop_tokens, self.device)
        if not rows or stop is None:
            return []
        return [s for s, hit in zip(rows, self._has_stopped(rows, stop).tolist()) if hit]

    def _host_count(self, s: int) -> int:
        return self._done.get(s, 0)

    def _sync(self) -> None:
        """Host mirrors after device appends (once per segment)."""
        if self.cache.device_append:
            self.cache.sync_lengths()
            self.cache.device_append = False

    def finish(self, seq_id: int) -> list[int]:
        """The new tokens of a sequence; frees its pages."""
        if seq_id not in self.max_new:
            raise VashistaInputError("seq_id", f"unknown sequence {seq_id!r}")
        self._sync()
        n = self._host_count(seq_id)
        out = self.tokens[seq_id, :n].tolist()
        self.cache.free_sequence(seq_id)
        for d in (self.max_new, self.reserved, self._done):
            d.pop(seq_id, None)
        return out

    def check_sketch(self) -> None:
        """The sketches updated without checks during device appends must have finite metadata."""
        for p in self.cache.pools:
            for store in p.sketches.values():
                pages = [ph for s in p.seq_ids for ph in p.page_table(s)]
                if pages and not store.finite(torch.tensor(pages, device=self.device)):
                    raise VashistaInputError("model", "keys exceed the float16 range of the sketch metadata")


def _is_tokenizer(x) -> bool:
    return hasattr(x, "encode") and hasattr(x, "decode") and callable(x)


def generate(model, tokenizer_or_ids, prompt=None, *, mode: str = "certified", bits: int = 4,
             budget: float = 1 / 16, policy=None, tol: float | None = None, max_new_tokens: int = 32,
             device=None, graph: bool | None = None, page_size: int = 16, prefill_chunk: int = 1024,
             dense_layers=(), eos_token_id=None, progress: bool | None = None,
             auto_crossover: int | None = None, one_sided: bool | None = None,
             compile: bool = False) -> GenerateResult:
    """Greedy generation of ``max_new_tokens`` tokens with Vashista owning the KV cache.

    ``tokenizer_or_ids``: a tokenizer (then ``prompt`` is a string or a list of strings), or token
    ids: a list of ints, a list of lists (a ragged batch), or a (B, T) tensor. ``mode``: ``dense``
    (exact attention over the paged cache), ``certified`` (``bits`` 4 or 8 sketch, certificate on
    every query), ``paged`` (routed sparse decode), ``auto`` (dense below the crossover context,
    certified above; ``engine.policy``). ``budget``: fraction of the context read exactly, Kc =
    16·⌈budget·context/16⌉ (``engine/step.py``). ``policy``: ReportOnly (default), DenseFallback(tol),
    Capped(tol, P_max, Kc_max) (in the CUDA graph, certified mode: a second certified step at Kc_max for the
    uncertified heads, then exact attention for what is still uncertified; on the host path Kc doubles
    per row up to Kc_max); ``tol`` the error counted as certified in the statistics
    (default the policy's). ``device``: moves the model there. ``graph``: CUDA-graph replay (default
    on CUDA). ``dense_layers``: layers decoded densely in every mode. ``one_sided``: certified
    mode's token bounds — False two-sided (CUDA path only; a faster scan, a looser certificate), True
    one-sided, None by bits (:class:`Engine`). ``eos_token_id``: a token id or a list of them; decoding
    stops once every sequence has produced one (checked every 16 graph replays, after every eager
    step), and each sequence's tokens end at its first. ``compile``: the decoder layers' work outside
    attention runs through ``torch.compile`` in the decode steps (``engine/compiled.py``).
    """
    from ..validate import positive_int

    if device is not None:
        try:
            device = torch.device(device)
        except (RuntimeError, TypeError):
            raise VashistaInputError("device", f"not a torch device: {device!r}") from None
        if device.type == "cuda" and not torch.cuda.is_available():
            raise VashistaInputError("device", "CUDA is not available on this machine")
        model = model.to(device)
    tok = tokenizer_or_ids if _is_tokenizer(tokenizer_or_ids) else None
    if tok is not None:
        if prompt is None:
            raise VashistaInputError("prompt", "a tokenizer was given: pass the prompt text")
        texts = [prompt] if isinstance(prompt, str) else list(prompt)
        if not texts or not all(isinstance(t, str) for t in texts):
            raise VashistaInputError("prompt", "expected a string or a list of strings")
        prompts = [tok(t).input_ids for t in texts]
    else:
        prompts = _as_prompts(tokenizer_or_ids)
    max_new = positive_int("max_new_tokens", max_new_tokens)
    stop = _stop_list(eos_token_id)
    S = page_size
    max_tokens = S * math.ceil(max(len(p) for p in prompts) / S + max_new / S + 1)
    engine = Engine(model, mode=mode, bits=bits, budget=budget, policy=policy, tol=tol, max_seqs=len(prompts),
                    max_tokens=max_tokens, num_pages=sum(math.ceil((len(p) + max_new) / S) for p in prompts),
                    page_size=page_size, graph=graph, dense_layers=dense_layers, prefill_chunk=prefill_chunk,
                    progress=progress, auto_crossover=auto_crossover, one_sided=one_sided, compile=compile)
    with engine:
        seqs = engine.add(prompts, max_new)
        engine.run(stop_tokens=stop)
        if engine.runner.cfg.mode == "certified":
            engine.check_sketch()
        dense_bytes = engine.cache.dense_kv_bytes()
        nbytes = engine.cache.nbytes()
        stats = engine.runner.stats.summary()
        out = [engine.finish(s) for s in seqs]
    if stop:
        out = [_cut_at_stop(t, stop) for t in out]
    n = engine.steps
    ran_mode = engine.runner.cfg.mode
    return GenerateResult(
        tokens=out, text=[tok.decode(t, skip_special_tokens=True) for t in out] if tok is not None else None,
        prefill_s=engine.prefill_s, capture_s=engine.capture_s, decode_s=engine.decode_s, decode_steps=n,
        ms_per_token=1e3 * engine.decode_s / n if n else math.nan,
        tokens_per_s=n * len(prompts) / engine.decode_s if engine.decode_s > 0 else math.nan,
        cache_bytes=nbytes, dense_cache_bytes=dense_bytes, stats=stats, mode=ran_mode,
        config=dict(requested_mode=mode, bits=bits if ran_mode == "certified" else None, budget=budget,
                    one_sided=engine.runner.cfg.one_sided if ran_mode == "certified" else None,
                    Kc=engine.runner.Kc or None, P=engine.runner.P if ran_mode == "paged" else None,
                    crossover=engine.crossover_source, page_size=page_size, graph=engine.graph, planned=engine.runner.cfg.planned,
                    compile=engine.compile,
                    policy=type(engine.policy).__name__, tol=engine.tol, dense_layers=list(engine.runner.cfg.dense_layers),
                    batch=len(prompts), prompt_tokens=[len(p) for p in prompts], device=str(engine.device)))


def _stop_list(eos_token_id, name: str = "eos_token_id") -> list[int]:
    """``eos_token_id`` as a list of ids: None, an int, or a sequence of ints (as in a model's
    generation config); ``name`` is the argument named in the error."""
    if eos_token_id is None:
        return []
    ids = [eos_token_id] if isinstance(eos_token_id, int) and not isinstance(eos_token_id, bool) else eos_token_id
    if not isinstance(ids, (list, tuple)) or not all(isinstance(t, int) and not isinstance(t, bool) and t >= 0 for t in ids):
        raise VashistaInputError(name, f"expected None, a token id or a list of token ids, got {eos_token_id!r}")
    return list(ids)


def _stop_ids(stop_tokens, device):
    """``stop_tokens`` as a device tensor, or None when there are none (token id 0 is one)."""
    ids = _stop_list(stop_tokens, "stop_tokens")
    return torch.tensor(ids, dtype=torch.long, device=device) if ids else None


def _cut_at_stop(tokens: list[int], stop: list[int]) -> list[int]:
    """The tokens up to and with the first stop token."""
    for i, t in enumerate(tokens):
        if t in stop:
            return tokens[:i + 1]
    return tokens


def _as_prompts(ids) -> list[list[int]]:
    if isinstance(ids, torch.Tensor):
        if ids.ndim == 1:
            ids = ids[None]
        if ids.ndim != 2 or ids.dtype not in (torch.int32, torch.int64):
            raise VashistaInputError("tokenizer_or_ids", f"expected (B, T) integer token ids, got {tuple(ids.shape)} {ids.dtype}")
        return ids.tolist()
    if isinstance(ids, (list, tuple)) and ids and all(isinstance(t, int) and not isinstance(t, bool) for t in ids):
        return [list(ids)]
    if isinstance(ids, (list, tuple)) and ids and all(isinstance(p, (list, tuple)) for p in ids):
        if all(len(p) and all(isinstance(t, int) and not isinstance(t, bool) for t in p) for p in ids):
            return [list(p) for p in ids]
    raise VashistaInputError("tokenizer_or_ids", "expected a tokenizer, a list of token ids, a list of such "
                                                 "lists, or a (B, T) tensor of token ids")
