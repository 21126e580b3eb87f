"""The mergeable partial state of softmax attention (docs/ARCHITECTURE.md, "Mergeable partial state").

Softmax attention over a token set T,  o = Σ_{j∈T} e^{s_j} v_j / Σ_{j∈T} e^{s_j}  (the maximiser of
⟨s, a⟩ + H(a) over the simplex, gathered), decomposes over any partition of T. A part is summarised by

    m = max_j s_j,   l = Σ_j e^{s_j − m},   o = Σ_j e^{s_j − m} v_j       (unnormalised),

and two parts merge by rescaling both to the larger max and adding. ``finalize`` returns o / l. Pages,
splits of a long context, or GPUs combine exactly this way, so dense and sparse decode are both built
from it.

A sparse step also *excludes* tokens. The state carries what the runtime certificate (SPEC 3) needs
about them: ``log_z_out``, the log of an upper bound on their total exp-mass Σ_{excluded} e^{s_j}
(absolute, not relative to m, so a hugely positive bound never overflows; ``z_out`` gives it relative
to m as in the contract), ``s_out`` the largest score or score bound among them (for the gap Δ̂) and
``vmax_out`` the largest value norm among them. Excluded mass merges by log-sum-exp, the maxima by max.

Fields may be scalars or arrays with a common leading shape (then ``o`` has a trailing Dv axis).

Example:
    >>> import numpy as np
    >>> from vashista_ref.state import from_scores, merge, finalize
    >>> s, v = np.array([0.5, 2.0, -1.0]), np.eye(3)
    >>> whole = finalize(from_scores(s, v))
    >>> parts = finalize(merge(from_scores(s[:1], v[:1]), from_scores(s[1:], v[1:])))
    >>> bool(np.allclose(whole, parts))
    True
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class PartialState:
    """Partial softmax state over a token subset plus bounds on the excluded tokens (see module doc)."""
    m: np.ndarray | float
    l: np.ndarray | float
    o: np.ndarray
    log_z_out: np.ndarray | float = -np.inf
    s_out: np.ndarray | float = -np.inf
    vmax_out: np.ndarray | float = 0.0

    @property
    def z_out(self):
        """Excluded exp-mass bound relative to m (may be inf when a bound far exceeds m)."""
        with np.errstate(over="ignore", invalid="ignore"):
            return np.exp(np.asarray(self.log_z_out) - np.asarray(self.m))


def empty(dv: int, shape: tuple[int, ...] = ()) -> PartialState:
    """The neutral element of ``merge``: no tokens, nothing excluded."""
    return PartialState(m=np.full(shape, -np.inf), l=np.zeros(shape), o=np.zeros(shape + (dv,)),
                        log_z_out=np.full(shape, -np.inf), s_out=np.full(shape, -np.inf),
                        vmax_out=np.zeros(shape))


def from_scores(s: np.ndarray, v: np.ndarray) -> PartialState:
    """State of the tokens with scores ``s`` (n,) and values ``v`` (n, Dv); n may be 0."""
    s = np.asarray(s, dtype=np.float64)
    v = np.asarray(v, dtype=np.float64)
    if s.size == 0:
        return empty(v.shape[-1])
    m = s.max()
    w = np.exp(s - m)
    return PartialState(m=m, l=w.sum(), o=w @ v)


def excluded(log_mass: np.ndarray, s_bound: np.ndarray, vmax: np.ndarray, dv: int) -> PartialState:
    """State of excluded blocks: log upper bounds on each block's exp-mass, score bounds, value norms."""
    log_mass = np.asarray(log_mass, dtype=np.float64).ravel()
    if log_mass.size == 0:
        return empty(dv)
    return PartialState(m=-np.inf, l=0.0, o=np.zeros(dv), log_z_out=np.logaddexp.reduce(log_mass),
                        s_out=float(np.max(s_bound)), vmax_out=float(np.max(vmax)))


def _scale(m_part, m_new):
    """exp(m_part − m_new), with an empty part (m = −inf) contributing 0."""
    m_part = np.asarray(m_part, dtype=np.float64)
    m_new = np.asarray(m_new, dtype=np.float64)
    with np.errstate(invalid="ignore"):
        out = np.exp(m_part - m_new)
    return np.where(np.isneginf(m_part), 0.0, out)


def merge(a: PartialState, b: PartialState) -> PartialState:
    """Combine two states over disjoint token sets: rescale to the larger max and add."""
    m = np.maximum(a.m, b.m)
    ca, cb = _scale(a.m, m), _scale(b.m, m)
    return PartialState(
        m=m,
        l=ca * a.l + cb * b.l,
        o=ca[..., None] * a.o + cb[..., None] * b.o,
        log_z_out=np.logaddexp(a.log_z_out, b.log_z_out),
        s_out=np.maximum(a.s_out, b.s_out),
        vmax_out=np.maximum(a.vmax_out, b.vmax_out),
    )


def finalize(state: PartialState) -> np.ndarray:
    """The attention output o / l of the included tokens."""
    l = np.asarray(state.l, dtype=np.float64)
    if np.any(l <= 0):
        raise ValueError("finalize: the state contains no tokens (l = 0)")
    return state.o / l[..., None] if l.ndim else state.o / l
