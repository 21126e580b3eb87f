"""The fused decode-step append (``kernels/append_step.py``) against the torch device append it
replaces: K/V slots, lengths, page summaries and the page sketch (codes, offset, step) must be
bit-identical (the value norm too: same float32 code on the same tile as the summary kernel, under
the interpreter both are NumPy). Runs under TRITON_INTERPRET=1 on CPU (tests/conftest.py)."""
from __future__ import annotations

import math
import os

import pytest
import torch

from vashista_gpu.paged_cache import TorchPagedKVCache
from vashista_gpu.sketch import attach_sketch

POISON_CODE, POISON_META = 0xAB, float("nan")
# compiled kernels on a GPU machine; the interpreter (tests/conftest.py) on CPU
DEV = "cuda" if torch.cuda.is_available() else "cpu"
INTERPRETED = os.environ.get("TRITON_INTERPRET", "0") == "1"


def _cache(backend, *, H, D, Dv, S, dtype, bits, meta, keys, poison, vnorm=True):
    c = TorchPagedKVCache(S, H, D, Dv, num_pages=12, max_seqs=3, max_pages_per_seq=5, dtype=dtype,
                          backend=backend, key_summaries=keys, value_norms=vnorm, device=DEV)
    if bits is not None:
        attach_sketch(c, bits, meta_dtype=meta)
    if poison:        # every output the kernel owns starts as garbage: what it does not write shows
        if c.vnorm is not None:
            c.vnorm.fill_(-1.0)
        for t in (c.kmin, c.kmax, c.kmean):
            if t is not None:
                t.fill_(float("nan"))
        for st in c.sketches.values():
            st.codes.fill_(POISON_CODE)
            st.offset.fill_(POISON_META)
            st.step.fill_(POISON_META)
    return c


def _run(c, prompts, steps, k, v):
    """Prefill (host append) the ragged prompts, then ``steps`` device appends of every row."""
    k, v = k.to(DEV), v.to(DEV)
    seqs = []
    for b, n in enumerate(prompts):
        s = c.add_sequence()
        c.reserve(s, n + steps)
        if n:
            c.append(s, k[b, :n], v[b, :n])
        seqs.append(s)
    idx = torch.tensor(seqs, dtype=torch.int32, device=DEV)
    for t in range(steps):
        kt = torch.stack([k[b, prompts[b] + t] for b in range(len(seqs))])
        vt = torch.stack([v[b, prompts[b] + t] for b in range(len(seqs))])
        c.append_step_device(idx, kt, vt)
    c.sync_lengths()
    return seqs


