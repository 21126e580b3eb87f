"""One call to run a loaded Hugging Face causal LM with Vashista sparse decode, and one to undo it.

``enable_vashista(model, P=..., Kc=..., ...)`` registers the ``"vashista"`` attention (``attention.py``),
attaches a runtime (config, paged mirror, shared statistics) to every attention module outside
``dense_layers``, and switches the model to it; ``model.generate`` and plain forward passes then decode
each new token with ``vashista_gpu.decode.sparse_decode`` (per query head: softmax on the top-Kc tokens of
the top-P routed pages, SPEC 2, with the SPEC 3 certificate and the policy's fallback), while prefill
stays dense (``prefill="sparse"`` decodes prefill queries too). ``disable_vashista(model)`` restores
the previous attention implementation and drops the mirrors.

Supported: decoder-only models whose attention goes through transformers' attention-function registry
with plain causal masks and rotary positions — the Llama family (llama, mistral without a sliding
window, qwen2, qwen3). Others are refused with a :class:`VashistaInputError` naming ``model``: a
sliding window, soft-capping or an attention bias would be silently ignored by sparse decode.

Example::

    >>> from vashista_gpu.hf import load_default_model, enable_vashista, disable_vashista   # doctest: +SKIP
    >>> model, tok = load_default_model()                                                   # doctest: +SKIP
    >>> h = enable_vashista(model, P=8, Kc=64, page_size=16, collect_stats=True)           # doctest: +SKIP
    >>> ids = tok("The capital of France is", return_tensors="pt").input_ids               # doctest: +SKIP
    >>> text = tok.decode(model.generate(ids, max_new_tokens=20, do_sample=False)[0])     # doctest: +SKIP
    >>> h.stats.summary()["fallback_rate"]                                                  # doctest: +SKIP
    0.0
    >>> disable_vashista(model)                                                             # doctest: +SKIP
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from vashista_core.errors import VashistaInputError
from vashista_core.options import ROUTERS, SOLVERS, check_sketch_options
from vashista_core.policies import Capped, DenseFallback, ReportOnly
from vashista_core.validate import positive_int

from .attention import ATTN_NAME, register
from .mirror import LayerMirror
from .stats import DecodeStats

__all__ = ["LayerRuntime", "PREFILL_MODES", "SUPPORTED_MODEL_TYPES", "VashistaConfig", "VashistaHandle",
           "attention_modules", "check_supported", "disable_vashista", "enable_vashista"]

SUPPORTED_MODEL_TYPES = ("llama", "mistral", "qwen2", "qwen3")
PREFILL_MODES = ("dense", "sparse")


@dataclass
class VashistaConfig:
    """Options of :func:`enable_vashista` (validated there)."""
    P: int
    Kc: int
    page_size: int = 16
    solver: str = "softmax"
    router: str = "bound"
    bits: int | None = None       # sketch bits for router="sketch" (certified mode, SPEC 3b)
    policy: object = None
    dense_layers: tuple = (0, 1)
    sink_pages: int = 1
    prefill: str = "dense"
    fanout: int | None = None
    backend: str = "auto"
    collect_stats: bool = False
    shadow_dense: bool = False


@dataclass
class LayerRuntime:
    cfg: VashistaConfig
    layer_idx: int
    mirror: LayerMirror
    stats: DecodeStats | None


@dataclass
class VashistaHandle:
    """What :func:`enable_vashista` returns: the config, the shared stats (or None) and the runtimes."""
    model: object
    config: VashistaConfig
    stats: DecodeStats | None
    layers: dict = field(default_factory=dict)
    previous_impl: str = "sdpa"

    def disable(self) -> None:
        disable_vashista(self.model)

    def reset(self) -> None:
        """Forget the mirrors and the statistics (the next decode step rebuilds from HF's cache)."""
        for rt in self.layers.values():
            rt.mirror.cache = None
            rt.mirror.valid = None
            rt.mirror.positions = []
        if self.stats is not None:
            self.stats.clear()


def attention_modules(model) -> dict[int, torch.nn.Module]:
    """The model's self-attention modules by layer index (those transformers gives ``layer_idx``)."""
    mods = {}
    for m in model.modules():
        if type(m).__name__.endswith("Attention") and hasattr(m, "layer_idx") and hasattr(m, "num_key_value_groups"):
            mods[int(m.layer_idx)] = m
    return mods


def check_supported(model) -> None:
    cfg = getattr(model, "config", None)
    mt = getattr(cfg, "model_type", None)
    if cfg is None or not (hasattr(model, "set_attn_implementation") or hasattr(cfg, "_attn_implementation")):
        raise VashistaInputError("model", f"{type(model).__name__} is not a transformers model")
    if mt not in SUPPORTED_MODEL_TYPES:
        raise VashistaInputError("model", f"model_type {mt!r} is not supported (Vashista attention is "
                                          f"implemented for {', '.join(SUPPORTED_MODEL_TYPES)})")
    if getattr(cfg, "is_encoder_decoder", False):
        raise VashistaInputError("model", "encoder-decoder models are not supported")
    if getattr(cfg, "sliding_window", None) is not None and getattr(cfg, "use_sliding_window", True):
        raise VashistaInputError("model", f"sliding-window attention (window {cfg.sliding_window}) is not supported")
    for name in ("attn_logit_softcapping", "attention_bias_type"):
        if getattr(cfg, name, None):
            raise VashistaInputError("model", f"{name}={getattr(cfg, name)!r} is not supported")
    n = getattr(cfg, "num_hidden_layers", None)
    mods = attention_modules(model)
    if not mods or len(mods) != n:
        raise VashistaInputError("model", f"found {len(mods)} attention modules with a layer index, "
                                          f"expected num_hidden_layers={n}")


def _check_config(c: VashistaConfig, n_layers: int) -> VashistaConfig:
    positive_int("P", c.P)
    positive_int("Kc", c.Kc)
    positive_int("page_size", c.page_size)
    if isinstance(c.sink_pages, bool) or not isinstance(c.sink_pages, int) or c.sink_pages < 0:
        raise VashistaInputError("sink_pages", f"must be an integer >= 0, got {c.sink_pages!r}")
    if c.P < c.sink_pages + 1:
        raise VashistaInputError("P", f"must be >= sink_pages + 1 = {c.sink_pages + 1} (sinks and the newest "
                                      f"page are always routed), got {c.P}")
    if c.solver not in SOLVERS:
        raise VashistaInputError("solver", f"must be one of {SOLVERS}, got {c.solver!r}")
    if c.router not in ROUTERS + ("sketch",):
        raise VashistaInputError("router", f"must be one of {ROUTERS + ('sketch',)}, got {c.router!r}")
    c.bits = check_sketch_options(c.router, c.bits, c.solver, False, c.fanout is not None)
    if c.policy is not None and not isinstance(c.policy, (ReportOnly, DenseFallback, Capped)):
        raise VashistaInputError("policy", f"expected ReportOnly, DenseFallback or Capped, got {c.policy!r}")
    if c.prefill not in PREFILL_MODES:
        raise VashistaInputError("prefill", f"must be one of {PREFILL_MODES}, got {c.prefill!r}")
    if c.backend not in ("auto", "torch", "triton"):
        raise VashistaInputError("backend", f"must be 'auto', 'torch' or 'triton', got {c.backend!r}")
    if c.fanout is not None and positive_int("fanout", c.fanout) < 2:
        raise VashistaInputError("fanout", f"must be >= 2 or None, got {c.fanout}")
    try:
        layers = tuple(sorted(set(int(i) for i in c.dense_layers)))
    except (TypeError, ValueError):
        raise VashistaInputError("dense_layers", f"expected layer indices, got {c.dense_layers!r}") from None
    if any(isinstance(i, bool) or not isinstance(i, int) for i in c.dense_layers) or \
            any(not 0 <= i < n_layers for i in layers):
        raise VashistaInputError("dense_layers", f"expected integers in [0, {n_layers}), got {c.dense_layers!r}")
    c.dense_layers = layers
    if c.shadow_dense and not c.collect_stats:
        raise VashistaInputError("shadow_dense", "needs collect_stats=True (the shadow feeds the statistics)")
    return c


def enable_vashista(model, P: int, Kc: int, *, page_size: int = 16, solver: str = "softmax",
                    router: str = "bound", policy=None, dense_layers=(0, 1), sink_pages: int = 1,
                    prefill: str = "dense", fanout: int | None = None, backend: str = "auto",
                    collect_stats: bool = False, shadow_dense: bool = False,
                    bits: int | None = None) -> VashistaHandle:
    """Switch ``model`` to Vashista decode (see module docstring); returns a :class:`VashistaHandle`.

    ``P`` pages routed per query head besides the sink and newest pages are counted inside P (as in
    ``sparse_decode``); ``Kc`` candidate tokens; ``policy`` a ``vashista_core.policies`` object (default
    report-only); ``router="sketch"`` with ``bits`` 4 or 8 is certified mode (every token bounded
    through its quantized key sketch; P is unused there); ``dense_layers`` keep full attention; ``fanout`` enables the hierarchical summaries;
    ``collect_stats`` records per-layer/per-head certificates; ``shadow_dense`` adds the float64 dense
    truth (true error, true leakage, Δ_lin, effective support) at the cost of a dense pass per step.
    """
    check_supported(model)
    if getattr(model, "_vashista_handle", None) is not None:
        disable_vashista(model)
    mods = attention_modules(model)
    cfg = _check_config(VashistaConfig(P=P, Kc=Kc, page_size=page_size, solver=solver, router=router,
                                       bits=bits, policy=policy, dense_layers=dense_layers, sink_pages=sink_pages,
                                       prefill=prefill, fanout=fanout, backend=backend,
                                       collect_stats=collect_stats, shadow_dense=shadow_dense), len(mods))
    mc = model.config
    D = getattr(mc, "head_dim", None) or mc.hidden_size // mc.num_attention_heads
    Hkv = getattr(mc, "num_key_value_heads", None) or mc.num_attention_heads
    p = next(model.parameters())
    stats = DecodeStats() if collect_stats else None
    handle = VashistaHandle(model=model, config=cfg, stats=stats,
                            previous_impl=getattr(mc, "_attn_implementation", None) or "sdpa")
    register()
    for i, m in mods.items():
        if i in cfg.dense_layers:
            continue
        mirror = LayerMirror(page_size, Hkv, D, dtype=p.dtype if p.dtype != torch.float64 else torch.float32,
                             device=p.device, backend=backend, fanout=fanout)
        rt = LayerRuntime(cfg=cfg, layer_idx=i, mirror=mirror, stats=stats)
        m._vashista = rt
        handle.layers[i] = rt
    _set_attn(model, ATTN_NAME)
    model._vashista_handle = handle
    return handle


def _set_attn(model, name: str) -> None:
    """Switch the attention implementation: ``set_attn_implementation`` (transformers >= 4.56 and 5.x);
    older 4.x versions dispatch on ``config._attn_implementation`` at every forward."""
    if hasattr(model, "set_attn_implementation"):
        model.set_attn_implementation(name)
    else:
        model.config._attn_implementation = name


def disable_vashista(model) -> None:
    """Undo :func:`enable_vashista`: previous attention implementation back, runtimes removed."""
    handle = getattr(model, "_vashista_handle", None)
    if handle is None:
        raise VashistaInputError("model", "Vashista is not enabled on this model")
    for m in attention_modules(model).values():
        if hasattr(m, "_vashista"):
            del m._vashista
    _set_attn(model, handle.previous_impl)
    model._vashista_handle = None
