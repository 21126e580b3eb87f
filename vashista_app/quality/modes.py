"""The attention modes the long-context suite compares, their settings at a budget, and bytes read.

A mode is dense attention or one sparse decode at an *exact-read budget* b (a fraction of the context):

* ``cert-int8-B-report|fallback`` — certified mode (``router="sketch"``), int8 key sketch with one
  quantization group per 64-token page; Kc = b·ctx candidates are read exactly, every other token is
  bounded through its sketch; report-only, or DenseFallback(tol) (a step whose certified error exceeds
  ``tol`` is recomputed densely). ``tol`` is the suite's ``--tol`` unless the name carries its own:
  ``cert-int8-1/16-fallback@0.3`` (any t ≥ 0, finite; fallback modes only; written in a stable form,
  ``@0.30`` → ``@0.3``, so a resumed run finds its records);
* ``cert-int4-B-report|fallback`` — the same with int4 and 16-token groups;
* ``paged-B`` — the paper's paged mode (bound router, 16-token pages): Kc + (P + sink + newest)·16 ≤ b·ctx;
* ``window-B`` — the StreamingLLM-like baseline (``window.py``): 4 sink tokens + the b·ctx − 4 newest.

``B`` is written ``1/32``, ``1/16``, ... Layers in ``dense_layers`` (default 0 and 1) stay dense in
every mode, as in the rest of the quality suite.

**Picking a tolerance.** Every sparse mode's record carries exceedance curves on ``TOL_GRID``: the
fraction of (step, head) queries whose certified error exceeds t — for a report-only mode, the fallback
rate DenseFallback(t) would have (exactly at the first decode step; later steps see other outputs) —
and the fraction whose true error (float64 dense shadow) exceeds t. The certificate is an upper bound,
so the first curve lies above the second; read off the t where the first is low enough to pay (each
fallback re-reads the whole context), check in the second how many queries really are that wrong,
and run ``cert-...-fallback@t`` to measure the accuracy it keeps (``longctx_report.py``'s table
"DenseFallback at tolerance t"). A fallback mode's own true-error curve is of the outputs it returned
(exact after a fallback): its share above 0.1 (the report's ``true_above``) is what t let through. At one
t, a tighter certificate (int8 against int4) falls back less and lets more through — on the 32k model at
4k and 8k, int8 at t = 1 left ~6 % of queries more than 0.1 off and moved perplexity by up to 0.7 %,
int4 under 1 % and 0.2 % (benchmarks/RESULTS.md, twelfth session).

Bytes read per decode step and KV head, relative to dense attention over T tokens (keys and values
of 16-bit, D per head, 4D bytes per token; the model, not a measurement):

* dense: T·4D;
* certified: T·(D·bits/8 + 4D/g) (codes, fp16 offset and step per group of g) + T/g·4 (value-norm
  summaries) + Kc·4D (exact rows), + T·4D more on a fallen-back step;
* paged: T/16·4D (per-page key min/max) + (P + sink + 1)·16·2D (keys of the routed pages) + Kc·2D
  (candidate values);
* window: min(T, sink + window)·4D.

A layer kept dense reads 1; the model's figure is the mean over layers.

Example::

    >>> [m.name for m in default_modes((1/16,))][:4]
    ['dense', 'cert-int8-1/16-report', 'cert-int8-1/16-fallback', 'cert-int4-1/16-report']
    >>> round(relative_bytes(parse_mode("cert-int8-1/16-report"), 8192, head_dim=64), 4)
    0.3284
    >>> m = parse_mode("cert-int8-1/16-fallback@0.30")
    >>> m.name, m.tol, mode_tol(m, 0.01), mode_tol(parse_mode("cert-int8-1/16-fallback"), 0.01)
    ('cert-int8-1/16-fallback@0.3', 0.3, 0.3, 0.01)
"""
from __future__ import annotations

import fnmatch
import math
from dataclasses import dataclass, replace
from fractions import Fraction

from vashista_core.errors import VashistaInputError

from .tasks import budget_setting, budget_tokens

__all__ = ["CERT", "DEFAULT_BUDGETS", "Mode", "PAGED_PAGE", "TOL_GRID", "WINDOW_SINK", "bounded", "budget_label",
           "default_modes", "exact_tokens", "mode_setting", "mode_tol", "parse_budget", "parse_mode",
           "relative_bytes", "report_twin", "select_modes", "with_tol"]