def _assert_summary_kernel_agrees(c, seqs):
    from vashista_gpu.kernels.page_summary import page_summary

    pages, counts = [], []
    for s in seqs:
        n = c.length(s)
        for i, ph in enumerate(c.page_table(s)[: -(-n // c.page_size)]):
            pages.append(ph)
            counts.append(min(c.page_size, n - i * c.page_size))
    p = torch.tensor(pages, device=DEV)
    got = [t[p].clone() for t in (c.vnorm, c.kmean) if t is not None]
    page_summary(c, p.to(torch.int32), torch.tensor(counts, dtype=torch.int32, device=DEV))
    for name, g, t in zip(("vnorm", "kmean"), got, (c.vnorm, c.kmean)):
        assert torch.equal(g, t[p]), name


def _held_pages(c, seqs):
    return torch.tensor(sorted({p for s in seqs for p in c.page_table(s)[: -(-c.length(s) // c.page_size)]}))


CASES = [
    # H, D, Dv, S, dtype, bits, meta, key summaries, prompts (ragged, odd, partial pages), steps
    (2, 16, 16, 16, torch.float32, 4, "float16", False, (5, 17, 0), 20),
    (1, 16, 8, 16, torch.float32, 8, "float32", True, (31,), 3),          # one KV head, Dv ≠ D
    (3, 24, 24, 8, torch.float32, 4, "float16", True, (9, 2), 11),         # D not a power of two, odd H
    (2, 64, 64, 16, torch.bfloat16, 4, "float16", False, (33, 1, 16), 5),  # the 1B shape's head dim
    (2, 16, 16, 16, torch.float16, 2, "float32", False, (7,), 12),
    (2, 16, 16, 16, torch.float32, None, None, True, (3, 40), 6),           # no sketch (paged/dense)
]


@pytest.mark.parametrize("H,D,Dv,S,dtype,bits,meta,keys,prompts,steps", CASES)
def test_fused_append_is_bit_identical(H, D, Dv, S, dtype, bits, meta, keys, prompts, steps):
    g = torch.Generator().manual_seed(11 + H + D + S)
    B, T = len(prompts), max(prompts) + steps
    k = (3 * torch.randn(B, T, H, D, generator=g) + torch.randn(B, 1, H, D, generator=g)).to(dtype)
    v = torch.randn(B, T, H, Dv, generator=g).to(dtype)
    ref = _cache("torch", H=H, D=D, Dv=Dv, S=S, dtype=dtype, bits=bits, meta=meta, keys=keys, poison=False)
    fus = _cache("triton", H=H, D=D, Dv=Dv, S=S, dtype=dtype, bits=bits, meta=meta, keys=keys, poison=True)
    seqs = _run(ref, prompts, steps, k, v)
    assert _run(fus, prompts, steps, k, v) == seqs
    assert torch.equal(ref.seq_lens, fus.seq_lens) and torch.equal(ref.block_table, fus.block_table)
    p = _held_pages(ref, seqs)
    for name in ("k_pages", "v_pages", "kmin", "kmax"):
        a, b = getattr(ref, name), getattr(fus, name)
        if a is None:
            assert b is None
            continue
        assert torch.equal(a[p].nan_to_num(7.0), b[p].nan_to_num(7.0)), name
    # value norms and key means: torch's norm/mean sum in another order than the summary kernel; the
    # fused kernel must equal the summary kernel (kernels/page_summary.py) recomputed on its pages
    torch.testing.assert_close(fus.vnorm[p], ref.vnorm[p], rtol=2e-7, atol=0)
    if ref.vabs is not None:              # the running maxima: the fused kernel raises them itself
        torch.testing.assert_close(fus.vabs, ref.vabs, rtol=2e-7, atol=0)
        assert bool((fus.vabs[seqs] > 0).all())
    _assert_summary_kernel_agrees(fus, seqs)
    if bits is not None:
        sa, sb = ref.sketches[bits], fus.sketches[bits]
        for name in ("codes", "offset", "step"):
            assert torch.equal(getattr(sa, name)[p], getattr(sb, name)[p]), name
        assert not torch.isnan(sb.offset[p]).any()


@pytest.mark.parametrize("meta", ["float16", "float32"])
def test_fused_append_covering_step_and_extremes(meta):
    """Pages whose covering step must be raised by ulps (keys −2⁻¹⁰⁰ and 15·2³⁶ with float32
    metadata), a constant page (step 0), negative and sub-ulp spreads: same codes and metadata."""
    g = torch.Generator().manual_seed(5)
    n = 60                                          # the last page partial
    k = torch.randn(1, n, 2, 16, generator=g)
    k[0, 16:32] = -2.0 ** -100 if meta == "float32" else -1e-3
    k[0, 20] = 15 * 2.0 ** 36 if meta == "float32" else 1000.0
    k[0, 32:48] = 0.25                              # a constant page: step 0
    k[0, 48:60] = -7.0 + 1e-6 * torch.randn(12, 2, 16, generator=g)
    v = torch.randn(1, n, 2, 16, generator=g)
    kw = dict(H=2, D=16, Dv=16, S=16, dtype=torch.float32, bits=4, meta=meta, keys=False)
    ref = _cache("torch", poison=False, **kw)
    fus = _cache("triton", poison=True, **kw)
    seqs = _run(ref, (0,), n, k, v)
    _run(fus, (0,), n, k, v)
    p = _held_pages(ref, seqs)
    sa, sb = ref.sketches[4], fus.sketches[4]
    for name in ("codes", "offset", "step"):
        assert torch.equal(getattr(sa, name)[p], getattr(sb, name)[p]), name
    if meta == "float32":
        assert sb.step[1, 0, 0].item() == torch.nextafter(torch.tensor(2.0 ** 36), torch.tensor(math.inf)).item()
    assert (sb.step[2] == 0).all()


@pytest.mark.skipif(not INTERPRETED, reason="counts the interpreter's launches (CPU)")
def test_fused_append_is_two_launches(monkeypatch):
    """The engine's certified cache appends a decode step with two kernels (the (row, KV head) grid,
    then the lengths) and no torch op."""
    import triton.runtime.interpreter as interp
    from torch.utils._python_dispatch import TorchDispatchMode

    c = _cache("triton", H=2, D=16, Dv=16, S=16, dtype=torch.float32, bits=4, meta="float16", keys=False,
               poison=False)
    s = c.add_sequence()
    c.reserve(s, 8)
    idx = torch.tensor([s], dtype=torch.int32)
    kt, vt = torch.randn(1, 2, 16), torch.randn(1, 2, 16)
    launches, ops = [], []
    run = interp.InterpretedFunction.run

    def counted(self, *a, **kw):
        launches.append(self.fn.__name__)
        return run(self, *a, **kw)

    class Ops(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            if not launches:                       # the interpreter's own argument handling not counted
                ops.append(func.overloadpacket.__name__)
            return func(*args, **(kwargs or {}))

    monkeypatch.setattr(interp.InterpretedFunction, "run", counted)
    with Ops():
        c.append_step_device(idx, kt, vt)
    assert launches == ["_append_step_kernel", "_advance_kernel"] and ops == []
    assert int(c.seq_lens[s]) == 1


def test_fused_append_switch(monkeypatch):
    """VASHISTA_FUSED_APPEND=0 turns the kernel off; a cache it cannot cover (two sketches) never takes it."""
    from vashista_gpu.kernels.append_step import fusable

    c = _cache("triton", H=1, D=16, Dv=16, S=16, dtype=torch.float32, bits=4, meta="float16", keys=False,
               poison=False)
    assert fusable(c)
    monkeypatch.setenv("VASHISTA_FUSED_APPEND", "0")
    assert not fusable(c)
    monkeypatch.delenv("VASHISTA_FUSED_APPEND")
    attach_sketch(c, 8)
    assert not fusable(c)


@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_dense_only_cache_refreshes_no_summary(backend):
    """A cache without summaries (dense mode reads none): the device append stores the same K/V and
    lengths as a cache that keeps them, with nothing else to refresh (the kernel skips the read-back
    of the page's values); host appends too."""
    g = torch.Generator().manual_seed(3)
    prompts, steps, H, D = (9, 17, 0), 7, 2, 64
    B, T = len(prompts), max(prompts) + steps
    k = torch.randn(B, T, H, D, generator=g).to(torch.bfloat16)
    v = torch.randn(B, T, H, D, generator=g).to(torch.bfloat16)
    kw = dict(H=H, D=D, Dv=D, S=16, dtype=torch.bfloat16, bits=None, meta=None, keys=False)
    full = _cache(backend, poison=False, **kw)
    lean = _cache(backend, poison=True, vnorm=False, **kw)
    assert lean.vnorm is None and lean.kmin is None
    seqs = _run(full, prompts, steps, k, v)
    assert _run(lean, prompts, steps, k, v) == seqs
    p = _held_pages(full, seqs)
    for name in ("k_pages", "v_pages"):
        assert torch.equal(getattr(full, name)[p].nan_to_num(7.0), getattr(lean, name)[p].nan_to_num(7.0)), name
    assert torch.equal(full.seq_lens, lean.seq_lens) and torch.equal(full.block_table, lean.block_table)
    assert bool((full.vnorm[p] > 0).any())              # the full cache did refresh its norms


def test_value_norms_off_needs_key_summaries_off():
    from vashista_core.errors import VashistaInputError

    with pytest.raises(VashistaInputError) as e:
        TorchPagedKVCache(16, 2, 16, num_pages=4, value_norms=False)
    assert e.value.argument == "value_norms"
    with pytest.raises(VashistaInputError) as e:
        TorchPagedKVCache(16, 2, 16, num_pages=4, key_summaries=False, value_norms=1)
    assert e.value.argument == "value_norms"
