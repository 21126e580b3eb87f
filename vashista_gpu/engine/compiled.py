"""Compiled decoder layers for one-token steps: gpt-fast's ``torch.compile`` on transformers' modules.

Outside attention, a decode step of a Llama-family layer is a chain of small elementwise kernels: two
RMSNorms of about seven ops each (cast, square, mean, rsqrt, two products, cast back), SiLU·up in the
MLP and two residual adds, around three GEMMs. On a GPU each costs a launch even inside a CUDA graph;
the sixth session's profile of the 1B shape put ~1 ms of the dense 3.90 ms per token in such kernels
(docs/ENGINE.md). ``torch.compile`` (inductor) fuses each chain into one kernel.

What is compiled, and what is not:

* each decoder layer's ``forward`` (``input_layernorm``; then the residual add, ``post_attention_layernorm``,
  the MLP and the second residual add) and the model's final norm, for **one-token calls only**: a
  prefill chunk (q_len > 1) runs the layer eagerly, so the chunks' varying lengths compile nothing;
* the attention module (projections, rotary, the cache's ``update``, the engine's attention with its
  host-side plans) stays eager: its ``forward`` is marked ``torch.compiler.disable``, so every layer
  compiles into the same two graphs, before and after attention. transformers passes the attention
  module its ``layer_idx`` as a Python int; compiling through it would specialise one graph per layer
  and pass dynamo's recompile limit from the ninth layer on.

Compilation happens at the first one-token call of the first batch size, and once more at the second
(automatic dynamic shapes: one graph with a dynamic batch serves every later size). The engine's warm-up steps make those
calls before a CUDA graph is captured, so the capture records the compiled kernels like any other.
The numbers are those of the same operations reordered by inductor: equal up to float rounding, not
bit for bit (tests/test_engine.py compares greedy tokens).
"""
from __future__ import annotations

import os
import shutil
from typing import Callable

import torch

from vashista_core.errors import VashistaInputError

__all__ = ["compile_decode_layers", "compile_unavailable"]


def compile_unavailable(device) -> str | None:
    """Why ``torch.compile`` cannot run on ``device`` here, or None. Inductor builds CPU kernels with a
    C++ compiler (``$CXX`` or one on PATH); without one the first compiled step would fail deep inside
    inductor, so the engine refuses ``compile=True`` up front instead."""
    if torch.device(device).type != "cpu":
        return None
    names = [os.environ["CXX"]] if os.environ.get("CXX") else ["c++", "g++", "clang++"]
    if not any(shutil.which(n) for n in names):
        return f"torch.compile on the CPU needs a C++ compiler; none of {', '.join(names)} was found on PATH"
    return None


class _OneTokenCompiled:
    """``forward`` replaced by: the compiled forward for (B, 1, ·) inputs, the eager one otherwise."""

    def __init__(self, eager):
        self.eager = eager
        self.compiled = torch.compile(eager)

    def __call__(self, hidden_states, *args, **kwargs):
        fn = self.compiled if hidden_states.shape[1] == 1 else self.eager
        return fn(hidden_states, *args, **kwargs)


def _decoder_layers(model) -> list:
    return [m for m in model.modules() if hasattr(m, "self_attn") and hasattr(m, "mlp")]


def compile_decode_layers(model) -> Callable[[], None]:
    """Compile ``model``'s decoder layers and final norm for one-token calls (module doc); returns the
    function that restores the eager modules. A model without decoder layers of the Llama form (a module
    with ``self_attn`` and ``mlp``) is refused, naming ``compile``."""
    layers = _decoder_layers(model)
    if not layers:
        raise VashistaInputError("compile", "the model has no decoder layer of the Llama form (a module with "
                                            "self_attn and mlp) to compile")
    norm = getattr(getattr(model, "model", None), "norm", None)
    patched = []                                  # (module, its own "forward" entry or None)

    def patch(module, new):
        patched.append((module, module.__dict__.get("forward")))
        module.forward = new

    for layer in layers:
        patch(layer.self_attn, torch.compiler.disable(layer.self_attn.forward))
        patch(layer, _OneTokenCompiled(layer.forward))
    if norm is not None:
        patch(norm, _OneTokenCompiled(norm.forward))

    def restore() -> None:
        for module, own in reversed(patched):
            if own is None:
                del module.forward
            else:
                module.forward = own
        patched.clear()

    return restore
