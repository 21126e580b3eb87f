"""The long-context run's files: ``results.jsonl`` (one JSON line per (job, mode), appended and flushed
as soon as it is known; a rerun skips every key already there) and ``config.json`` (what the items
depend on; a resumed run must match it). An archived run keeps its records gzipped beside it,
``results.jsonl.gz`` (what ``benchmarks/results`` holds, to keep the checkout small enough to carry
to the device machine): reading takes both files, a resumed run appends to the plain one.

Example::

    >>> import tempfile, os
    >>> d = tempfile.mkdtemp(); f = ResultsFile(os.path.join(d, RESULTS))
    >>> f.append(dict(task="vt", ctx=4096, item=0, mode="dense", score=1.0, err=float("inf")))
    >>> read_results(os.path.join(d, RESULTS))[0]["err"] is None, ("vt", 4096, 0, "dense") in f.done
    (True, True)
"""
from __future__ import annotations

import gzip
import json
import math
import os

from vashista_core.errors import VashistaInputError

__all__ = ["CONFIG", "RESULTS", "ResultsFile", "config_diff", "json_safe", "merge_results", "pin_config",
           "read_results", "record_key"]

RESULTS = "results.jsonl"
CONFIG = "config.json"


def read_results(path: str) -> list[dict]:
    """Every complete record of a results file and of its gzipped archive ``path + ".gz"`` (module
    doc), the archive's first; a line cut by a crash is ignored, and so is a record of the plain file
    whose key the archive already has (a plain file copied back beside its archive is read once)."""
    out, archived = [], set()
    for name, opener in ((path + ".gz", gzip.open), (path, open)):
        if not os.path.exists(name):
            continue
        with opener(name, "rt", encoding="utf-8") as f:
            for line in f:
                try:
                    r = json.loads(line)
                except ValueError:
                    continue
                if opener is gzip.open:
                    archived.add(record_key(r))
                elif archived and record_key(r) in archived:
                    continue
                out.append(r)
    return out


def record_key(r: dict) -> tuple:
    return (r["task"], r["ctx"], r.get("item", r.get("text")), r["mode"])


class ResultsFile:
    """Append-only JSON lines; ``done`` holds the keys already recorded (resume)."""

    def __init__(self, path: str):
        self.path = path
        recs = read_results(path)
        self.done = {record_key(r) for r in recs}
        if recs and os.path.exists(path) and os.path.getsize(path):
            # a crash can leave a partial last line: end it so the next record starts on its own line
            with open(path, "rb") as f:
                f.seek(-1, os.SEEK_END)
                if f.read(1) != b"\n":
                    with open(path, "a", encoding="utf-8") as g:
                        g.write("\n")

    def append(self, rec: dict) -> None:
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps(json_safe(rec)) + "\n")
            f.flush()
            os.fsync(f.fileno())
        self.done.add(record_key(rec))


def json_safe(x):
    """JSON-safe: non-finite floats become None (a window mode has no certificate: +inf)."""
    if isinstance(x, float):
        return x if math.isfinite(x) else None
    if isinstance(x, dict):
        return {k: json_safe(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [json_safe(v) for v in x]
    return x


def config_diff(a: dict, b: dict) -> list[str]:
    """The keys whose values differ between two run configs (a key missing from one differs)."""
    return sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))


def pin_config(out: str, pinned: dict, fresh: bool) -> None:
    """Write ``config.json``, or check that a resumed run has the same one."""
    os.makedirs(out, exist_ok=True)
    path = os.path.join(out, CONFIG)
    if fresh:
        for f in (path, os.path.join(out, RESULTS)):
            if os.path.exists(f):
                os.remove(f)
    if os.path.exists(path):
        diff = config_diff(json.load(open(path)), pinned)
        if diff:
            raise VashistaInputError("--out", f"{out} holds a run with other {', '.join(diff)}; resume with the same "
                                              f"settings, or pass --fresh, or another --out")
    with open(path, "w") as f:
        json.dump(pinned, f, indent=1, sort_keys=True)


def merge_results(out: str, sources: list[str]) -> int:
    """Merge the records of run folders ``sources`` (each a ``config.json`` and ``results.jsonl`` and/or
    its archive) into ``out``: one record per key (``record_key``), a later folder's replacing an
    earlier one's, written as ``out/results.jsonl.gz`` beside their common ``config.json``. The configs
    must be equal (the records of different models, spans or seeds do not compare). Returns the
    number of records; write the report with ``longctx_report.write_report(out)``."""
    if not sources:
        raise VashistaInputError("--merge", "name at least one run folder")
    configs, merged = [], {}
    for src in sources:
        cfg_path = os.path.join(src, CONFIG)
        if not os.path.isfile(cfg_path):
            raise VashistaInputError("--merge", f"{src} has no {CONFIG}: not a long-context run folder")
        configs.append(json.load(open(cfg_path)))
        diff = config_diff(configs[0], configs[-1])
        if diff:
            raise VashistaInputError("--merge", f"{src} was run with other {', '.join(diff)} than {sources[0]}")
        for r in read_results(os.path.join(src, RESULTS)):
            merged[record_key(r)] = r
    os.makedirs(out, exist_ok=True)
    for name in (RESULTS, RESULTS + ".gz"):      # out may be one of the sources: read above, rewritten now
        if os.path.exists(os.path.join(out, name)):
            os.remove(os.path.join(out, name))
    with gzip.open(os.path.join(out, RESULTS + ".gz"), "wt", encoding="utf-8") as f:
        for r in merged.values():
            f.write(json.dumps(json_safe(r)) + "\n")
    with open(os.path.join(out, CONFIG), "w") as f:
        json.dump(configs[0], f, indent=1, sort_keys=True)
    return len(merged)
