"""The quality suite's measurements: perplexity, passkey retrieval and the RULER-style multi-key task.

Each task prefills densely once and decodes the evaluated part token by token under every setting
(``decode_loop.py``); a *setting* is ``None`` (dense attention) or a dict of ``enable_vashista``
options. Sparse settings run with ``collect_stats`` and the float64 dense shadow, so every decode step
of every sparse layer and head checks certified error ≥ true error.

* perplexity: window of ``ctx`` tokens of a real text; prefix ``ctx - span`` prefilled, the last
  ``span`` tokens decoded; PPL = exp(mean NLL of the decoded predictions);
* passkey: "The pass key is NNNNN. Remember it." hidden at relative depth d of a ``ctx``-token haystack
  of real prose; the question and the greedy answer are decoded; correct iff the answer's first
  digits equal the key;
* multi-key (RULER style): several "The special magic number for WORD is: NNNNNNN." needles at
  spread depths, one asked for; correct iff its number is produced.

Example::

    >>> from vashista_app.quality.tasks import budget_setting
    >>> budget_setting(8192, 1 / 8)
    {'P': 46, 'Kc': 256, 'page_size': 16, 'sink_pages': 1}
"""
from __future__ import annotations

import math
import random
import re
import time

import torch

from vashista_core.errors import VashistaInputError

from vashista_gpu.hf import disable_vashista, enable_vashista
from .decode_loop import decode_tokens, prefill

__all__ = ["budget_setting", "budget_tokens", "multikey", "passkey", "perplexity", "TIMINGS", "WORDS"]

WORDS = ("apple", "river", "candle", "falcon", "marble", "violet", "copper", "meadow", "harbor", "lantern")


