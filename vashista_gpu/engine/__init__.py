"""The engine: Vashista owns the model's KV cache and decodes the whole model step by step, captured
in a CUDA graph on GPU (issue 14). ``generate`` for one call, ``Engine`` for sequences admitted and
finished during generation, ``VashistaCache`` the transformers cache behind both."""
from .cache import VashistaCache
from .generate import Engine, GenerateResult, generate

__all__ = ["VashistaCache", "Engine", "GenerateResult", "generate"]
