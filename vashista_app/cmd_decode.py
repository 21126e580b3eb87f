"""``vashista certify --decode``: run one sparse paged decode step and print its certificate next to the
true error against dense attention.

The cache is a seeded synthetic one (``--seed --context --page-size --kind --kv-heads --group --dim
--batch``) or, with ``--keys K.npy --values V.npy --query q.npy`` (K, V of shape [tokens, dim], q of
shape [dim]), the given arrays as one sequence and one head. ``--json`` prints one object with
``certified_error``, ``true_error``, ``gap``, ``fell_back`` (worst case over the queries: max, max, min,
any), ``certified_leakage`` (L̂) and ``true_leakage`` (dense mass outside the candidates; both max over
the queries) and a ``per_query`` list. An infinite number is written as the string "inf" (an infinite
certificate: nothing can be bounded; an infinite gap: every token was read) and NaN as null (no
certificate: the eg/fw solvers have none); the table prints them as ``inf`` and ``none``
(``vashista_core.cli_args.cert_text``). Caches larger than ``MAX_CACHE_BYTES`` are refused before anything
is allocated. ``--router sketch --bits 4|8`` runs certified mode (vashista_ref/sketch.py, SPEC 3b).

Example:
    vashista certify --decode --seed 0 --context 4096 --page-size 64 --P 8 --Kc 256 --router mean --json
    >>> from vashista_app.cmd_decode import main
    >>> main(["--seed", "0", "--context", "64", "--page-size", "8", "--P", "2", "--Kc", "16", "--quiet"])
    0
"""
from __future__ import annotations

import argparse
import json
import sys

import numpy as np

from vashista_core.cli_args import (Parser, cert_json, cert_text, finite_float, load_npy, nonneg_int,
                                   positive_float, positive_int, report as report_error)
from vashista_core.errors import ConvergenceError, VashistaInputError
from vashista_core.options import ALL_ROUTERS, SOLVERS, SUPPORTED_BITS
from vashista_core.policies import make_policy
from vashista_ref.sketch import dense_leakage
from vashista_ref.sparse_decode import sparse_decode, sparse_decode_single
from vashista_ref.synthetic import KINDS, make_case

# the library's argument names for the arrays read from files
FLAGS = {"q": "--query", "K": "--keys", "V": "--values"}


def build_parser() -> argparse.ArgumentParser:
    p = Parser(prog="vashista certify --decode", description=__doc__.split("\n\n")[0])
    p.add_argument("--decode", action="store_true", help="(accepted for the certify dispatcher; implied)")
    src = p.add_argument_group("cache")
    src.add_argument("--seed", type=nonneg_int, default=0)
    src.add_argument("--context", type=positive_int, default=1024, help="tokens in the (longest) sequence")
    src.add_argument("--page-size", type=positive_int, default=16)
    src.add_argument("--kind", choices=KINDS, default="gaussian", help="synthetic cache kind")
    src.add_argument("--kv-heads", type=positive_int, default=1)
    src.add_argument("--group", type=positive_int, default=1, help="query heads per KV head (GQA)")
    src.add_argument("--dim", type=positive_int, default=64, help="head dimension D (= value dimension)")
    src.add_argument("--batch", type=positive_int, default=1)
    src.add_argument("--q-scale", type=positive_float, default=1.0, help="query norm multiplier (sharper attention)")
    src.add_argument("--keys", help="K.npy, shape [tokens, dim] (with --values and --query)")
    src.add_argument("--values", help="V.npy, shape [tokens, dim_v]")
    src.add_argument("--query", help="q.npy, shape [dim]")
    dec = p.add_argument_group("decode")
    dec.add_argument("--P", type=positive_int, default=8, help="pages routed besides sink and newest")
    dec.add_argument("--Kc", type=positive_int, default=128, help="candidate tokens")
    dec.add_argument("--solver", choices=SOLVERS, default="softmax")
    dec.add_argument("--router", choices=ALL_ROUTERS, default="bound",
                     help="sketch = certified mode (quantized key sketch of every token)")
    dec.add_argument("--bits", type=int, choices=SUPPORTED_BITS, default=None,
                     help="sketch bits for --router sketch (default 4)")
    dec.add_argument("--sink-pages", type=nonneg_int, default=1)
    dec.add_argument("--scale", type=positive_float, default=None, help="score scale (default 1/sqrt(dim))")
    dec.add_argument("--eps", type=positive_float, default=None, help="eg/fw entropic ε (default 1/scale)")
    dec.add_argument("--iters", type=positive_int, default=50, help="eg/fw iterations")
    dec.add_argument("--share-selection", action="store_true", help="one selection per GQA group")
    dec.add_argument("--hierarchical", type=positive_int, default=None, metavar="FANOUT",
                     help="route through a pages-of-pages hierarchy with this fanout")
    dec.add_argument("--policy", choices=("none", "dense_fallback", "capped"), default="none")
    dec.add_argument("--tol", type=finite_float, default=None, help="certified-error tolerance of the policy")
    dec.add_argument("--P-max", type=positive_int, default=None)
    dec.add_argument("--Kc-max", type=positive_int, default=None)
    out = p.add_argument_group("output")
    out.add_argument("--json", action="store_true", help="print one JSON object")
    out.add_argument("--quiet", action="store_true", help="print nothing (exit status only)")
    return p


def _num(x) -> float | str | None:
    return cert_json(x)


# A synthetic cache is refused above this size before it is built: the reference tier holds keys and
# values in float64 plus page copies and a dense gather for the true error (≈ 4 copies)
MAX_CACHE_BYTES = 4 << 30


