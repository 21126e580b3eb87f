"""Exceptions raised by every tier of Vashista.

Bad input is reported by :class:`VashistaInputError`, always naming the offending argument; a solver
that does not reach its tolerance raises :class:`ConvergenceError`. Both derive from standard
exceptions (``ValueError``, ``RuntimeError``) so callers that catch those keep working.
"""


class VashistaInputError(ValueError):
    """An argument is malformed: wrong shape, dtype, non-finite values, or out of range."""

    def __init__(self, argument: str, problem: str):
        self.argument = argument
        self.problem = problem
        super().__init__(f"{argument}: {problem}")


class ConvergenceError(RuntimeError):
    """An iterative solver stopped before its certificate reached the requested tolerance."""
