"""``kernels/sketch_check.py`` (the fused step's per-call "is this sketch built from these keys?" test,
one launch on CUDA) against ``sketch.sketch_mismatch``'s torch form, its reference: the same flag on
genuine sketches, tampered sampled keys, NaN keys, keys changed between samples (not seen by either:
the test samples), non-contiguous keys, odd head dimensions and lengths, every code width."""
import pytest
import torch

from vashista_core.errors import VashistaInputError
from vashista_gpu.kernels.sketch_check import sketch_mismatch_flag
from vashista_gpu.sketch import quantize_keys, sketch_mismatch

# the kernel compiled on a GPU, interpreted on the CPU (conftest sets TRITON_INTERPRET there): its tensors
# must live where it runs
DEV = "cuda" if torch.cuda.is_available() else "cpu"


def _case(H, T, D, bits, group, seed, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    K = (torch.randn(H, T, D, generator=g) * 3).to(device=DEV, dtype=dtype)
    sk = quantize_keys(K, bits=bits, group=group)
    return K, sk


def _both(K, sk, sample=256):
    ref = bool(sketch_mismatch(K, sk.codes, sk.offset, sk.step, bits=sk.bits, group=sk.group, sample=sample))
    got = bool(sketch_mismatch_flag(K, sk.codes, sk.offset, sk.step, bits=sk.bits, group=sk.group, sample=sample))
    return ref, got


@pytest.mark.parametrize("H,T,D,bits,group", [(3, 77, 64, 4, 16), (2, 300, 48, 8, 64), (1, 129, 40, 4, 32),
                                              (2, 33, 32, 2, 16), (4, 1000, 128, 8, 64)])
def test_genuine_sketch_passes_and_tampering_is_caught(H, T, D, bits, group):
    K, sk = _case(H, T, D, bits, group, seed=T + D)
    assert _both(K, sk) == (False, False)
    n = min(T, 256)
    sampled = (torch.arange(n) * T) // n
    j = int(sampled[len(sampled) // 2])
    bad = K.clone()
    bad[H - 1, j, D // 3] += 50.0                          # far outside half a step
    assert _both(bad, sk) == (True, True)
    nan = K.clone()
    nan[0, int(sampled[0]), D - 1] = float("nan")
    assert _both(nan, sk) == (True, True)


def test_a_change_between_samples_is_not_seen_by_either():
    # the test samples: a key changed where no token is sampled passes both forms alike
    H, T, D = 2, 1000, 64
    K, sk = _case(H, T, D, 4, 16, seed=5)
    sampled = set(((torch.arange(256) * T) // 256).tolist())
    j = next(t for t in range(T) if t not in sampled)
    bad = K.clone()
    bad[1, j] += 50.0
    assert _both(bad, sk) == (False, False)


def test_strided_keys_and_half_precision():
    H, T, D = 3, 200, 64
    K, sk = _case(H, T, D, 8, 64, seed=9, dtype=torch.bfloat16)
    assert _both(K, sk) == (False, False)
    # the same keys through a non-contiguous view (T-major storage): read through the strides
    Kt = K.transpose(0, 1).contiguous().transpose(0, 1)
    assert not Kt.is_contiguous()
    assert _both(Kt, sk) == (False, False)
    bad = Kt.clone().transpose(0, 1).contiguous().transpose(0, 1)
    bad[2, 0, 5] = bad[2, 0, 5] + 40
    assert _both(bad, sk) == (True, True)


def test_borderline_offsets_agree():
    # keys moved to the edge of their code's interval: both forms decide each element the same way
    H, T, D = 2, 64, 32
    K, sk = _case(H, T, D, 4, 16, seed=3)
    g = torch.arange(T, device=DEV) // 16
    st = sk.step.double()[:, g]
    base = (sk.offset.double()[:, g] + st * sk.unpacked_codes().double())
    seen = set()
    for f in (0.49, 0.5, 0.5 + 2.0 ** -21, 0.51, -0.51):
        ref, got = _both((base + f * st).float(), sk, sample=T)
        assert ref == got, f
        seen.add(ref)
    assert seen == {False, True}           # both sides of the boundary were exercised


def test_a_sketch_on_another_device_names_the_argument():
    # refused by sketch_mismatch before either form runs (the kernel would fail inside Triton's launcher);
    # on a CPU-only machine the other device is "meta"
    K, sk = _case(2, 64, 32, 4, 16, seed=1)
    other = "cpu" if K.is_cuda else "meta"
    with pytest.raises(VashistaInputError, match="codes"):
        sketch_mismatch(K, sk.codes.to(other), sk.offset, sk.step, bits=4, group=16)
    with pytest.raises(VashistaInputError, match="step"):
        sketch_mismatch(K, sk.codes, sk.offset, sk.step.to(other), bits=4, group=16)
