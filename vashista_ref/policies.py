"""Re-export of :mod:`vashista_core.policies` (shared by every tier, so it lives in the contracts
package); kept so ``from vashista_ref.policies import ...`` still works."""
from vashista_core.policies import Capped, DenseFallback, Policy, ReportOnly, make_policy

__all__ = ["Capped", "DenseFallback", "Policy", "ReportOnly", "make_policy"]
