"""Claim 2 — Corollary 1: exponentially small leakage off the active face.

    α_ε,j ≤ exp(−Δ/(cε))  for j ∉ I,   Σ_{j∉I} α_ε,j ≤ (M − |I|) exp(−Δ/(cε)).

Here α_ε solves the entropic relaxation max_{α∈Δ_M} ⟨α, Kq⟩ − ½‖Kᵀα‖² + ε H(α) and I, Δ are the
hard projection's active set and support gap. The paper does not give c or the range of ε. The sound
sketch (SPEC 1a) gives c = 2 once ε is small enough that D_K‖y_ε − y*‖ ≤ Δ/2 (the *regime*). We
measure, per instance, the smallest c for which both inequalities hold at every ε of a grid, the
largest ε of the grid where c = 2 still holds, and whether c = 2 holds everywhere inside the regime
(the checked statement; ``c`` is a parameter so a deliberately false constant such as c = 1/4 can be
shown to fail).

Instances: seeded known-face families (varied M, D, |I|, Δ, ‖r*‖), plus an adversarial search —
hill climbing over the parameters of ``instances.lateral_pull`` (a far-side crowd of keys drags y_ε
sideways, raising one off-face key's weight) that maximises the c needed inside the regime, and
records the largest c needed outside it.

Example:
    >>> from proofs_checks import claim2_leakage
    >>> r = claim2_leakage.check(n=2, adversarial=4)
    >>> r.holds, r.constants["c_tested"]
    (True, 2.0)
"""
from __future__ import annotations

import math
import sys
from dataclasses import dataclass

import numpy as np
from tqdm import tqdm

from vashista_ref import instances
from vashista_ref.entropic import entropic_projection
from vashista_ref.validate import positive_int, positive_scalar

from .common import diameter, exact_certificates, face_geometry, instance_record, known_face_family, seeded
from .result import CheckResult, Claim

CLAIM = Claim(
    number=2, name="Corollary 1 (off-face leakage)",
    latex=r"\alpha_{\varepsilon,j}\le e^{-\Delta/(c\varepsilon)},\ "
          r"\sum_{j\notin I}\alpha_{\varepsilon,j}\le (M-|I|)\,e^{-\Delta/(c\varepsilon)}",
    plain="Keys off the active face get exponentially small entropic weight in Δ/ε.",
    hypotheses="Δ > 0 (strict complementarity); c = 2 once D_K‖y_ε − y*‖ ≤ Δ/2",
    source="paper Corollary 1; SPEC 1a")

EPS_FACTORS = tuple(float(f) for f in np.geomspace(3.0, 0.01, 13))   # ε = factor × Δ
ADV_FACTORS = tuple(float(f) for f in np.geomspace(1.0, 0.03, 10))   # finer, around the regime edge


@dataclass
class Point:
    """One (instance, ε) measurement."""
    eps: float
    c_token: float        # smallest c with max_{j∉I} α_ε,j ≤ e^{−Δ/(cε)}
    c_total: float        # smallest c with Σ_{j∉I} α_ε,j ≤ (M − |I|) e^{−Δ/(cε)}
    regime: float         # D_K‖y_ε − y*‖ / (Δ/2): ≤ 1 inside the proven regime
    leakage: float

    @property
    def c_needed(self) -> float:
        return max(self.c_token, self.c_total)


def measure(inst, eps: float) -> Point:
    """Solve the entropic problem at ε and read off the c each inequality needs (in the log domain,
    so leakages far below the smallest float are still compared correctly)."""
    M, I, gap = inst.K.shape[0], inst.face, inst.gap
    off = np.setdiff1d(np.arange(M), I)
    sol = entropic_projection(inst.q, inst.K, eps, raise_on_failure=False)
    log_tok = float(np.max(sol.log_alpha[off]))
    log_tot = float(np.logaddexp.reduce(sol.log_alpha[off]))
    c_tok = gap / (eps * -log_tok) if log_tok < 0 else math.inf
    slack = math.log(len(off)) - log_tot
    c_tot = gap / (eps * slack) if slack > 0 else math.inf
    regime = diameter(inst.K) * float(np.linalg.norm(sol.y - inst.y_star)) / (gap / 2)
    return Point(eps, c_tok, c_tot, regime, math.exp(log_tot))


