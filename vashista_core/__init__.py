"""Vashista's shared contracts: what every tier agrees on, importing only the standard library and NumPy.

    errors      VashistaInputError (bad input, naming the argument), ConvergenceError
    validate    argument checks (real arrays, positive scalars and integers)
    policies    ReportOnly, DenseFallback, Capped, make_policy: what a decode step does when its
                certificate is not good enough
    options     solver / router / sketch option names and their checks
    rounding    unit roundoffs, γ_n, outward rounding used by the certificates

No module here imports SciPy, torch or another Vashista package (tests/test_import_rules.py).
"""
from .errors import ConvergenceError, VashistaInputError
from .policies import Capped, DenseFallback, Policy, ReportOnly, make_policy

__all__ = ["Capped", "ConvergenceError", "DenseFallback", "Policy", "ReportOnly", "VashistaInputError",
           "make_policy"]