def budget_setting(ctx: int, fraction: float, page_size: int = 16, sink_pages: int = 1,
                   router: str = "bound") -> dict:
    """P and Kc so that Kc + (P + sink_pages + 1)·S ≤ fraction·ctx (sink and newest pages counted).

    A quarter of the budget goes to candidates (Kc = budget/4, a power-of-two-friendly split).
    """
    budget = int(fraction * ctx)
    if router == "sketch":
        # certified mode routes no pages: the budget is all candidates (rescored exactly); the
        # sketch scan reads bits/16 of every key on top, which the summary reports
        return dict(P=sink_pages + 1, Kc=max(1, budget), page_size=page_size, sink_pages=sink_pages,
                    router="sketch")
    kc = max(1, budget // 4)
    pages = (budget - kc) // page_size
    if pages < 2 * sink_pages + 2:
        # sinks + newest page + P >= sink_pages + 1 routed pages, plus at least one candidate
        raise VashistaInputError("budget", f"{fraction:g} of {ctx} tokens = {budget} cannot hold "
                                           f"{2 * sink_pages + 2} pages of {page_size} and the candidates")
    # sparse_decode routes P pages besides the sinks and the newest page, and needs P >= sink_pages + 1
    return dict(P=max(sink_pages + 1, pages - sink_pages - 1), Kc=kc, page_size=page_size, sink_pages=sink_pages)


def budget_tokens(s: dict) -> int:
    if s.get("router") == "sketch":
        return s["Kc"]
    return s["Kc"] + (s["P"] + s.get("sink_pages", 1) + 1) * s["page_size"]


# (setting label, decoded tokens, seconds) of every _run since the caller last cleared it: the quality
# CLI logs per-token cost per task (what a device time budget is planned from)
TIMINGS: list[tuple[str, int, float]] = []


def _run(model, setting, cache, tokens, generate=0):
    """Decode under ``setting``; returns (nll, generated, stats object or None)."""
    t0 = time.perf_counter()
    if setting is None:
        nll, gen = decode_tokens(model, cache, tokens, generate=generate)
        TIMINGS.append(("dense", len(tokens) + generate, time.perf_counter() - t0))
        return nll, gen, None
    h = enable_vashista(model, collect_stats=True, shadow_dense=True, **setting)
    try:
        nll, gen = decode_tokens(model, cache, tokens, generate=generate)
    finally:
        disable_vashista(model)
    TIMINGS.append((f"sparse P={setting['P']} Kc={setting['Kc']}", len(tokens) + generate, time.perf_counter() - t0))
    return nll, gen, h.stats


def perplexity(model, ids: torch.Tensor, ctx: int, span: int, settings: dict, offset: int = 0):
    """{name: dict(ppl, nll_mean, stats)} for one window ids[offset : offset + ctx]."""
    w = ids[offset:offset + ctx]
    if w.numel() < ctx:
        raise ValueError(f"text too short: {ids.numel()} tokens, need {offset + ctx}")
    cache, _ = prefill(model, w[None, :ctx - span])
    res = {}
    for name, s in settings.items():
        nll, _, st = _run(model, s, cache, w[ctx - span:])
        res[name] = dict(ppl=math.exp(float(nll.mean())), nll_mean=float(nll.mean()), stats=st)
    return res


def _haystack(tok, filler_ids: torch.Tensor, ctx: int, needles: list[tuple[float, str]], question: str):
    """Token ids of filler with needle sentences at relative depths; (prefill ids, question ids)."""
    q_ids = tok(question, add_special_tokens=False, return_tensors="pt").input_ids[0]
    n_ids = [(d, tok(" " + s + " ", add_special_tokens=False, return_tensors="pt").input_ids[0]) for d, s in needles]
    room = ctx - q_ids.numel() - sum(n.numel() for _, n in n_ids)
    if room < 16:
        raise ValueError(f"context {ctx} too short for the needles and question")
    hay = filler_ids[:room]
    parts, last = [], 0
    for d, n in sorted(n_ids, key=lambda x: x[0]):
        cut = int(d * room)
        parts += [hay[last:cut], n]
        last = cut
    parts.append(hay[last:])
    return torch.cat(parts), q_ids


def _digits(tok, gen: list[int]) -> str:
    m = re.search(r"\d+", tok.decode(gen))
    return m.group(0) if m else ""


def passkey(model, tok, filler_ids, ctx: int, depth: float, settings: dict, seed: int = 0):
    key = str(random.Random(seed * 1000 + ctx + int(depth * 100)).randint(10000, 99999))
    needle = f"The pass key is {key}. Remember it. {key} is the pass key."
    hay, q = _haystack(tok, filler_ids, ctx, [(depth, needle)], "\nWhat is the pass key? The pass key is")
    cache, _ = prefill(model, hay[None])
    res = {}
    for name, s in settings.items():
        _, gen, st = _run(model, s, cache, q, generate=7)
        ans = _digits(tok, gen)
        res[name] = dict(correct=float(ans[:len(key)] == key), answer=ans, key=key, stats=st)
    return res


def multikey(model, tok, filler_ids, ctx: int, n_keys: int, settings: dict, seed: int = 0):
    rng = random.Random(seed * 7919 + ctx + n_keys)
    words = rng.sample(WORDS, n_keys)
    values = [str(rng.randint(1000000, 9999999)) for _ in words]
    depths = [(i + 0.5) / n_keys for i in range(n_keys)]
    needles = [(d, f"The special magic number for {w} is: {v}.") for d, w, v in zip(depths, words, values)]
    ask = rng.randrange(n_keys)
    hay, q = _haystack(tok, filler_ids, ctx, needles,
                       f"\nWhat is the special magic number for {words[ask]}? The special magic number for "
                       f"{words[ask]} is:")
    cache, _ = prefill(model, hay[None])
    res = {}
    for name, s in settings.items():
        _, gen, st = _run(model, s, cache, q, generate=9)
        ans = _digits(tok, gen)
        res[name] = dict(correct=float(ans[:len(values[ask])] == values[ask]), answer=ans, key=values[ask],
                         depth=depths[ask], stats=st)
    return res