def _lateral(p: dict):
    return instances.lateral_pull(distance=p["distance"], near_depth=p["near_depth"],
                                  far_depth=p["far_depth"], width=p["width"], copies=int(p["copies"]))


def _perturb(p: dict, rng, scale: float) -> dict:
    out = {k: float(v * math.exp(rng.normal() * scale)) for k, v in p.items()}
    out["copies"] = int(min(400, max(1, round(out["copies"]))))
    return out


def _random_lateral(rng) -> dict:
    return {"distance": float(10 ** rng.uniform(-0.5, 1)), "near_depth": float(10 ** rng.uniform(-2.5, 0)),
            "far_depth": float(10 ** rng.uniform(-2.5, 0)), "width": float(10 ** rng.uniform(0, 1.5)),
            "copies": int(rng.integers(1, 300))}


def adversarial_search(rng: np.random.Generator, evals: int) -> tuple[list, dict]:
    """Hill climbing over ``lateral_pull`` parameters, maximising the c needed inside the regime;
    restarts from a random point every 10 evaluations without progress. Returns the evaluated
    (instance, points) pairs and the best parameters found for each objective."""
    cur = {"distance": 2.0, "near_depth": 0.015, "far_depth": 0.02, "width": 14.0, "copies": 136}
    cur_score, stale, evaluated = -1.0, 0, []
    best = {"in_regime": (-1.0, None), "outside_regime": (-1.0, None)}
    # progress on stderr for thorough runs only (about 0.2 s per evaluation)
    for k in tqdm(range(evals), desc="adversarial search", file=sys.stderr, leave=False,
                  disable=evals < 100):
        cand = cur if k == 0 else (_random_lateral(rng) if stale >= 10 else _perturb(cur, rng, 0.3))
        if stale >= 10:
            cur_score, stale = -1.0, 0
        inst = _lateral(cand)
        pts = [measure(inst, f * inst.gap) for f in ADV_FACTORS]
        evaluated.append((inst, pts))
        s_in = max((p.c_needed for p in pts if p.regime <= 1), default=0.0)
        s_out = max((p.c_token for p in pts if p.regime > 1), default=0.0)
        if s_in > best["in_regime"][0]:
            best["in_regime"] = (s_in, cand)
        if s_out > best["outside_regime"][0]:
            best["outside_regime"] = (s_out, cand)
        if s_in > cur_score:
            cur, cur_score, stale = cand, s_in, 0
        else:
            stale += 1
    return evaluated, best


def _predicted_edge(inst) -> float:
    """Where Theorem 1 (claim 3, with C_lin = C_geom) puts the regime's edge: the largest ε with
    D_K·(C_geom ε + D_K (M − |I|) e^{−Δ/(2ε)}) ≤ Δ/2 (the left side increases with ε; bisection in
    log ε). A one-key face has C_geom = 0 and only the leakage term."""
    C, _, _ = face_geometry(inst.K[inst.face], inst.alpha_star[inst.face])
    DK, gap, m = diameter(inst.K), inst.gap, inst.K.shape[0] - len(inst.face)

    def inside(eps):
        return DK * (C * eps + DK * m * math.exp(-gap / (2 * eps))) <= gap / 2

    lo, hi = gap * 1e-6, gap * 1e3
    if not inside(lo):
        return 0.0
    if inside(hi):
        return hi
    for _ in range(60):
        mid = math.sqrt(lo * hi)
        lo, hi = (mid, hi) if inside(mid) else (lo, mid)
    return lo


def _edge_fit(rows) -> dict:
    """How well Theorem 1's bound predicts the measured edge of the regime (ratio measured/predicted;
    ≥ 0.62 (one grid step) whenever the bound holds; large values say the bound is conservative)."""
    r = [row["largest_eps_in_regime/gap"] / row["predicted_regime_edge/gap"] for row in rows
         if row["largest_eps_in_regime/gap"] and row["predicted_regime_edge/gap"] > 0]
    if not r:
        return {}
    return {"regime_edge_measured/predicted_median": float(np.median(r)),
            "regime_edge_measured/predicted_min": float(np.min(r)),
            "regime_edge_measured/predicted_max": float(np.max(r))}


