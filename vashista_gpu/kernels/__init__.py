"""Triton kernels of the GPU tier, one concept per file. Each module pairs a ``@triton.jit`` kernel
with a thin launcher; launchers take preallocated outputs so a decode step can be graph-captured."""
