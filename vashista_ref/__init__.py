"""vashista_ref — tier one of Vashista: the exact, float64 reference (NumPy, SciPy, cvxpy; no torch).

Attention as an entropic relaxation of the projection of a query onto the convex hull of the keys,
KKT certificates and support gaps, and a readable sparse paged decode with a runtime certificate.
"""
from .errors import ConvergenceError, VashistaInputError

__all__ = ["ConvergenceError", "VashistaInputError"]
__version__ = "0.1.0"
