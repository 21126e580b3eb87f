"""Hypothesis strategies for the projection model, built on vashista_ref.instances (seeded
generators with known answers), so a failing example is a family name plus a seed and sizes."""
import numpy as np
from hypothesis import strategies as st

from vashista_ref import instances

seeds = st.integers(min_value=0, max_value=2**32 - 1)


@st.composite
def known_face_instances(draw, max_M=30, max_D=6, gaps=(1e-2, 0.1, 0.5, 2.0)):
    """q outside the hull with the face I and the gap Δ known by construction."""
    D = draw(st.integers(1, max_D))
    M = draw(st.integers(2, max_M))
    face_size = draw(st.integers(1, min(D, M - 1)))
    gap = draw(st.sampled_from(gaps))
    distance = draw(st.sampled_from([0.3, 1.0, 3.0]))
    return instances.known_face(np.random.default_rng(draw(seeds)), M=M, D=D,
                                face_size=face_size, gap=gap, distance=distance)


@st.composite
def family_instances(draw, families=("generic", "inside_hull", "on_vertex", "collinear", "duplicates")):
    family = draw(st.sampled_from(families))
    seed = draw(seeds)
    if family == "duplicates":
        D = draw(st.integers(2, 5))
        return instances.draw(family, seed, M=draw(st.integers(D + 1, 20)), D=D,
                              face_size=draw(st.integers(1, D)), copies=draw(st.integers(1, 3)))
    D = draw(st.integers(1 if family == "generic" else 2, 6))
    return instances.draw(family, seed, M=draw(st.integers(2, 25)), D=D)


scales = st.sampled_from([1e-3, 1e-1, 1.0, 10.0, 1e3])
