"""Long real texts for the long-context suite: haystacks of the RULER-style tasks and perplexity texts.

Always present (the Python standard library, PSF licence, ``texts.py``):

* ``pydoc-topics`` — English reference prose (``pydoc_data.topics``), ~172k tokens;
* ``stdlib-code``  — ``_pydecimal.py``, ``typing.py``, ``inspect.py``, ``turtle.py``.

Optional, fetched once by ``scripts/fetch_longctx_texts.sh DIR`` into ``$VASHISTA_TEXT_DIR`` (default
``~/.cache/vashista/texts``) as ``NAME.txt`` plus ``sources.json`` (kind, origin, licence, sha256):
``devil`` (Bierce, public domain), ``gnu-standards`` (GFDL-1.3), ``bible-kjv`` (public domain),
``paradise-lost``, ``shakespeare-sonnets``, ``shakespeare-plays`` (Gutenberg texts, public domain).
A file whose sha256 differs from its record is refused, so a result names exactly the text it used.

Example::

    >>> from vashista_app.quality.haystacks import available, load
    >>> sorted(n for n, s in available().items() if s.origin.startswith("Python"))
    ['pydoc-topics', 'stdlib-code']
    >>> len(load("pydoc-topics")) > 400_000
    True
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass

from vashista_core.errors import VashistaInputError

__all__ = ["BUILTIN", "PPL_PREFERENCE", "TextSource", "available", "default_ppl_texts", "describe", "load", "text_dir"]

from .texts import load_text


@dataclass(frozen=True)
class TextSource:
    name: str
    kind: str          # prose | code | verse
    origin: str
    licence: str
    path: str | None   # None: a standard-library text
    sha256: str | None = None


BUILTIN = {
    "pydoc-topics": TextSource("pydoc-topics", "prose", "Python standard library, pydoc_data.topics",
                               "PSF licence", None),
    "stdlib-code": TextSource("stdlib-code", "code", "Python standard library, _pydecimal/typing/inspect/turtle",
                              "PSF licence", None),
}
_BUILTIN_KIND = {"pydoc-topics": "prose", "stdlib-code": "code"}   # texts.load_text's names

# perplexity texts in order of preference per kind: the first present one of each kind is used
PPL_PREFERENCE = {"prose": ("pydoc-topics",), "code": ("stdlib-code",),
                  "verse": ("paradise-lost", "shakespeare-plays", "bible-kjv")}


def text_dir() -> str:
    return os.environ.get("VASHISTA_TEXT_DIR") or os.path.join(os.path.expanduser("~"), ".cache", "vashista",
                                                               "texts")


def available(directory: str | None = None) -> dict[str, TextSource]:
    """Every text present here: the built-in ones plus those ``sources.json`` lists with their file."""
    out = dict(BUILTIN)
    d = directory or text_dir()
    try:
        with open(os.path.join(d, "sources.json"), encoding="utf-8") as f:
            recs = json.load(f)
    except (OSError, ValueError):
        return out
    for name, r in sorted(recs.items()):
        path = os.path.join(d, f"{name}.txt")
        if os.path.isfile(path):
            out[name] = TextSource(name, r["kind"], r["origin"], r["licence"], path, r.get("sha256"))
    return out


def load(name: str, directory: str | None = None) -> str:
    """The text called ``name`` (see :func:`available`); a VashistaInputError naming ``text`` otherwise."""
    if name in BUILTIN:
        return load_text(_BUILTIN_KIND[name])
    src = available(directory).get(name)
    if src is None:
        raise VashistaInputError("text", f"{name!r} is not available here (have: {', '.join(available(directory))}; "
                                         f"optional texts come from scripts/fetch_longctx_texts.sh)")
    data = open(src.path, "rb").read()
    if src.sha256 and hashlib.sha256(data).hexdigest() != src.sha256:
        raise VashistaInputError("text", f"{src.path} differs from the sha256 recorded in sources.json")
    return data.decode("utf-8", errors="replace")


def default_ppl_texts(directory: str | None = None) -> list[str]:
    """One text per kind (prose, code, verse) among those present; verse needs the optional texts."""
    have = available(directory)
    out = []
    for kind, names in PPL_PREFERENCE.items():
        for n in names:
            if n in have:
                out.append(n)
                break
    return out


def describe(name: str, directory: str | None = None) -> dict:
    s = available(directory).get(name)
    if s is None:
        return dict(name=name, kind="?", origin="?", licence="?")
    return dict(name=s.name, kind=s.kind, origin=s.origin, licence=s.licence)
