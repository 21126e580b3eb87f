"""Triton kernels of the GPU tier, one concept per file. Each module holds a ``@triton.jit`` kernel
and its launcher — the module's public function: it takes preallocated outputs (or allocates them),
sets the grid, and states in its docstring the bytes it moves — so a decode step can be
graph-captured. The public API is the modules below and their launchers (most launchers share their
module's name, so they are not re-exported here: ``from vashista_gpu.kernels.rescore import rescore``).

    block_scores.block_scores     routing pass over block summaries (pages or hierarchy nodes)
    select_blocks.select_blocks   one routing level's fused selection
    fold_dropped.fold_dropped     dropped blocks folded into the certificate
    token_scores.token_scores     exact scores of the routed pages' tokens
    finish.finish                 solve, gather and certify the candidates
    page_summary.page_summary     page summaries on append
    sketch_scan.sketch_scan_bound / paged_sketch_scan_bound   certified-mode scan with bounds
    sketch_scan.sketch_scores     scores-only scan of the torch path (no shape rule)
    select_topk.select_topk       the certified step's top-Kc selection in one launch (radix select)
    select_above.select_above     threshold compaction of candidates (selection's topk method)
    rescore.rescore / rescore_paged   exact rescoring of the candidates
    row_lse.row_lse_upper         upper bound on a row's logsumexp (row_lse_chunks: its first stage)
    cert_tail.cert_finish         the certified step's certificate from the bounds' chunks (one launch)
    cert_tail.finite_rows         the certified step's query finiteness check and float32 upcast
    libm.exp_acc / log_acc        accurately rounded exp/log inside kernels (libdevice on CUDA)
    append_step.append_step       the engine's decode-step append (K/V, length, summaries, page sketch)
    step_stats.step_stats         the engine's per-layer decode statistics
    row_vmax.row_vmax_seqs        the certified step's max‖v‖ per row from the sequences' running maxima
    row_keys.row_keys             tie-rule keys of a score matrix (selection)
    paged_dense.paged_dense_decode   exact decode over the paged pool (dense mode; DenseFallback's pairs)
    flag_pairs.flag_pairs         DenseFallback's flag, compaction and counters in one launch
"""
__all__ = ["append_step", "block_scores", "cert_tail", "finish", "flag_pairs", "fold_dropped", "keys", "libm",
           "page_summary", "paged_dense", "rescore", "row_keys", "row_lse", "row_vmax", "select_above", "select_blocks",
           "select_topk", "sketch_scan", "step_stats", "token_scores"]