def _check_size(args) -> None:
    need = 4 * 8 * args.batch * args.context * args.kv_heads * 2 * args.dim
    if need > MAX_CACHE_BYTES:
        raise VashistaInputError("--context", f"a synthetic cache of batch {args.batch} × {args.context} tokens × "
                                              f"{args.kv_heads} KV heads × dim {args.dim} needs ~{need / 2**30:.1f} GiB "
                                              f"in the float64 reference (limit {MAX_CACHE_BYTES / 2**30:.0f} GiB); "
                                              f"lower --context, --batch, --kv-heads or --dim")


def run(args) -> dict:
    policy = make_policy(args.policy, args.tol, args.P_max, args.Kc_max)
    kw = dict(solver=args.solver, scale=args.scale, sink_pages=args.sink_pages, router=args.router, policy=policy,
              share_selection_in_group=args.share_selection, hierarchical=args.hierarchical is not None,
              eps=args.eps, iters=args.iters, bits=args.bits)
    given = [args.keys, args.values, args.query]
    if any(given):
        if not all(given):
            raise VashistaInputError("--keys", "--keys, --values and --query must be given together")
        if args.hierarchical is not None:
            raise VashistaInputError("--hierarchical", "is available for synthetic caches only")
        kw.pop("hierarchical")
        res = sparse_decode_single(load_npy(args.query, "--query"), load_npy(args.keys, "--keys"),
                                   load_npy(args.values, "--values"), args.P, args.Kc, page_size=args.page_size, **kw)
        source = {"source": "arrays", "keys": args.keys, "values": args.values, "query": args.query}
    else:
        _check_size(args)
        case = make_case(args.kind, args.seed, context=args.context, page_size=args.page_size,
                         n_kv_heads=args.kv_heads, group=args.group, head_dim=args.dim, batch=args.batch,
                         q_scale=args.q_scale, fanout=args.hierarchical)
        res = sparse_decode(case.q, case.cache, case.seq_ids, args.P, args.Kc, **kw)
        source = {"source": "synthetic", "kind": args.kind, "seed": args.seed, "context": args.context}
    true_err = np.linalg.norm(res.out - res.dense_out(), axis=-1)
    B, Hq = true_err.shape
    true_leak = _true_leakage(res)
    per_query = [dict(batch=b, head=h, certified_error=_num(res.certified_error[b, h]),
                      true_error=_num(true_err[b, h]), gap=_num(res.gap[b, h]),
                      certified_leakage=_num(res.certified_leakage[b, h]),
                      true_leakage=_num(true_leak[b, h]),
                      error_2lv=_num(res.error_2lv[b, h]), fell_back=bool(res.fell_back[b, h]),
                      pages_read=int(res.pages_read[b, h]), tokens_scored=int(res.tokens_scored[b, h]),
                      summaries_scored=int(res.summaries_scored[b, h]), P_used=int(res.P_used[b, h]),
                      Kc_used=int(res.Kc_used[b, h]))
                 for b in range(B) for h in range(Hq)]
    return dict(source, solver=args.solver, router=args.router, P=args.P, Kc=args.Kc, policy=args.policy,
                certified_error=_num(np.max(res.certified_error)), true_error=_num(np.max(true_err)),
                gap=_num(np.min(res.gap)), fell_back=bool(np.any(res.fell_back)),
                certified_leakage=_num(np.max(res.certified_leakage)), true_leakage=_num(np.max(true_leak)),
                bits=args.bits if args.router != "sketch" or args.bits else 4,
                sound=bool(np.all(np.isnan(res.certified_error) | (res.certified_error >= true_err))),
                per_query=per_query)


def _true_leakage(res) -> np.ndarray:
    """Dense softmax mass outside each query's (last attempt's) candidates, (B, Hq)."""
    q, cache, seq_ids, kw = res._dense
    B, Hq, _ = q.shape
    G = Hq // cache.n_kv_heads
    out = np.empty((B, Hq))
    for b, sid in enumerate(seq_ids):
        for kvh in range(cache.n_kv_heads):
            K, V = cache.gather(sid, kvh)
            for h in range(kvh * G, (kvh + 1) * G):
                out[b, h] = dense_leakage(q[b, h], K, V, res.candidates[b][h], kw["scale"])[0]
    return out


def _fmt(x) -> str:
    return cert_text(float(x) if isinstance(x, (int, float)) else {"inf": "inf", "-inf": "-inf"}.get(x, "nan"))


def main(argv: list[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(list(sys.argv[1:] if argv is None else argv))
    except SystemExit as exc:                      # --help (0) or a one-line argument error (2)
        return int(exc.code or 0)
    try:
        # values near float64's limit make norms and bounds +inf on purpose (an infinite certificate,
        # printed "inf"): not a NumPy warning on stderr next to the answer
        with np.errstate(over="ignore"):
            report = run(args)
    except (VashistaInputError, ConvergenceError) as exc:
        return report_error("vashista certify --decode", exc, FLAGS)
    if args.quiet:
        return 0
    if args.json:
        print(json.dumps(report))
        return 0
    gap_name = "projection gap" if args.solver != "softmax" else "gap"
    print(f"sparse decode ({report['source']}, solver={args.solver}, router={args.router}, P={args.P}, "
          f"Kc={args.Kc}, policy={args.policy})")
    print(f"{'b':>3} {'h':>3} {'certified':>11} {'true error':>11} {gap_name:>11} {'fell back':>9} {'tokens':>7}")
    for r in report["per_query"]:
        print(f"{r['batch']:>3} {r['head']:>3} {_fmt(r['certified_error']):>11} {_fmt(r['true_error']):>11} "
              f"{_fmt(r['gap']):>11} {str(r['fell_back']):>9} {r['tokens_scored']:>7}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
