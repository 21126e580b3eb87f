"""Hugging Face transformers integration: offline model loading and drop-in Vashista decode.

    >>> from vashista_gpu.hf import load_default_model, enable_vashista    # doctest: +SKIP
    >>> model, tok = load_default_model()                                  # doctest: +SKIP
    >>> handle = enable_vashista(model, P=8, Kc=64)                        # doctest: +SKIP
"""
from .enable import VashistaConfig, VashistaHandle, disable_vashista, enable_vashista
from .model import default_model_path, load_default_model, load_model, load_model_file

__all__ = ["VashistaConfig", "VashistaHandle", "default_model_path", "disable_vashista", "enable_vashista",
           "load_default_model", "load_model", "load_model_file"]
