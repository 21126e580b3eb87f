"""benchmarks/e2e_decode.py's FlashInfer baseline, without FlashInfer: its page table, lengths and
append position checked against FlashInfer's documented paged-KV contract (HND pages; row b's tokens
are pages indices[indptr[b]:indptr[b+1]], all full but the last, which holds last_page_len tokens),
played by a small stand-in module. The card runs the real one (and checks it against SDPA first)."""
from __future__ import annotations

import sys
import types

import pytest
import torch
from script_module import load_script


class _Wrapper:
    """FlashInfer's BatchDecodeWithPagedKVCacheWrapper as documented, in plain torch (HND, fa2)."""

    def __init__(self, workspace, layout, use_cuda_graph, backend, paged_kv_indptr_buffer,
                 paged_kv_indices_buffer, paged_kv_last_page_len_buffer):
        assert layout == "HND" and use_cuda_graph
        self.bufs = (paged_kv_indptr_buffer, paged_kv_indices_buffer, paged_kv_last_page_len_buffer)

    def plan(self, indptr, indices, last, Hq, Hkv, D, page, pos_encoding_mode, q_data_type, kv_data_type,
             sm_scale):
        for buf, host in zip(self.bufs, (indptr, indices, last)):
            buf[:len(host)].copy_(host)
        self.indptr, self.indices, self.last = indptr.tolist(), indices.tolist(), last.tolist()
        self.page, self.scale = page, sm_scale

    def run(self, q, kv, out=None):
        K, V = kv                                            # (pages, Hkv, page, D)
        rows = []
        for b in range(q.shape[0]):
            ids = self.indices[self.indptr[b]:self.indptr[b + 1]]
            n = (len(ids) - 1) * self.page + self.last[b]
            k = K[ids].permute(1, 0, 2, 3).reshape(K.shape[1], -1, K.shape[-1])[:, :n].float()
            v = V[ids].permute(1, 0, 2, 3).reshape(V.shape[1], -1, V.shape[-1])[:, :n].float()
            G = q.shape[1] // K.shape[1]
            s = torch.einsum("hgd,hnd->hgn", q[b].float().view(K.shape[1], G, -1), k) * self.scale
            rows.append(torch.einsum("hgn,hnd->hgd", s.softmax(-1), v).reshape(q.shape[1], -1))
        o = torch.stack(rows).to(q.dtype)
        if out is not None:
            out.copy_(o)
            return out
        return o


@pytest.fixture
def e2e(monkeypatch):
    fake = types.ModuleType("flashinfer")
    fake.BatchDecodeWithPagedKVCacheWrapper = _Wrapper
    fake.__version__ = "stand-in"
    monkeypatch.setitem(sys.modules, "flashinfer", fake)
    return load_script("benchmarks/e2e_decode.py")


@pytest.mark.parametrize("B,ctx", [(1, 16), (2, 37), (3, 47)])   # a full last page, partial pages
def test_the_page_table_covers_exactly_the_first_ctx_plus_one_tokens(e2e, B, ctx):
    torch.manual_seed(B * 100 + ctx)
    model = e2e.build_model("tiny", torch.device("cpu")).float()
    st = e2e.StaticFlashInfer(model, B, ctx, torch.device("cpu"))
    assert e2e.flashinfer_check(st, torch.device("cpu")) < 1e-5
    k_before, _ = st.contiguous_kv(1)
    k_before = k_before.clone()
    with torch.no_grad():
        st.step()
    k_after, v_after = st.contiguous_kv(1)
    assert k_after.shape[2] == ctx + 1
    assert torch.equal(k_after[:, :, :ctx], k_before[:, :, :ctx])      # only position ctx was written
    assert not torch.equal(k_after[:, :, ctx], k_before[:, :, ctx])


def test_a_wrong_plan_is_refused_before_timing(e2e):
    torch.manual_seed(0)
    model = e2e.build_model("tiny", torch.device("cpu")).float()
    st = e2e.StaticFlashInfer(model, 2, 40, torch.device("cpu"))
    st.wrapper.indices = st.wrapper.indices[::-1]                      # the rows' pages swapped
    assert e2e.flashinfer_check(st, torch.device("cpu")) > 5e-2


def test_flashinfer_counts_as_a_dense_baseline(e2e):
    assert e2e.is_graph_dense("graph_flashinfer") and e2e.is_graph_dense("graph_sdpa_cudnn")
    assert not e2e.is_graph_dense("ours_dense") and not e2e.is_graph_dense("hf_eager_sdpa")
