"""``vashista check`` / ``python -m proofs_checks``: run every claim of the paper as a check.

    vashista check --quick --out check_report     # CI-sized, about a minute
    vashista check                                # thorough

Prints the ledger (claim · instances · holds · worst ratio · constants) and writes report.md,
report.csv and two figures to ``--out``. A claim that fails is a *finding*: the exit status is 0
unless ``--strict`` is given (then 1 when any claim fails).
"""
from __future__ import annotations

import json
import sys

from vashista_core.cli_args import Parser, nonneg_int, output_dir, report
from vashista_core.errors import VashistaInputError

from .runner import run_all, table


def main(argv: list[str] | None = None) -> int:
    p = Parser(prog="vashista check", description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="small budgets (CI)")
    p.add_argument("--out", default="check_report", help="folder for report.md, report.csv, plots")
    p.add_argument("--seed", type=nonneg_int, default=0)
    p.add_argument("--only", default=None, help="comma-separated claim numbers, e.g. 2,3")
    p.add_argument("--json", action="store_true", help="print a JSON list of claim summaries")
    p.add_argument("--strict", action="store_true", help="exit 1 if any claim fails")
    try:
        args = p.parse_args(argv)
    except SystemExit as exc:                      # --help (0) or a one-line argument error (2)
        return int(exc.code or 0)
    try:
        output_dir(args.out, "--out")               # before minutes of checks, not after
    except VashistaInputError as exc:
        return report("vashista check", exc)
    only = None
    if args.only:
        try:
            only = [int(x) for x in args.only.split(",")]
        except ValueError:
            return report("vashista check", VashistaInputError("--only", "expected comma-separated claim numbers"))
        if not set(only) <= set(range(1, 8)):
            return report("vashista check", VashistaInputError("--only", "claims are numbered 1 to 7"))
    results = run_all(quick=args.quick, seed=args.seed, out=args.out, only=only)
    if args.json:
        print(json.dumps([r.summary() for r in results], default=str))
    else:
        print(table(results))
        print(f"\nreport: {args.out}/report.md, {args.out}/report.csv")
    return 1 if args.strict and not all(r.holds for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
