"""What a sparse decode step does when its certificate is not good enough (SPEC 3, last lines).

    ReportOnly()                 return the sparse output and its certificate, whatever they say;
    DenseFallback(tol)           if the certified error exceeds tol, recompute that query exactly with
                                 dense attention over its whole sequence (output == ``dense_decode``);
    Capped(tol, P_max, Kc_max)   if the certified error exceeds tol, retry with P and Kc doubled (capped
                                 at P_max, Kc_max and the sequence's pages and tokens) until certified or capped,
                                 then fall back to dense.

"Certified" means ``certified_error <= tol`` for the softmax solver. For the projection solvers
(eg/fw) there is no output-error certificate; a query counts as certified when the residual
certificate's gap is > 0 (the candidates' hull face is the whole cache's), and ``tol`` is not used.
Every attempt's cost (summaries scored, pages read, tokens scored, values read) is added to the
query's cost in the ``DecodeResult``, and so is the dense fallback (all pages, all tokens).

Example:
    >>> from vashista_core.policies import Capped
    >>> Capped(tol=1e-3, P_max=16, Kc_max=256).widen(4, 64)
    (8, 128)
"""
from __future__ import annotations

from dataclasses import dataclass

from .errors import VashistaInputError
from .validate import nonnegative_scalar, positive_int

__all__ = ["Capped", "DenseFallback", "make_policy", "Policy", "ReportOnly"]


@dataclass(frozen=True)
class ReportOnly:
    """Never fall back (the issue's ``none`` policy)."""
    name = "none"


@dataclass(frozen=True)
class DenseFallback:
    """Fall back to dense attention for each query whose certified error exceeds ``tol``."""
    tol: float
    name = "dense_fallback"

    def __post_init__(self):
        nonnegative_scalar("tol", self.tol)


@dataclass(frozen=True)
class Capped:
    """Widen P and Kc (doubling) until certified or at the caps, then fall back to dense."""
    tol: float
    P_max: int
    Kc_max: int
    name = "capped"

    def __post_init__(self):
        nonnegative_scalar("tol", self.tol)
        positive_int("P_max", self.P_max)
        positive_int("Kc_max", self.Kc_max)

    def check_start(self, P: int, Kc: int) -> None:
        if P > self.P_max:
            raise VashistaInputError("P_max", f"must be >= P ({P}), got {self.P_max}")
        if Kc > self.Kc_max:
            raise VashistaInputError("Kc_max", f"must be >= Kc ({Kc}), got {self.Kc_max}")

    def widen(self, P: int, Kc: int, kc_limit: int | None = None, p_limit: int | None = None) -> tuple[int, int]:
        """Next (P, Kc): doubled, capped at P_max and Kc_max, and at the pages (p_limit) and tokens
        (kc_limit) the sequence has, since widening past those repeats the same attempt; never shrinks."""
        p_cap = self.P_max if p_limit is None else min(self.P_max, p_limit)
        kc_cap = self.Kc_max if kc_limit is None else min(self.Kc_max, kc_limit)
        return max(P, min(2 * P, p_cap)), max(Kc, min(2 * Kc, kc_cap))


Policy = ReportOnly | DenseFallback | Capped


def make_policy(name: str, tol: float | None = None, P_max: int | None = None, Kc_max: int | None = None):
    """Build a policy from the CLI spelling: ``none``, ``dense_fallback``, ``capped``."""
    if name == "none":
        return ReportOnly()
    if tol is None:
        raise VashistaInputError("tol", f"policy {name!r} needs a tolerance")
    if name == "dense_fallback":
        return DenseFallback(tol)
    if name == "capped":
        if P_max is None or Kc_max is None:
            raise VashistaInputError("policy", "capped needs P_max and Kc_max")
        return Capped(tol, P_max, Kc_max)
    raise VashistaInputError("policy", f"must be one of none, dense_fallback, capped; got {name!r}")
