"""The structured result every claim's ``check`` returns, and the claim's self-description."""
from __future__ import annotations

import math
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Claim:
    number: int
    name: str
    latex: str            # the statement in LaTeX
    plain: str            # the statement in plain words
    hypotheses: str       # when it is supposed to hold
    source: str           # where the paper (or SPEC) states it


@dataclass
class CheckResult:
    claim: Claim
    instances: int                      # instances tried
    violations: int                     # instances (or instance × ε points) where it failed
    worst_ratio: float                  # max over instances of observed / bound (≤ 1 means holds)
    constants: dict = field(default_factory=dict)       # measured constants, named
    counterexample: dict | None = None  # the smallest failing instance, JSON-ready
    exact_checked: int = 0              # certificates verified in exact rational arithmetic
    notes: list = field(default_factory=list)
    series: dict = field(default_factory=dict)          # data for the plots
    rows: list = field(default_factory=list)            # per-instance table (for the report)

    @property
    def holds(self) -> bool:
        return self.violations == 0

    @property
    def verdict(self) -> str:
        return "holds" if self.holds else "FAILS"

    def summary(self) -> dict:
        c = {k: (round(v, 6) if isinstance(v, float) and math.isfinite(v) else v)
             for k, v in self.constants.items()}
        return {"claim": self.claim.number, "name": self.claim.name, "instances": self.instances,
                "verdict": self.verdict, "violations": self.violations,
                "worst_ratio": self.worst_ratio, "exact_checked": self.exact_checked,
                "constants": c, "counterexample": self.counterexample}
