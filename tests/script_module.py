"""Scripts of the repository (``benchmarks/``, ``scripts/``: not packages) loaded as modules by their
path, for the tests that check them."""
from __future__ import annotations

import importlib.util
import os

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def load_script(relpath: str):
    """The module of the script at ``relpath`` (from the repository root), executed once per call."""
    name = os.path.splitext(os.path.basename(relpath))[0]
    spec = importlib.util.spec_from_file_location(name, os.path.join(ROOT, relpath))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod
