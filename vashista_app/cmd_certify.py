"""``vashista certify``: project a query onto the convex hull of keys and print the KKT certificate.

Input: ``--query q.npy --keys K.npy`` (q of shape [D], K of shape [M, D]) or a seeded random
instance (``--seed N --M 32 --D 8 --family known_face``). Output: y*, the active set I, the face F,
the support gap Δ (or "no certificate" with the reason), the KKT residuals, the entropic relaxation
at ``--eps`` and the softmax model's face, Δ_lin and leakage at ``--eps``. ``--json`` prints one
JSON object (keys ``y_star``, ``active_set``, ``face``, ``gap`` — null without a certificate —,
``kkt_residual``, ``softmax`` {``face``, ``gap``, ``leakage``}, …); indices are 0-based.
``--decode`` runs one sparse paged decode step instead (``vashista certify --decode --help``).

Examples:
    vashista certify --seed 0
    vashista certify --query q.npy --keys K.npy --eps 0.05 --json
"""
from __future__ import annotations

import argparse
import json
import sys

import numpy as np

from vashista_core.cli_args import (Parser, jsonable, load_npy, nonneg_float, nonneg_int, positive_float,
                                   positive_int, report)
from vashista_core.errors import ConvergenceError, VashistaInputError
from vashista_ref.entropic import entropic_projection
from vashista_ref.instances import FAMILIES, draw
from vashista_ref.projection import (DEFAULT_ACTIVE_TOL, DEFAULT_FACE_TOL, DEFAULT_INSIDE_TOL, SOLVERS,
                         project_onto_hull)
from vashista_ref.softmax_model import softmax_certificate_qk


# the library's argument names for the arrays read from files
FLAGS = {"q": "--query", "K": "--keys"}


def build_parser() -> argparse.ArgumentParser:
    p = Parser(prog="vashista certify", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="Run 'vashista certify --decode --help' for the sparse decode step.")
    src = p.add_argument_group("instance")
    src.add_argument("--query", help="q.npy, shape [D]")
    src.add_argument("--keys", help="K.npy, shape [M, D]")
    src.add_argument("--seed", type=nonneg_int, default=None, help="random instance from this seed (default 0)")
    src.add_argument("--family", choices=sorted(FAMILIES), default="known_face")
    src.add_argument("--M", type=positive_int, default=32, help="keys in a random instance")
    src.add_argument("--D", type=positive_int, default=8, help="dimension of a random instance")
    p.add_argument("--eps", type=positive_float, default=0.1, help="entropic / softmax temperature ε (> 0)")
    p.add_argument("--scale", type=positive_float, default=None, help="softmax score scale (default 1/sqrt(D))")
    p.add_argument("--solver", choices=SOLVERS, default="cvxpy", help="exact projection solver")
    p.add_argument("--active-tol", type=nonneg_float, default=DEFAULT_ACTIVE_TOL)
    p.add_argument("--face-tol", type=nonneg_float, default=DEFAULT_FACE_TOL)
    p.add_argument("--inside-tol", type=nonneg_float, default=DEFAULT_INSIDE_TOL)
    p.add_argument("--json", action="store_true", help="print one JSON object")
    return p


def _load(args) -> tuple[np.ndarray, np.ndarray, str]:
    if (args.query is None) != (args.keys is None):
        raise VashistaInputError("--query/--keys", "give both files or neither")
    if args.query is not None:
        if args.seed is not None:
            raise VashistaInputError("--seed", "cannot be combined with --query/--keys")
        return load_npy(args.query, "--query"), load_npy(args.keys, "--keys"), f"{args.query} / {args.keys}"
    seed = 0 if args.seed is None else args.seed
    kw = {"M": args.M, "D": args.D}
    try:
        inst = draw(args.family, seed, **kw)
    except VashistaInputError as exc:
        # the family's own parameters (a face of face_size keys, …) follow from --M and --D
        if exc.argument == "face_size":            # known_face plants a face of 2 keys in D ≥ 2 dimensions
            raise VashistaInputError("--M" if args.M < args.D else "--D",
                                     f"the {args.family} family builds a face of 2 keys: --M and --D must be "
                                     f">= 2, got M={args.M}, D={args.D}") from None
        flag = {"M": "--M", "D": "--D"}.get(exc.argument, "--M/--D")
        raise VashistaInputError(flag, f"the {args.family} family cannot build an instance with M={args.M}, "
                                       f"D={args.D}: {exc.problem}") from None
    return inst.q, inst.K, f"{args.family} instance, seed {seed}, M={args.M}, D={args.D}"


