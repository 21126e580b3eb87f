#!/usr/bin/env bash
# One device session in consecutive calls on one warm machine (issues 14, 15, 16), so that the ten
# calls that must carry the 32k model's parts (benchmarks/longctx_quality.sh stage N) also do work:
#
#   stage N   (N = 1..10; carry .devcarry_qNN, and with N = 1 also .devcarry_texts .whl)
#             copies part N, then for STAGE_SECONDS (35) side by side: a slice of the GPU soundness
#             stress of the Triton tiers (tests/stress/long_gpu.py, seeds from N·10⁶, disjoint across
#             calls) and compute-sanitizer memcheck over the test files of slice N (the kernels the
#             last session's memcheck did not reach). Files: stress_N.json, memcheck_N.log, stage_N.txt.
#             STAGE_CMD="..." runs that command instead (STAGE_SECONDS limit, output side_N.log; $OUT is
#             set), e.g. one e2e_decode.py configuration per call, or the engine decoder's phase probe:
#             STAGE_CMD='python3 benchmarks/engine_decoder_gpu.py --contexts 32768 --out $OUT/probe.json'
#   quality   the 32k quality run (longctx_quality.sh run, LONGCTX_* knobs) with a stress slice beside it
#             at low priority (seeds from 50·10⁶; CPU only: the quality run owns the GPU's time).
#   e2e       on a quiet machine: the certified step alone (sketch_decode_scaling.py, 128k) and the
#             engine end to end (e2e_decode.py), then the per-part profile of one certified step.
#
# Stress totals over the calls: python tests/stress/long_gpu.py --sum stress_*.json [--json total.json]
set -u
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
export TRITON_CACHE_DIR=/tmp/triton_cache          # kept between the calls while the machine is warm
OUT=${OUT:-/tmp/staged_out}
mkdir -p "$OUT"
PHASE=${1:-}
TIERS=${STRESS_TIERS:-gpu-triton-fp32,gpu-triton-bf16,gpu-triton-fp16,cp-fused-fp32}

memcheck_slice() {   # the test files of slice N (the last session's memcheck stopped in test_append_kernel)
    case "$1" in
        1) echo tests/test_append_kernel.py ;;
        2) echo tests/test_paged_dense.py ;;
        3) echo tests/test_row_keys_kernel.py tests/test_row_vmax_kernel.py ;;
        4) echo tests/test_step_stats_kernel.py tests/test_row_bounds.py ;;
        5) echo tests/test_fused_engine_step.py ;;
        6) echo tests/test_nonfinite_graph_paths.py ;;
        7) echo tests/test_gpu_sketch_paged.py ;;
        8) echo tests/test_gpu_sketch_plan.py ;;
        9) echo tests/test_gpu_sketch_select.py ;;
        10) echo tests/test_engine_gpu.py ;;
    esac
}

