"""benchmarks/scan_mma_prototype.py (a tensor-core int8 scan for a step shared by a span of pages; timed
only on a card) computes what it claims, under the interpreter: its int32 dots equal Σ ṽ·c exactly (the
two int8 digits and the −128 code shift undone), ŝ is those integers in float32, the block maxima are
ŝ's, the slack covers the rounding of q ⊙ δ, and the split of a span over programs changes nothing."""
from __future__ import annotations

import pytest
from script_module import load_script

torch = pytest.importorskip("torch")
pytest.importorskip("triton")


@pytest.fixture(scope="module")
def proto():
    return load_script("benchmarks/scan_mma_prototype.py")


def _case(B, Hkv, G, D, P, S, span, seed, scale=3.0):
    g = torch.Generator().manual_seed(seed)
    N = B * P + 3                                                     # spare physical pages, shuffled table
    codes = torch.randint(0, 256, (N, Hkv, S, D), dtype=torch.uint8, generator=g)
    offset = (-torch.rand((N, Hkv, D), generator=g) * scale).half()
    table = torch.randperm(N, generator=g)[:B * P].view(B, P).to(torch.int32).contiguous()
    step = torch.zeros((N, Hkv, D), dtype=torch.float16)
    for b in range(B):
        for s0 in range(0, P, span):                                  # one step per span of the row's pages
            st = (torch.rand((Hkv, D), generator=g) * scale / 255 + 1e-3).half()
            step[table[b, s0:s0 + span].long()] = st
    q = torch.randn((B * Hkv * G, D), generator=g) * torch.linspace(0.1, 5, D)   # uneven channels
    return q, codes, offset, step, table


@pytest.mark.parametrize("B,Hkv,G,D,span,ppp", [(1, 2, 4, 64, 4, 4), (2, 1, 4, 64, 2, 1), (2, 2, 1, 128, 2, 2),
                                                 (1, 1, 7, 64, 4, 2)])
def test_the_tensor_core_dots_are_the_exact_integers(proto, B, Hkv, G, D, span, ppp):
    S = 64
    P = 2 * span
    q, codes, offset, step, table = _case(B, Hkv, G, D, P, S, span, seed=B * 100 + G * 10 + D)
    T = P * S
    s, smax, slack, ints = proto.scan_mma(q, codes, offset, step, table, T, span, pages_per_program=ppp, debug=True)
    rs, rints, rslack, true = proto.reference(q, codes, offset, step, table, T, span)
    assert torch.equal(ints.long(), rints)
    assert torch.allclose(s.double(), rs, rtol=0, atol=1e-6 * float(rs.abs().max()))
    assert torch.equal(smax, s.view(s.shape[0], -1, 16).amax(-1))
    assert torch.allclose(slack.double(), rslack, rtol=1e-5, atol=0)
    assert bool(((true - rs).abs() <= rslack.repeat_interleave(S, 1)).all())     # the slack covers ṽ's rounding
    other = proto.scan_mma(q, codes, offset, step, table, T, span, pages_per_program=span)[0]
    assert torch.equal(other, s)


def test_digits_cover_the_whole_operand_range(proto):
    """|ṽ| reaches its bound 16256 on the largest channel of every head: the digit split must hold there."""
    B, Hkv, G, D, span, S = 1, 1, 4, 64, 2, 64
    q, codes, offset, step, table = _case(B, Hkv, G, D, 2 * span, S, span, seed=7)
    codes[:] = 255                                                    # the largest codes everywhere
    s, _, _, ints = proto.scan_mma(q, codes, offset, step, table, 2 * span * S, span, debug=True)
    _, rints, _, _ = proto.reference(q, codes, offset, step, table, 2 * span * S, span)
    assert torch.equal(ints.long(), rints)
    assert int(rints.abs().max()) > 16000 * 255