def certify(q, K, *, eps: float = 0.1, scale: float | None = None, solver: str = "cvxpy",
            active_tol: float = DEFAULT_ACTIVE_TOL, face_tol: float = DEFAULT_FACE_TOL,
            inside_tol: float = DEFAULT_INSIDE_TOL) -> dict:
    """Everything ``vashista certify`` reports, as a JSON-ready dict."""
    proj = project_onto_hull(q, K, solver=solver, active_tol=active_tol, face_tol=face_tol,
                             inside_tol=inside_tol)
    ent = entropic_projection(q, K, eps, raise_on_failure=False)
    sm = softmax_certificate_qk(q, K, eps, scale=scale)
    off = np.setdiff1d(np.arange(len(proj.alpha)), proj.active_set)
    return {
        "M": int(np.shape(K)[0]), "D": int(np.shape(K)[1]), "solver": solver,
        "y_star": proj.y.tolist(), "alpha_star": proj.alpha.tolist(),
        "residual_norm": float(np.linalg.norm(proj.r)), "lambda": proj.lam,
        "active_set": proj.active_set.tolist(), "face": proj.face.tolist(),
        "gap": proj.gap, "gap_reason": proj.gap_reason,
        "strictly_complementary": bool(proj.strictly_complementary),
        "kkt_residual": proj.kkt.as_dict(), "tolerances": proj.tolerances,
        "entropic": {"eps": ent.eps, "y": ent.y.tolist(),
                     "distance_to_y_star": float(np.linalg.norm(ent.y - proj.y)),
                     "off_face_mass": float(ent.alpha[off].sum()) if off.size else 0.0,
                     "duality_gap": ent.duality_gap, "converged": ent.converged,
                     "iterations": ent.iterations},
        "softmax": {"eps": sm.eps, "face": sm.face.tolist(), "gap": sm.gap, "leakage": sm.leakage,
                    "leakage_bound": sm.leakage_bound},
    }


def _fmt_vec(v, n=6):
    v = np.asarray(v)
    s = ", ".join(f"{x:.6g}" for x in v[:n])
    return f"[{s}{', …' if v.size > n else ''}]"


def _fmt_idx(ix, n=12):
    return "{" + ", ".join(map(str, ix[:n])) + (", …" if len(ix) > n else "") + "}"


def _print_human(rep: dict, source: str) -> None:
    print(f"Vashista certificate — {source}")
    print(f"  keys M={rep['M']}, dimension D={rep['D']}, exact solver: {rep['solver']}")
    print("\nProjection model (hard attention = projection onto conv(K))")
    print(f"  y* = {_fmt_vec(rep['y_star'])}    ‖r*‖ = {rep['residual_norm']:.6g}")
    print(f"  active set I ({len(rep['active_set'])} keys): {_fmt_idx(rep['active_set'])}")
    print(f"  face F       ({len(rep['face'])} keys): {_fmt_idx(rep['face'])}")
    if rep["gap"] is None:
        print(f"  support gap Δ: no certificate — {rep['gap_reason']}")
    else:
        print(f"  support gap Δ = {rep['gap']:.6g}   ({rep['gap_reason']})")
    k = rep["kkt_residual"]
    print("  KKT residuals: primal {primal_feasibility:.1e}  stationarity {stationarity:.1e}  "
          "compl. slackness {complementary_slackness:.1e}  dual {dual_feasibility:.1e}".format(**k))
    e = rep["entropic"]
    print(f"\nEntropic relaxation at ε = {e['eps']:g}")
    print(f"  ‖y_ε − y*‖ = {e['distance_to_y_star']:.3e}   mass off I = {e['off_face_mass']:.3e}   "
          f"duality gap {e['duality_gap']:.1e} ({'converged' if e['converged'] else 'NOT converged'})")
    s = rep["softmax"]
    print(f"\nSoftmax model at ε = {s['eps']:g} (scores q·k·scale)")
    print(f"  face F = {_fmt_idx(s['face'])}   Δ_lin = {'none (all tokens tie)' if s['gap'] is None else format(s['gap'], '.6g')}")
    print(f"  leakage off F = {s['leakage']:.3e}   bound (M−|F|)e^(−Δ_lin/ε)/|F| = {s['leakage_bound']:.3e}")


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if "--decode" in argv:
        from . import cmd_decode  # imported lazily: the decode step pulls in the paged cache
        return cmd_decode.main([a for a in argv if a != "--decode"])
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exc:                      # --help (0) or a one-line argument error (2)
        return int(exc.code or 0)
    try:
        q, K, source = _load(args)
        rep = certify(q, K, eps=args.eps, scale=args.scale, solver=args.solver,
                      active_tol=args.active_tol, face_tol=args.face_tol, inside_tol=args.inside_tol)
    except (VashistaInputError, ConvergenceError) as exc:
        return report("vashista certify", exc, FLAGS if args.query is not None else {})
    if args.json:
        print(json.dumps(jsonable(rep)))
    else:
        _print_human(rep, source)
    return 0


if __name__ == "__main__":
    sys.exit(main())