def check(n: int = 24, seed: int = 0, *, c: float = 2.0, adversarial: int = 40) -> CheckResult:
    """Random known-face instances (``n``) and ``adversarial`` search evaluations; ``c`` is the
    constant tested inside the regime (c < 2 is a false variant that must fail)."""
    n = positive_int("n", n)
    c = positive_scalar("c", c)
    adversarial = 0 if adversarial == 0 else positive_int("adversarial", adversarial)
    rng = seeded(seed)
    evaluated = [(inst, [measure(inst, inst.gap * f) for f in EPS_FACTORS])
                 for inst in known_face_family(rng, n)]
    n_random = len(evaluated)
    adv, best = adversarial_search(rng, adversarial) if adversarial else ([], {})
    evaluated += adv
    violations, worst, ce, rows = 0, 0.0, None, []
    series = {"instance": [], "eps_over_gap": [], "leakage": [], "bound_c2": []}
    for k, (inst, pts) in enumerate(evaluated):
        M, gap = inst.K.shape[0], inst.gap
        for p in pts:
            if p.regime <= 1:
                ratio = p.c_needed / c                # > 1: the claimed c is too small here
                worst = max(worst, ratio)
                if ratio > 1 + 1e-9:
                    violations += 1
                    if ce is None or M < ce["M"]:
                        ce = instance_record(inst) | {"eps": p.eps, "c_needed": p.c_needed,
                                                      "regime_ratio": p.regime}
            if k < 6:
                series["instance"].append(k)
                series["eps_over_gap"].append(p.eps / gap)
                series["leakage"].append(p.leakage)
                series["bound_c2"].append((M - len(inst.face)) * math.exp(-gap / (2 * p.eps)))
        c2 = [p.eps for p in pts if p.c_needed <= 2.0]
        in_reg = [p.eps for p in pts if p.regime <= 1]
        rows.append({"family": inst.family, "M": M, "face_size": len(inst.face), "gap": gap,
                     "D_K": diameter(inst.K), "c_needed": max(p.c_needed for p in pts),
                     "c_needed_in_regime": max((p.c_needed for p in pts if p.regime <= 1), default=0.0),
                     "largest_eps_c2/gap": max(c2) / gap if c2 else None,
                     "largest_eps_in_regime/gap": max(in_reg) / gap if in_reg else None,
                     "predicted_regime_edge/gap": _predicted_edge(inst) / gap})
    rand = rows[:n_random]
    constants = {
        "c_tested": c,
        "c_needed_max_in_regime": max(r["c_needed_in_regime"] for r in rows),
        "c_needed_median_random": float(np.median([r["c_needed"] for r in rand])),
        "c_needed_max_random": float(max(r["c_needed"] for r in rand)),
        "median_largest_eps_c2/gap": float(np.median(
            [r["largest_eps_c2/gap"] for r in rand if r["largest_eps_c2/gap"]] or [np.nan])),
        "median_largest_eps_in_regime/gap": float(np.median(
            [r["largest_eps_in_regime/gap"] for r in rand if r["largest_eps_in_regime/gap"]] or [np.nan])),
        **_edge_fit(rand),
    }
    notes = ["c_needed counts every ε of the grid, also outside the regime, where the paper gives no "
             "constant: values above 2 there are findings about the unproven range, not violations."]
    if best:
        # headline numbers first: the ledger table shows the first three constants
        constants = {"c_needed_max_in_regime": constants.pop("c_needed_max_in_regime"),
                     "adversarial_c_token_outside_regime": best["outside_regime"][0],
                     "adversarial_c_needed_in_regime": best["in_regime"][0], **constants}
        notes.append(f"adversarial search ({adversarial} lateral_pull instances): worst c inside the "
                     f"regime {best['in_regime'][0]:.3g} at {best['in_regime'][1]}; worst per-token c "
                     f"outside the regime {best['outside_regime'][0]:.3g} at {best['outside_regime'][1]}")
    return CheckResult(
        claim=CLAIM, instances=len(evaluated), violations=violations, worst_ratio=worst,
        counterexample=ce, exact_checked=exact_certificates(rng, 1), rows=rows, series=series,
        constants=constants, notes=notes)
