"""Claim 6 — the router/theory mismatch.

The paper's router scores pages with the *raw* query (q·k), while its gap Δ is defined on the
*residual* r* = q − y*. Nothing ties the two: a key of the true face I can score low against q and
be dropped. We page random known-face instances (pages of S keys in shuffled order), route as many
pages as hold the face (P = pages touching I, so an oracle router could keep it) by the best raw score
a page holds (the most favourable raw router: its exact page maximum), and count instances where a
key of I is dropped; routing by the residual's scores ⟨r*, k⟩ instead never drops one. The stated property ("raw routing keeps the face") fails
on near-hull queries (‖r*‖ small compared with the keys) and is harmless far from the hull. The
residual certificate of SPEC 3 (μ̂_j = ⟨r̂, ŷ − k_j⟩ from the candidate projection) detects every drop.
The page-mean router of the paper's notebook (⟨q, mean key⟩) is measured too: it also drops face
keys far from the hull, because a face key is typically an outlier of its page and the mean hides it.

Example:
    >>> from proofs_checks import claim6_router
    >>> r = claim6_router.check(n=10)
    >>> r.holds, r.constants["drop_rate_residual_router"]
    (False, 0.0)
"""
from __future__ import annotations

import numpy as np

from vashista_ref import instances
from vashista_ref.projection import project_onto_hull
from vashista_ref.routing import top_indices
from vashista_ref.validate import positive_int

from .common import exact_certificates, instance_record, seeded
from .result import CheckResult, Claim

CLAIM = Claim(
    number=6, name="Raw-q routing keeps the face",
    latex=r"I\subseteq \bigcup_{p\in\mathrm{top}_P(\max_{k\in p}\langle q,k\rangle)} p",
    plain="Routing pages by raw query scores keeps every key of the projection's active face.",
    hypotheses="the paper's router (raw q·k) with P of M/S pages",
    source="paper method section (router) vs Definition 1 (gap on r*)")


def _route(scores, S, P, *, page_score: str = "max"):
    """Keys of the top-P pages (pages of S consecutive keys) by the page's max or mean key score."""
    pages = np.arange(len(scores)) // S
    if page_score == "max":
        best = np.full(pages.max() + 1, -np.inf)
        np.maximum.at(best, pages, scores)
    else:                                    # ⟨q, mean key⟩: the paper notebook's router
        best = np.bincount(pages, weights=scores) / np.bincount(pages)
    keep = top_indices(best, P)              # the project's tie rule: ties to the lower page
    return np.flatnonzero(np.isin(pages, keep))


def check(n: int = 40, seed: int = 0, *, S: int = 4) -> CheckResult:
    n = positive_int("n", n)
    S = positive_int("S", S)
    rng = seeded(seed)
    drops, drops_far, detected, ce, tried, residual_drops = 0, 0, 0, None, 0, 0
    mean_drops = {True: 0, False: 0}         # the mean-key router, near / far from the hull
    for k in range(n):
        near = k % 2 == 0
        D = int(rng.integers(2, 6))
        inst = instances.known_face(rng, M=8 * S, D=D, face_size=int(rng.integers(1, D + 1)),
                                    gap=0.1 if near else 40.0, distance=0.05 if near else 20.0,
                                    spread=2.0)
        perm = rng.permutation(inst.K.shape[0])
        inst = inst.permuted(perm)
        tried += 1
        P = len(set((inst.face // S).tolist()))
        r_star = inst.q - inst.y_star
        residual_drops += int(not set(inst.face.tolist()) <= set(_route(inst.K @ r_star, S, P).tolist()))
        kept = _route(inst.K @ inst.q, S, P)
        mean_kept = _route(inst.K @ inst.q, S, P, page_score="mean")
        mean_drops[near] += int(not set(inst.face.tolist()) <= set(mean_kept.tolist()))
        dropped = not set(inst.face.tolist()) <= set(kept.tolist())
        if not dropped:
            continue
        if near:
            drops += 1
        else:
            drops_far += 1
        # the residual certificate on the candidates catches it: some μ̂_j < 0
        p = project_onto_hull(inst.q, inst.K[kept], solver="wolfe")
        r_hat = inst.q - p.y
        mu_hat = float(r_hat @ p.y) - inst.K @ r_hat
        detected += int(mu_hat.min() < -1e-9)
        if ce is None or inst.K.shape[0] < ce["M"]:
            ce = instance_record(inst) | {"S": S, "P": P, "routed_keys": kept.tolist()}
    violations = drops + drops_far
    return CheckResult(claim=CLAIM, instances=tried, violations=violations,
                       worst_ratio=float(violations) / max(tried, 1), counterexample=ce,
                       exact_checked=exact_certificates(rng, 1),
                       constants={"drop_rate_near_hull": drops / max(1, (n + 1) // 2),
                                  "drop_rate_far_from_hull": drops_far / max(1, n // 2),
                                  "drops_detected_by_residual_certificate":
                                      detected / max(violations, 1),
                                  "drop_rate_residual_router": residual_drops / max(tried, 1),
                                  "drop_rate_near_hull_mean_router": mean_drops[True] / max(1, (n + 1) // 2),
                                  "drop_rate_far_from_hull_mean_router": mean_drops[False] / max(1, n // 2)},
                       notes=["worst ratio here = fraction of instances where raw routing dropped a face key.",
                              "A finding, not a bug: route with the residual, or certify with it "
                              "(SPEC 3) and fall back."])
