"""Hugging Face transformers integration: offline model loading and drop-in Vashista decode.

    >>> from vashista_gpu.hf import load_default_model, enable_vashista    # doctest: +SKIP
    >>> model, tok = load_default_model()                                  # doctest: +SKIP
    >>> handle = enable_vashista(model, P=8, Kc=64)                        # doctest: +SKIP
"""
from .enable import VashistaConfig, VashistaHandle, disable_vashista, enable_vashista  # noqa: F401
from .model import default_model_path, load_default_model, load_model, load_model_file  # noqa: F401
