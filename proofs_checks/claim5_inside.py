"""Claim 5 — q inside the hull ⇒ r* = 0 ⇒ no certificate.

When the query lies in conv(K), every multiplier is 0 and no support gap exists; the certificate must
say "no certificate", never a number. A raw-score (softmax) gap Δ_lin is still a positive number on
the same instances — it certifies nothing about the projection, which is not sparse there.

Example:
    >>> from proofs_checks import claim5_inside
    >>> claim5_inside.check(n=3).holds
    True
"""
from __future__ import annotations

import numpy as np

from vashista_ref import instances
from vashista_ref.projection import project_onto_hull
from vashista_ref.softmax_model import softmax_certificate_qk
from vashista_ref.validate import positive_int

from .common import exact_certificates, instance_record, seeded
from .result import CheckResult, Claim

CLAIM = Claim(
    number=5, name="No certificate inside the hull",
    latex=r"q\in\mathrm{conv}(K)\Rightarrow r^*=0\Rightarrow \mu^*\equiv 0,\ \Delta\ \text{undefined}",
    plain="A query inside the hull of the keys has no face and no gap; raw-score gaps certify nothing there.",
    hypotheses="q ∈ conv(K)",
    source="SPEC 1a, 1b")


def check(n: int = 30, seed: int = 0) -> CheckResult:
    n = positive_int("n", n)
    rng = seeded(seed)
    violations, ce, raw_positive, spread = 0, None, 0, []
    tried = 0
    for k in range(n):
        fam = "inside_hull" if k % 3 else "on_vertex"
        inst = instances.draw(fam, int(rng.integers(2**31)), M=int(rng.integers(4, 30)),
                              D=int(rng.integers(2, 6)))
        for solver in ("cvxpy", "wolfe"):
            tried += 1
            p = project_onto_hull(inst.q, inst.K, solver=solver)
            if p.gap is not None or not p.inside_hull:
                violations += 1
                if ce is None:
                    ce = instance_record(inst) | {"solver": solver, "gap": p.gap}
        sm = softmax_certificate_qk(inst.q, inst.K, 1.0)
        raw_positive += int(sm.gap is not None and sm.gap > 0)
        if fam == "inside_hull":
            spread.append(int(np.sum(project_onto_hull(inst.q, inst.K).alpha > 1e-6)))
    return CheckResult(claim=CLAIM, instances=tried, violations=violations,
                       worst_ratio=float(violations), counterexample=ce,
                       exact_checked=exact_certificates(rng, 1),
                       constants={"raw_score_gap_positive_fraction": raw_positive / n,
                                  "median_support_of_cvxpy_alpha_inside": float(np.median(spread))},
                       notes=["worst ratio here = number of instances that reported a certificate (a yes/no claim).",
                              "Every inside-hull instance has a positive raw-score gap Δ_lin, yet the "
                              "projection's weights are spread (no sparse face): a raw-score gap is "
                              "not evidence of sparsity in the projection model."])
