"""The ``vashista`` console script: a thin dispatcher over one module per subcommand.

Each subcommand module exposes ``main(argv: list[str]) -> int`` with its own argparse parser. Modules
are imported only when their subcommand runs, so ``vashista certify`` never imports torch.
"""
from __future__ import annotations

import importlib
import sys

# name -> (module, one-line help). Add a line here when a subcommand lands.
COMMANDS: dict[str, tuple[str, str]] = {
    "certify": ("vashista_ref.cli_certify", "solve a projection / sparse decode step and print its certificate"),
    "check": ("proofs_checks.cli", "run every paper claim as a check and write a report"),
    "quality": ("vashista_gpu.quality.cli", "dense vs Vashista decode quality on the embedded model"),
    "repro": ("vashista_gpu.repro", "regenerate the paper's tables and figures"),
}


def _usage() -> str:
    width = max(len(n) for n in COMMANDS)
    lines = ["usage: vashista <command> [options]", "", "commands:"]
    lines += [f"  {n:<{width}}  {h}" for n, (_, h) in COMMANDS.items()]
    lines += ["", "Run 'vashista <command> --help' for a command's options."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(_usage())
        return 0 if argv else 2
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"vashista: unknown command {name!r}\n\n{_usage()}", file=sys.stderr)
        return 2
    module = importlib.import_module(COMMANDS[name][0])
    return int(module.main(rest) or 0)


if __name__ == "__main__":
    sys.exit(main())
