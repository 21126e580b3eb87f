"""When the engine decodes densely from its own paged cache: the measured crossover of auto mode.

Dense decoding itself is one kernel over the cache's pools (``kernels/paged_dense.py``, no second
copy of K/V). Auto mode decodes densely below the context where a certified step becomes faster than
the best dense step of the same shape and batch under the same CUDA-graph treatment, so enabling
Vashista is never slower than dense. That context is measured by ``benchmarks/e2e_decode.py`` and
stored in ``crossover.json`` next to this module: the card, the date, the exact-read budget Kc and,
per model shape (layers, hidden size, query heads, KV heads, head dim) and batch, the crossover
context of each certified variant — ``null`` when the variant never beat dense in the measured range
(auto then stays dense up to the largest measured context, and beyond it only if the speed-up there
was ≥ 1).

:func:`crossover_context` looks up a model config and a batch: the entry of the same shape with the
largest measured batch ≤ B (larger batches cross earlier: the dense step grows with B, the certified
step's fixed costs do not), or None when the shape was not measured (the engine then keeps its
placeholder, ``AUTO_CROSSOVER``: dense, and says so). Entries may come from another benchmark than
e2e_decode.py (the real 32k model's from ``benchmarks/realmodel_decode.py``); each then names it.

    >>> from transformers import LlamaConfig
    >>> cfg = LlamaConfig(num_hidden_layers=16, hidden_size=2048, num_attention_heads=32,
    ...                   num_key_value_heads=8, head_dim=64)
    >>> crossover_context(cfg, 1, table={"entries": []}) is None
    True
"""
from __future__ import annotations

import json
import math
import os

from vashista_core.errors import VashistaInputError

__all__ = ['TABLE', 'crossover_context', 'load_table', 'shape_key']

TABLE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "crossover.json")


def shape_key(config) -> dict:
    """The shape fields a crossover entry is keyed by (Llama-family config names)."""
    Hq = config.num_attention_heads
    return dict(layers=config.num_hidden_layers, hidden=config.hidden_size, q_heads=Hq,
                kv_heads=getattr(config, "num_key_value_heads", None) or Hq,
                head_dim=getattr(config, "head_dim", None) or config.hidden_size // Hq)


def load_table(path: str = TABLE) -> dict:
    with open(path) as f:
        return json.load(f)


def crossover_context(config, batch: int, *, variant: str = "ours_cert_int4_g16", table: dict | None = None):
    """Smallest context at which ``variant`` beat the best dense graph for this shape (module doc);
    ``math.inf`` when it never did in the measured range, None when the shape was not measured."""
    if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
        raise VashistaInputError("batch", f"must be a positive integer, got {batch!r}")
    table = load_table() if table is None else table
    key = shape_key(config)
    rows = [e for e in table.get("entries", []) if e["shape"] == key and e["variant"] == variant
            and e["batch"] <= batch]
    if not rows:
        return None
    best = max(rows, key=lambda e: e["batch"])
    c = best["crossover_context"]
    return math.inf if c is None else int(c)
