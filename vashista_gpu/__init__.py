"""vashista_gpu — tier two of Vashista: paged KV cache and fused sparse decode (PyTorch + Triton)."""
