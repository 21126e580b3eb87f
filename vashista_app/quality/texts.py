"""Long real texts that ship on every machine, for the quality suite (no download).

* ``code``  — Python standard-library modules (``_pydecimal.py``, ``typing.py``, ``inspect.py``,
  ``turtle.py``), PSF licence;
* ``prose`` — the English reference prose of ``pydoc_data.topics`` (the help texts of the Python
  language reference), PSF licence — the dictionary's *values*, so the model reads prose, not a
  Python literal;
* any UTF-8 file the user names (``--text FILE``).

Example::

    >>> from vashista_app.quality.texts import load_text
    >>> len(load_text("prose")) > 400_000
    True
"""
from __future__ import annotations

import importlib.util
import os

from vashista_core.errors import VashistaInputError

CODE_MODULES = ("_pydecimal", "typing", "inspect", "turtle")
LICENCE = {"code": "Python standard library source (PSF licence)",
           "prose": "pydoc_data.topics, Python language reference prose (PSF licence)"}


def _module_file(name: str) -> str:
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.origin or not os.path.isfile(spec.origin):
        raise VashistaInputError("text", f"standard-library module {name!r} has no source file here")
    return spec.origin


def load_text(kind: str) -> str:
    """``"code"``, ``"prose"`` or a path to a UTF-8 text file."""
    if kind == "code":
        return "\n\n".join(open(_module_file(m), encoding="utf-8").read() for m in CODE_MODULES)
    if kind == "prose":
        from pydoc_data import topics
        return "\n\n".join(topics.topics[k] for k in sorted(topics.topics))
    if not os.path.isfile(kind):
        raise VashistaInputError("text", f"{kind!r} is neither 'code', 'prose' nor a readable file")
    try:
        text = open(kind, encoding="utf-8").read()
    except UnicodeDecodeError as e:
        raise VashistaInputError("text", f"{kind} is not UTF-8 text ({e.reason})") from None
    if not text.strip():
        raise VashistaInputError("text", f"{kind} is empty")
    return text


def describe(kind: str) -> str:
    return LICENCE.get(kind, f"user file {kind}")