CERT = {8: 64, 4: 16}          # bits -> quantization group (= page size in the paged cache)
PAGED_PAGE = 16
WINDOW_SINK = 4
DEFAULT_BUDGETS = (Fraction(1, 32), Fraction(1, 16), Fraction(1, 8))
# the tolerances of the exceedance curves every sparse record carries (module doc, "Picking a tolerance"):
# from the suite's default 0.01 to above the 32k model's true errors (0.02-0.65 per layer, issue 16)
TOL_GRID = (0.01, 0.03, 0.1, 0.3, 1.0, 3.0)


@dataclass(frozen=True)
class Mode:
    name: str
    kind: str                     # dense | certified | paged | window
    budget: Fraction | None = None
    bits: int | None = None
    policy: str = "report"        # report | fallback (certified only)
    tol: float | None = None      # fallback only: this mode's tolerance (None: the suite's --tol)


def bounded(kind: str) -> bool:
    """Whether a mode of this kind (``Mode.kind``, a record's ``kind``) bounds its error: not the window,
    whose certificate is +inf — its exceedance curve says nothing, and no query of it is checked against
    a bound or can violate one (the float64 shadow still measures its true error)."""
    return kind != "window"


def budget_label(b: Fraction) -> str:
    return f"{b.numerator}/{b.denominator}"


def parse_budget(text: str) -> Fraction:
    try:
        b = Fraction(text).limit_denominator(1 << 16)
    except (ValueError, ZeroDivisionError):
        raise VashistaInputError("--budgets", f"expected a fraction like 1/16, got {text!r}") from None
    if not 0 < b <= 1:
        raise VashistaInputError("--budgets", f"a budget must lie in (0, 1], got {text}")
    return b


def _certified(bits: int, budget: Fraction, policy: str) -> Mode:
    return Mode(f"cert-int{bits}-{budget_label(budget)}-{policy}", "certified", budget, bits, policy)


def default_modes(budgets=DEFAULT_BUDGETS) -> list[Mode]:
    """dense; certified int8 and int4, report-only and fallback; paged; window — at every budget."""
    out = [Mode("dense", "dense")]
    for b in map(Fraction, budgets):
        b = b.limit_denominator(1 << 16)
        lab = budget_label(b)
        for bits in (8, 4):
            for pol in ("report", "fallback"):
                out.append(_certified(bits, b, pol))
        out.append(Mode(f"paged-{lab}", "paged", b))
        out.append(Mode(f"window-{lab}", "window", b))
    return out


def _tol_text(tol: float) -> str:
    """``tol`` as the name writes it: the short ``%g`` form where it reads back as the same float,
    else the exact repr (so name -> mode -> name is stable)."""
    g = f"{tol:g}"
    return g if float(g) == tol else repr(tol)


def with_tol(mode: Mode, tol: str | float) -> Mode:
    """``mode`` (a fallback mode) with its own tolerance ``tol`` (text after ``@``, or a number)."""
    if mode.policy != "fallback":
        raise VashistaInputError("--modes", f"a tolerance @t is for DenseFallback modes only (cert-...-fallback@t), "
                                            f"not {mode.name}")
    try:
        t = float(tol)
    except ValueError:
        t = math.nan
    if not (math.isfinite(t) and t >= 0):
        raise VashistaInputError("--modes", f"{mode.name}@{tol}: the tolerance must be a finite number >= 0")
    t += 0.0                                    # -0.0 -> 0.0: one name per value
    base = mode.name.split("@")[0]
    return replace(mode, name=f"{base}@{_tol_text(t)}", tol=t)


def mode_tol(mode: Mode, default: float) -> float | None:
    """The tolerance DenseFallback runs at in ``mode`` (its own, else ``default``, the suite's --tol);
    None for a mode without fallback."""
    if mode.policy != "fallback":
        return None
    return default if mode.tol is None else mode.tol


def report_twin(mode: Mode) -> Mode:
    """The report-only mode of a certified mode (same bits and budget): whose certified-error curve
    predicts a fallback mode's rate."""
    return _certified(mode.bits, mode.budget, "report")


