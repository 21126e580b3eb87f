"""Claim 4 — the softmax model's exact leakage and its bound (SPEC 1b).

    L = Σ_{j∉F} e^{−μ_j/ε} / (|F| + Σ_{j∉F} e^{−μ_j/ε})  ≤  (M − |F|) e^{−Δ_lin/ε} / |F|.

Checked on random score vectors with ties, huge and tiny ε, against the weights computed directly;
``exponent`` > 1 is a deliberately false variant (e^{−exponent·Δ/ε}) that must fail.

Example:
    >>> from proofs_checks import claim4_softmax
    >>> claim4_softmax.check(n=50).holds, claim4_softmax.check(n=50, exponent=2.0).holds
    (True, False)
"""
from __future__ import annotations

from fractions import Fraction

import numpy as np
from scipy.special import logsumexp

from vashista_ref.softmax_model import softmax_certificate
from vashista_ref.validate import positive_int, positive_scalar

from .common import seeded
from .result import CheckResult, Claim

CLAIM = Claim(
    number=4, name="Softmax leakage formula and bound",
    latex=r"L=\frac{\sum_{j\notin F}e^{-\mu_j/\varepsilon}}{|F|+\sum_{j\notin F}e^{-\mu_j/\varepsilon}}"
          r"\le\frac{(M-|F|)e^{-\Delta_{lin}/\varepsilon}}{|F|}",
    plain="The softmax mass off the argmax face is given exactly by the multipliers and bounded by the gap.",
    hypotheses="any scores; Δ_lin is usually tiny compared with ε in real models",
    source="SPEC 1b")


def check(n: int = 300, seed: int = 0, *, exponent: float = 1.0) -> CheckResult:
    n = positive_int("n", n)
    exponent = positive_scalar("exponent", exponent)
    rng = seeded(seed)
    violations, worst, ce, formula_err = 0, 0.0, None, 0.0
    ratios = []
    for _ in range(n):
        M = int(rng.integers(1, 60))
        s = np.round(rng.normal(size=M) * rng.choice([0.1, 1, 10]), int(rng.integers(0, 3)))  # ties
        eps = float(10.0 ** rng.uniform(-4, 4))
        c = softmax_certificate(s, eps)
        if c.gap is None:
            continue
        off = np.setdiff1d(np.arange(M), c.face)
        direct = float(c.weights[off].sum())
        # a sum of subnormal weights has no relative precision left: absolute floor 1e-290
        err = abs(direct - c.leakage) / max(c.leakage, 1e-290)
        formula_err = max(formula_err, err)
        log_bound = np.log(len(off)) - exponent * c.gap / eps - np.log(len(c.face))
        z = -c.mu / eps                       # compare in the log domain: L underflows for tiny ε
        log_out = logsumexp(z[off])
        log_leak = log_out - np.logaddexp(np.log(len(c.face)), log_out)
        ratio = float(np.exp(min(log_leak - log_bound, 700.0)))
        ratios.append(float(ratio))
        worst = max(worst, float(ratio))
        if ratio > 1 + 1e-9 or err > 1e-9:
            violations += 1
            if ce is None or M < ce["M"]:
                ce = {"M": M, "scores": s.tolist(), "eps": eps, "leakage": c.leakage,
                      "bound": float(np.exp(log_bound))}
    # exact arithmetic: integer scores, face and gap as rationals (no exponentials involved)
    s = [3, 1, 3, 0, -2]
    face = [j for j, v in enumerate(s) if v == max(s)]
    gap = min(Fraction(max(s) - v) for j, v in enumerate(s) if j not in face)
    c = softmax_certificate(np.array(s, dtype=float), 1.0)
    exact = int(c.face.tolist() == face and Fraction(c.gap) == gap)
    return CheckResult(claim=CLAIM, instances=len(ratios), violations=violations, worst_ratio=worst,
                       counterexample=ce, exact_checked=exact,
                       constants={"max_rel_formula_error": formula_err,
                                  "median_leakage/bound": float(np.median(ratios)) if ratios else 0.0,
                                  "exponent_tested": exponent})
