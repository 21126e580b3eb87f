"""Hypothesis strategies for paged-cache decode tests (reference tier; reusable by the GPU tests).

``decode_cases()`` draws a synthetic case (any kind of ``vashista_ref.synthetic``, GQA shapes, partial
pages, several sequences of different lengths, score scales from soft to one-hot) together with decode
parameters (P, Kc, router, shared selection, hierarchy) that are valid for it.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from hypothesis import strategies as st

from vashista_ref.synthetic import KINDS, SyntheticCase, make_case


@dataclass
class DecodeDraw:
    case: SyntheticCase
    P: int
    Kc: int
    router: str
    share: bool
    hierarchical: bool
    sink_pages: int

    def kwargs(self) -> dict:
        return dict(router=self.router, share_selection_in_group=self.share, hierarchical=self.hierarchical,
                    sink_pages=self.sink_pages)


@st.composite
def decode_cases(draw, kinds=KINDS, max_context: int = 80) -> DecodeDraw:
    kind = draw(st.sampled_from(kinds))
    page_size = draw(st.sampled_from([1, 3, 4, 8, 16]))
    context = draw(st.integers(1 if kind == "single_token" else 3, max_context))
    batch = draw(st.integers(1, min(2, context)))
    fanout = draw(st.sampled_from([None, 2, 3]))
    case = make_case(kind, seed=draw(st.integers(0, 2 ** 16)), context=context, page_size=page_size,
                     n_kv_heads=draw(st.integers(1, 2)), group=draw(st.sampled_from([1, 2, 3])),
                     head_dim=draw(st.sampled_from([2, 5, 8])), value_dim=draw(st.sampled_from([None, 3])),
                     batch=batch, q_scale=draw(st.sampled_from([0.1, 1.0, 4.0, 30.0])),
                     shuffle=draw(st.booleans()), fanout=fanout)
    shortest = min(case.cache.length(s) for s in case.seq_ids)
    return DecodeDraw(case=case, P=draw(st.integers(1, 6)), Kc=draw(st.integers(1, shortest)),
                      router=draw(st.sampled_from(["bound", "mean"])), share=draw(st.booleans()),
                      hierarchical=fanout is not None and draw(st.booleans()),
                      sink_pages=draw(st.integers(0, 2)))


def true_leakage_and_error(res, case: SyntheticCase, scale: float) -> tuple[np.ndarray, np.ndarray]:
    """Dense-attention mass outside each query's candidates, and ‖out − dense‖, by brute force over the
    contiguous (unpaged) arrays."""
    B, Hq, D = case.q.shape
    G = Hq // case.cache.n_kv_heads
    dense = res.dense_out()
    leak = np.empty((B, Hq))
    for b in range(B):
        for h in range(Hq):
            K = case.keys[b][:, h // G]
            s = (K * case.q[b, h]).sum(-1) * scale
            a = np.exp(s - s.max())
            a /= a.sum()
            mask = np.ones(len(s), dtype=bool)
            mask[res.candidates[b][h]] = False
            # a mass is ≤ 1; the float sum of normalised weights can round above it (1 + 2e-16)
            leak[b, h] = min(1.0, a[mask].sum())
    return leak, np.linalg.norm(res.out - dense, axis=-1)