def parse_mode(name: str) -> Mode:
    """The mode a name stands for (``dense``, ``cert-int8-1/16-report``, ``cert-int8-1/16-fallback@0.3``,
    ``paged-1/8``, ``window-1/32``)."""
    base, at, tol = name.partition("@")
    if at:
        return with_tol(parse_mode(base), tol)
    if name == "dense":
        return Mode("dense", "dense")
    parts = name.split("-")
    try:
        if parts[0] == "cert" and len(parts) == 4 and parts[1] in ("int8", "int4") and parts[3] in ("report",
                                                                                                   "fallback"):
            return _certified(int(parts[1][3:]), parse_budget(parts[2]), parts[3])
        if parts[0] in ("paged", "window") and len(parts) == 2:
            b = parse_budget(parts[1])
            return Mode(f"{parts[0]}-{budget_label(b)}", parts[0], b)
    except VashistaInputError:
        pass
    raise VashistaInputError("--modes", f"unknown mode {name!r} (dense, cert-int8|int4-B-report|fallback[@tol], "
                                        f"paged-B, window-B with B a fraction like 1/16)")


def select_modes(patterns: list[str] | None, budgets=DEFAULT_BUDGETS) -> list[Mode]:
    """Modes whose name matches one of the glob ``patterns`` (None: all default modes), or a literal
    mode name at any budget; ``PATTERN@t`` gives every fallback mode PATTERN matches the tolerance t
    (``'cert-*-fallback@0.3'``). Dense is always first (the reference of every comparison)."""
    modes = default_modes(budgets)
    if not patterns:
        return modes
    chosen = []
    for p in patterns:
        base, at, tol = p.partition("@")
        hits = [m for m in modes if fnmatch.fnmatchcase(m.name, base)]
        if not hits and not any(c in base for c in "*?["):
            hits = [parse_mode(p)]
        elif at:
            hits = [with_tol(m, tol) for m in hits]
        if not hits:
            raise VashistaInputError("--modes", f"{p!r} matches no mode (have: {', '.join(m.name for m in modes)})")
        chosen += [m for m in hits if m not in chosen]
    dense = Mode("dense", "dense")
    return [dense] + [m for m in chosen if m != dense]


def mode_setting(mode: Mode, ctx: int) -> dict:
    """The budget-dependent settings of ``mode`` at ``ctx`` tokens (what ``decoder.py`` enables)."""
    if mode.kind == "dense":
        return {}
    tokens = int(mode.budget * ctx)
    if mode.kind == "certified":
        s = budget_setting(ctx, float(mode.budget), CERT[mode.bits], router="sketch")
        return dict(P=s["P"], Kc=s["Kc"], page_size=CERT[mode.bits], sink_pages=s["sink_pages"], router="sketch",
                    bits=mode.bits)
    if mode.kind == "paged":
        s = budget_setting(ctx, float(mode.budget), PAGED_PAGE)
        return dict(P=s["P"], Kc=s["Kc"], page_size=PAGED_PAGE, sink_pages=s["sink_pages"], router="bound")
    if tokens <= WINDOW_SINK:
        raise VashistaInputError("--budgets", f"{budget_label(mode.budget)} of {ctx} tokens leaves no window")
    return dict(sink=WINDOW_SINK, window=tokens - WINDOW_SINK)


def exact_tokens(mode: Mode, ctx: int) -> int:
    """Tokens read exactly per step and KV head at ``ctx`` (the budget actually used)."""
    s = mode_setting(mode, ctx)
    if mode.kind == "dense":
        return ctx
    if mode.kind == "window":
        return s["sink"] + s["window"]
    return budget_tokens(s)


def relative_bytes(mode: Mode, T: int, *, head_dim: int, fallback_rate: float = 0.0, n_layers: int = 1,
                   dense_layers: int = 0) -> float:
    """Bytes read per decode step relative to dense at ``T`` tokens (model in the module docstring)."""
    D = head_dim
    dense = T * 4 * D
    if mode.kind == "dense":
        layer = 1.0
    else:
        s = mode_setting(mode, T)
        if mode.kind == "certified":
            g = s["page_size"]
            b = T * (D * mode.bits / 8 + 4 * D / g) + T / g * 4 + s["Kc"] * 4 * D
        elif mode.kind == "paged":
            S = s["page_size"]
            b = T / S * 4 * D + (s["P"] + s["sink_pages"] + 1) * S * 2 * D + s["Kc"] * 2 * D
        else:
            b = min(T, s["sink"] + s["window"]) * 4 * D
        layer = b / dense + fallback_rate
    sparse = n_layers - dense_layers
    return (dense_layers * 1.0 + sparse * layer) / n_layers
