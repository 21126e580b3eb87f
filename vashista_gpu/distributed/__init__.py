"""Context-parallel decode over ``torch.distributed`` (issue 17; docs/CONTEXT_PARALLEL.md): every
sequence's paged cache and sketch sharded across the ranks of a process group (``shard``), a
certified step per rank whose partial states merge exactly in one collective (``step``, ``merge``),
and the distributed dense decode that is its fallback and baseline (``fallback``). Communication is
``torch.distributed`` only (gloo on CPU, NCCL on GPU)."""
from .fallback import cp_dense_decode
from .merge import ShardState, certificate, merge
from .shard import ShardedCache, ShardLayout
from .step import cp_certified_decode, cp_fused_step

__all__ = ["ShardLayout", "ShardState", "ShardedCache", "certificate", "cp_certified_decode",
           "cp_dense_decode", "cp_fused_step", "merge"]