case "$PHASE" in
    stage)
        n=${2:?stage N}
        t=${STAGE_SECONDS:-35}
        { date -u; nvidia-smi --query-gpu=name,memory.total --format=csv,noheader 2>&1; git log -1 --format=%h 2>/dev/null; } > "$OUT/stage_$n.txt"
        bash benchmarks/longctx_quality.sh stage "$n" >> "$OUT/stage_$n.txt" 2>&1 || echo "stage rc=$?" >> "$OUT/stage_$n.txt"
        if [ -n "${STAGE_CMD:-}" ]; then   # other work instead of the stress and memcheck slices
            timeout "$t" bash -c "$STAGE_CMD" > "$OUT/side_$n.log" 2>&1
            echo "STAGE_CMD rc=$?" >> "$OUT/stage_$n.txt"
            cat "$OUT/stage_$n.txt"; exit 0
        fi
        python3 tests/stress/long_gpu.py --tiers "$TIERS" --workers "${STRESS_WORKERS:-3}" --seconds "$t" \
            --seed0 $(( n * 1000000 )) --json "$OUT/stress_$n.json" >> "$OUT/stage_$n.txt" 2>&1 &
        SP=$!
        files=$(memcheck_slice "$n")
        if [ -n "$files" ]; then
            timeout "$(( t + 10 ))" compute-sanitizer --tool memcheck --error-exitcode 99 \
                python3 -m pytest -q -p no:cacheprovider -p no:benchmark -rfEs $files > "$OUT/memcheck_$n.log" 2>&1
            echo "memcheck [$files] rc=$? $(grep -E 'ERROR SUMMARY' "$OUT/memcheck_$n.log" | tail -1) $(tail -1 "$OUT/memcheck_$n.log")" >> "$OUT/stage_$n.txt"
        fi
        wait $SP; echo "stress rc=$?" >> "$OUT/stage_$n.txt"
        cat "$OUT/stage_$n.txt" ;;
    quality)
        nice -n 15 python3 tests/stress/long_gpu.py --tiers "$TIERS" --workers "${STRESS_WORKERS:-3}" \
            --seconds "$(( ${LONGCTX_BUDGET_S:-540} - 30 ))" --seed0 50000000 --json "$OUT/stress_q.json" > "$OUT/stress_q.txt" 2>&1 &
        SP=$!
        Q0=$(date +%s)
        bash benchmarks/longctx_quality.sh run
        rc=$?
        if [ "$rc" != 0 ] && [ $(( $(date +%s) - Q0 )) -lt $(( ${LONGCTX_BUDGET_S:-540} - 90 )) ]; then
            # a quality run that failed early must not hold the machine for the stress's remaining
            # minutes (the first 32k call waited ~470 s on it after an out-of-memory); its totals are
            # lost. (A run cut at its time limit ends near the stress's own end: that one is awaited.)
            pkill -P "$SP"; kill "$SP"
            echo "stress stopped: the quality run failed (rc=$rc)" >> "$OUT/stress_q.txt"
        fi
        wait $SP; echo "stress rc=$?" >> "$OUT/stress_q.txt"
        exit $rc ;;
    e2e)
        T0=$(date +%s)
        { nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
          python3 -c "import torch, triton, transformers; print('torch', torch.__version__, 'triton', triton.__version__, 'transformers', transformers.__version__)"
          git log -1 --format=%h 2>/dev/null; } > "$OUT/card.txt" 2>&1
        timeout "${KERNEL_SECONDS:-60}" python3 benchmarks/sketch_decode_scaling.py --T 131072 --out "$OUT/sketch_step.json" > "$OUT/bench.log" 2>&1
        echo "sketch step rc=$? at $(( $(date +%s) - T0 )) s" >> "$OUT/card.txt"
        E=$(( ${E2E_SECONDS:-300} - ($(date +%s) - T0) ))
        mkdir -p "$OUT/e2e"
        timeout "$E" python3 benchmarks/e2e_decode.py --out "$OUT/e2e" \
            --configs "${E2E_CONFIGS:-llama-1b:131072:1,llama-1b:131072:4,llama-8b:131072:1,llama-1b:8192:1}" \
            --variants "${E2E_VARIANTS:-graph_sdpa_flash,graph_sdpa_cudnn,ours_dense,ours_cert_int4_g16,ours_cert_int8_g64,ours_paged,ours_cert_int4_g16+df}" \
            --time-budget "$(( E - 60 ))" >> "$OUT/bench.log" 2>&1
        echo "e2e rc=$? at $(( $(date +%s) - T0 )) s" >> "$OUT/card.txt"
        rm -f "$OUT/e2e/"*.png "$OUT/e2e/crossover.json"
        if [ -n "${PROFILE_CONFIG:-llama-1b:131072:4}" ]; then
            timeout "${PROFILE_SECONDS:-60}" python3 benchmarks/e2e_decode.py --profile --out "$OUT/profile" \
                --configs "${PROFILE_CONFIG:-llama-1b:131072:4}" --variants ours_cert_int4_g16 >> "$OUT/bench.log" 2>&1
            echo "profile rc=$? at $(( $(date +%s) - T0 )) s" >> "$OUT/card.txt"
        fi
        cat "$OUT/card.txt" ;;
    *) echo "usage: bash benchmarks/gpu_staged_session.sh stage N | quality | e2e" >&2; exit 2 ;;
esac
