"""Claim 1 — the KKT certificate of the hull projection.

μ*_j = ⟨r*, y* − k_j⟩,  λ = −⟨r*, y*⟩,  I ⊆ F,  and strict complementarity ⇔ I = F.
Checked on known-face, generic and degenerate families with both exact solvers, and on small
integer instances in exact rational arithmetic.

Example:
    >>> from proofs_checks import claim1_kkt
    >>> claim1_kkt.check(n=2).holds, claim1_kkt.check(n=2, sign=-1.0).holds
    (True, False)
"""
from __future__ import annotations

import numpy as np

from vashista_ref import instances
from vashista_core.errors import VashistaInputError
from vashista_ref.projection import project_onto_hull
from vashista_ref.validate import positive_int, positive_scalar

from .common import exact_certificates, instance_record, known_face_family, seeded
from .result import CheckResult, Claim

CLAIM = Claim(
    number=1, name="KKT certificate",
    latex=r"\mu^*_j=\langle r^*,y^*-k_j\rangle\ge 0,\ \lambda=-\langle r^*,y^*\rangle,\ I\subseteq F,\ "
          r"\text{strict compl.}\Leftrightarrow I=F",
    plain="The multipliers of the projection are the distances of the keys below the supporting "
          "hyperplane in direction r*; active keys lie on the exposed face.",
    hypotheses="any key set and query (the certificate exists whenever r* ≠ 0)",
    source="SPEC 1a; paper Definition 1")


def check(n: int = 40, seed: int = 0, *, tol: float = 1e-7, sign: float = 1.0) -> CheckResult:
    """``sign=-1`` is a deliberately false variant (μ_j = ⟨r*, k_j − y*⟩) that must fail."""
    n = positive_int("n", n)
    tol = positive_scalar("tol", tol)
    if sign not in (1.0, -1.0):
        raise VashistaInputError("sign", f"must be +1 or -1, got {sign!r}")
    rng = seeded(seed)
    insts = known_face_family(rng, n // 2)
    insts += [instances.draw(f, int(rng.integers(2**31)), M=int(rng.integers(4, 20)), D=3)
              for f in ("generic", "collinear", "duplicates") for _ in range(max(1, n // 6))]
    violations, worst, ce, sc_pairs = 0, 0.0, None, 0
    for inst in insts:
        for solver in ("cvxpy", "wolfe"):
            p = project_onto_hull(inst.q, inst.K, solver=solver)
            r = inst.q - p.y
            scale = max(1.0, float(np.max(np.abs(inst.K))) ** 2, float(inst.q @ inst.q))
            mu_claim = sign * (float(r @ p.y) - inst.K @ r)
            err = max(float(np.max(np.abs(p.mu - mu_claim))), abs(p.lam + float(r @ p.y)),
                      max(0.0, -float(mu_claim.min())))
            subset = set(p.active_set.tolist()) <= set(p.face.tolist())
            sc = p.strictly_complementary == (p.active_set.tolist() == p.face.tolist())
            sc_pairs += int(p.strictly_complementary)
            ratio = err / (tol * scale)
            worst = max(worst, ratio)
            if ratio > 1 or not subset or not sc:
                violations += 1
                if ce is None or inst.K.shape[0] < ce["M"]:
                    ce = instance_record(inst) | {"solver": solver, "error": err}
    exact = exact_certificates(rng, 3)
    return CheckResult(claim=CLAIM, instances=2 * len(insts), violations=violations,
                       worst_ratio=worst, counterexample=ce, exact_checked=exact,
                       constants={"max_kkt_error/scale": worst * tol,
                                  "strictly_complementary_fraction": sc_pairs / (2 * len(insts))})
