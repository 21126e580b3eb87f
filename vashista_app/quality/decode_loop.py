"""Dense prefill once, then token-by-token decode under several attention settings.

The quality suite compares dense and Vashista decode *from the same prefill*: the prefix is run once
with dense attention, its HF cache is copied for every setting, and each setting then feeds tokens one
at a time (``q_len = 1``), so every decoded token's attention goes through the setting under test —
the paged mirror of each layer is built from the copied cache on the first step.

Example::

    >>> from vashista_app.quality.decode_loop import prefill, decode_tokens   # doctest: +SKIP
    >>> cache, logits = prefill(model, ids[:, :1000])                          # doctest: +SKIP
    >>> nll, _ = decode_tokens(model, cache, ids[0, 1000:1064], score=True)    # doctest: +SKIP
"""
from __future__ import annotations

import copy
import inspect

import torch

__all__ = ["cache_kwarg", "decode_tokens", "prefill"]


def cache_kwarg(model) -> str:
    """The forward argument that takes the KV cache: ``cache`` in transformers 5, ``past_key_values``
    in 4.x. Passing the wrong one is *silently* swallowed by ``**kwargs`` (every step would then see
    only itself), so it is looked up, never assumed."""
    params = inspect.signature(type(model).forward).parameters
    for name in ("cache", "past_key_values"):
        if name in params:
            return name
    raise RuntimeError(f"{type(model).__name__}.forward takes neither 'cache' nor 'past_key_values'")


def _device(model) -> torch.device:
    return next(model.parameters()).device


def _step(model, c, ids: torch.Tensor):
    """One forward of ids (1, n) with cache ``c``; checks that the cache really grew by n. Only the last
    position's logits are computed where the model can say so: a 32k prefill's full logits of a
    151,936-token vocabulary would be 20 GB of float32 that nobody reads."""
    before = c.get_seq_length()
    kw = {cache_kwarg(model): c}
    if "logits_to_keep" in inspect.signature(type(model).forward).parameters:
        kw["logits_to_keep"] = 1
    out = model(ids, use_cache=True, **kw)
    if c.get_seq_length() != before + ids.shape[1]:
        raise RuntimeError(f"the KV cache did not grow ({before} -> {c.get_seq_length()} after "
                           f"{ids.shape[1]} tokens): this transformers version ignores the cache argument")
    return out


PREFILL_CHUNK = 2048


@torch.no_grad()
def prefill(model, ids: torch.Tensor, chunk: int = PREFILL_CHUNK):
    """Dense forward of ids (1, n) (moved to the model's device) in chunks of ``chunk`` positions, each
    attending to the cache so far: one 32k forward materialises SDPA's (heads, n, n) float32 scores
    (56 GiB for Qwen2.5-0.5B on an H100), a 2048-row chunk 1/16 of that. Returns (HF cache, last
    logits (vocab,))."""
    from transformers import DynamicCache

    handle = getattr(model, "_vashista_handle", None)
    if handle is not None:
        raise RuntimeError("prefill must run with Vashista disabled")
    cache = DynamicCache()
    ids = ids.to(_device(model))
    for a in range(0, ids.shape[1], chunk):
        out = _step(model, cache, ids[:, a:a + chunk])
    return cache, out.logits[0, -1].float()


@torch.no_grad()
def decode_tokens(model, cache, tokens: torch.Tensor, first_logits: torch.Tensor | None = None, *,
                  generate: int = 0, copy_cache: bool = True, eos: int | None = None, stop=None):
    """Feed ``tokens`` one by one after the prefilled ``cache``.

    Returns (nll, generated): ``nll`` (len(tokens) - 1,) float64 negative log-likelihood of
    tokens[1:] given everything before (each predicted by a decode step), and ``generated`` the
    ``generate`` greedy tokens that follow the last fed token — fewer when the token ``eos`` comes
    (not included) or ``stop(generated)`` is true (the long-context suite stops once every answer is
    in the text: its metric cannot change after that).
    """
    c = copy.deepcopy(cache) if copy_cache else cache
    dev = _device(model)
    nll = []
    logits = None
    toks = tokens.tolist()              # host ints: a CPU index tensor never meets a CUDA tensor
    for i, t in enumerate(toks):
        out = _step(model, c, torch.tensor([[t]], device=dev))
        logits = out.logits[0, -1].double()
        if i + 1 < len(tokens):
            nll.append(float(-torch.log_softmax(logits, -1)[toks[i + 1]]))
    gen = []
    for _ in range(generate):
        nxt = int(torch.argmax(logits))
        if nxt == eos:
            break
        gen.append(nxt)
        if len(gen) == generate or (stop is not None and stop(gen)):
            break                       # the last token's step would only feed what nobody reads
        out = _step(model, c, torch.tensor([[nxt]], device=dev))
        logits = out.logits[0, -1].double()
    return torch.tensor(nll, dtype=torch.float64), gen
