"""vashista_ref — tier one of Vashista: the exact, float64 reference (NumPy, SciPy, cvxpy; no torch).

Attention as an entropic relaxation of the projection of a query onto the convex hull of the keys,
KKT certificates and support gaps, and a readable sparse paged decode with a runtime certificate.

    >>> import numpy as np
    >>> from vashista_ref import project_onto_hull
    >>> p = project_onto_hull(np.array([1.0, 1.0]), np.array([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0]]))
    >>> p.active_set.tolist(), round(p.gap, 6)
    ([1, 2], 0.5)
"""
from vashista_core.errors import ConvergenceError, VashistaInputError

from .entropic import EntropicSolution, entropic_projection
from .projection import HullProjection, kkt_certificate, project_onto_hull
from .softmax_model import SoftmaxCertificate, softmax_certificate

__all__ = ["ConvergenceError", "VashistaInputError", "HullProjection", "kkt_certificate",
           "project_onto_hull", "EntropicSolution", "entropic_projection", "SoftmaxCertificate",
           "softmax_certificate"]
__version__ = "0.1.0"
