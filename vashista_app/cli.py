"""The ``vashista`` console script: a thin dispatcher over one module per subcommand.

Each subcommand module exposes ``main(argv: list[str]) -> int`` with its own argparse parser. Modules
are imported only when their subcommand runs, so ``vashista certify`` never imports torch.

A plain ``pip install vashista`` has the core dependencies only (NumPy, SciPy, cvxpy, Clarabel, tqdm:
enough for ``certify`` and ``check``). A subcommand that needs an optional one (torch for ``repro``
and ``quality``, transformers for the model, ...) exits with status 2 and one line naming the extra
to install, instead of a traceback: ``main`` catches the ``ModuleNotFoundError`` of the modules in
``EXTRAS`` only, so a missing module of our own still fails loudly.
"""
from __future__ import annotations

import importlib
import sys

__all__ = ["COMMANDS", "EXTRAS", "main"]

# name -> (module, one-line help). Add a line here when a subcommand lands.
COMMANDS: dict[str, tuple[str, str]] = {
    "certify": ("vashista_app.cmd_certify", "solve a projection / sparse decode step and print its certificate"),
    "check": ("proofs_checks.cli", "run every paper claim as a check and write a report"),
    "generate": ("vashista_app.cmd_generate", "greedy generation with Vashista owning the KV cache (certified decode)"),
    "quality": ("vashista_app.quality.cli", "dense vs Vashista decode quality on the embedded model"),
    "repro": ("vashista_app.repro", "regenerate the paper's tables and figures"),
}

# top-level module of an optional dependency -> the extra (pyproject.toml) that installs it
EXTRAS: dict[str, str] = {
    "torch": "gpu", "triton": "gpu",
    "transformers": "model", "gguf": "model", "accelerate": "model", "safetensors": "model",
    "matplotlib": "reports",
    "nbclient": "notebooks", "nbformat": "notebooks", "ipykernel": "notebooks",
}


def _usage() -> str:
    width = max(len(n) for n in COMMANDS)
    lines = ["usage: vashista <command> [options]", "", "commands:"]
    lines += [f"  {n:<{width}}  {h}" for n, (_, h) in COMMANDS.items()]
    lines += ["", "Run 'vashista <command> --help' for a command's options."]
    return "\n".join(lines)


def missing_extra(exc: ModuleNotFoundError) -> str | None:
    """The extra that provides the module ``exc`` could not find, or None if it is not optional."""
    return EXTRAS.get((exc.name or "").split(".")[0])


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(_usage())
        return 0 if argv else 2
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"vashista: unknown command {name!r}\n\n{_usage()}", file=sys.stderr)
        return 2
    try:
        module = importlib.import_module(COMMANDS[name][0])
        return int(module.main(rest) or 0)
    except ModuleNotFoundError as exc:
        extra = missing_extra(exc)
        if extra is None:
            raise
        print(f"vashista {name}: needs {exc.name.split('.')[0]}, which is not installed; "
              f"install it with: pip install \"vashista[{extra}]\"", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
