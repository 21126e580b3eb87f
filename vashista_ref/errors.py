"""Re-export of :mod:`vashista_core.errors` (the errors moved there so the GPU tier can raise them
without importing the reference tier); kept so ``from vashista_ref.errors import ...`` still works."""
from vashista_core.errors import ConvergenceError, VashistaInputError

__all__ = ["ConvergenceError", "VashistaInputError"]
