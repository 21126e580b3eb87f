"""What every command line (vashista_app, proofs_checks.cli) shares: one-line errors with exit status 2,
argument types that check ranges, input files, output folders, and how certificates are printed.
Standard library and NumPy only, like the rest of vashista_core.

Every bad input to a subcommand ends in ONE line on stderr that names the argument, and exit status 2
(tests/test_cli_bad_input.py): argparse's own errors (:class:`Parser`), range checks at parse time
(``nonneg_int`` …), and the library's ``VashistaInputError`` / ``ConvergenceError`` (:func:`report`).

Certificates print in three distinct ways (:func:`cert_text`, :func:`cert_json`): a number; ``inf`` —
a certificate that says nothing can be bounded (JSON: the string ``"inf"``); ``none`` — no certificate
exists (the projection solvers eg/fw have no output-error certificate; JSON: ``null``).

Example:
    >>> from vashista_core.cli_args import cert_text, cert_json
    >>> cert_text(1.5e-3), cert_text(float("inf")), cert_text(float("nan"))
    ('1.500e-03', 'inf', 'none')
    >>> cert_json(float("inf")), cert_json(float("nan"))
    ('inf', None)
"""
from __future__ import annotations

import argparse
import math
import os
import sys

import numpy as np

from vashista_core.errors import VashistaInputError

__all__ = ["Parser", "cert_json", "cert_text", "finite_float", "jsonable", "load_npy", "nonneg_float", "nonneg_int",
           "output_dir", "positive_float", "positive_int", "report"]


class Parser(argparse.ArgumentParser):
    """argparse, with its errors on one line (no usage block) and exit status 2."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def _int(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None


def nonneg_int(text: str) -> int:
    v = _int(text)
    if v < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {v}")
    return v


def positive_int(text: str) -> int:
    v = _int(text)
    if v < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {v}")
    return v


def finite_float(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not math.isfinite(v):
        raise argparse.ArgumentTypeError(f"must be finite, got {text!r}")
    return v


def nonneg_float(text: str) -> float:
    v = finite_float(text)
    if v < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {text!r}")
    return v


def positive_float(text: str) -> float:
    v = finite_float(text)
    if v <= 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {text!r}")
    return v


def load_npy(path: str, flag: str) -> np.ndarray:
    """A .npy file as an array; any unreadable file (missing, a folder, empty, truncated, not .npy,
    pickled objects) is a VashistaInputError naming ``flag``."""
    if os.path.isdir(path):
        raise VashistaInputError(flag, f"{path!r} is a folder, expected a .npy file")
    try:
        return np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError) as exc:     # EOFError: a 0-byte or truncated file
        raise VashistaInputError(flag, f"cannot read {path!r} as a .npy array: {exc or type(exc).__name__}") from None


def output_dir(path: str, flag: str = "--out") -> str:
    """An output folder that exists or can be created; a file there is an error naming ``flag``."""
    if os.path.exists(path) and not os.path.isdir(path):
        raise VashistaInputError(flag, f"{path!r} exists and is not a folder")
    parent = os.path.dirname(os.path.abspath(path))
    while not os.path.exists(parent):
        parent = os.path.dirname(parent)
    if not os.path.isdir(parent) or not os.access(parent, os.W_OK):
        raise VashistaInputError(flag, f"cannot create {path!r}: {parent!r} is not a writable folder")
    return path


def report(prog: str, exc: Exception, flags: dict | None = None) -> int:
    """Print one line for a library error and return exit status 2. ``flags`` maps the library's
    argument names (``q``) to the command-line flag that supplied them (``--query``)."""
    text = " ".join(str(exc).split())                      # one line, whatever the message holds
    flag = (flags or {}).get(getattr(exc, "argument", None))
    print(f"{prog}: error: {'argument ' + flag + ': ' if flag else ''}{text}", file=sys.stderr)
    return 2


def cert_text(x) -> str:
    """A certificate for people: the number, ``inf`` (nothing can be bounded) or ``none`` (no certificate)."""
    x = float(x)
    if math.isnan(x):
        return "none"
    return "inf" if math.isinf(x) else f"{x:.3e}"


def cert_json(x):
    """A certificate for JSON: the number, ``"inf"`` (nothing can be bounded) or null (no certificate)."""
    x = float(x)
    if math.isnan(x):
        return None
    return ("inf" if x > 0 else "-inf") if math.isinf(x) else x


def jsonable(obj):
    """``obj`` with every float made valid JSON: NaN → null, ±inf → "inf"/"-inf" (json.dumps would
    write the non-standard NaN / Infinity)."""
    if isinstance(obj, dict):
        return {k: jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [jsonable(v) for v in obj]
    if isinstance(obj, (float, np.floating)):
        return cert_json(obj)
    return obj
