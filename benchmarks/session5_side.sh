#!/usr/bin/env bash
# Side work of the fifth device session's staging calls (benchmarks/gpu_staged_session.sh stage N with
# STAGE_CMD="bash benchmarks/session5_side.sh N"): while the 32k model's parts travel, each call checks
# or measures one thing. The fourth session's kernels (per-(row, head) append, the running |v| maximum,
# the one-launch radix selection) were only compiled for sm_90a, never run: call 1 runs their tests on
# the card before anything is timed. Output under $OUT (<= 8 files per call come back).
set -u
n=${1:?call number}
export TRITON_CACHE_DIR=${TRITON_CACHE_DIR:-/tmp/triton_cache}
E2E="python3 benchmarks/e2e_decode.py"
V=graph_sdpa_flash,graph_sdpa_cudnn,ours_dense,ours_cert_int4_g16,ours_cert_int8_g64,ours_paged,ours_cert_int4_g16+df
PYT="python3 -m pytest -q -p no:cacheprovider -p no:benchmark -rfEs -x"
case "$n" in
    1) $PYT tests/test_append_kernel.py tests/test_row_vmax_kernel.py tests/test_select_kernel.py \
           tests/test_gpu_sketch_select.py tests/test_row_bounds.py > "$OUT/tests_1.log" 2>&1
       echo "tests rc=$?"; tail -5 "$OUT/tests_1.log" ;;
    2) $PYT tests/test_fused_engine_step.py tests/test_engine_gpu.py > "$OUT/tests_2.log" 2>&1
       echo "tests rc=$?"; tail -5 "$OUT/tests_2.log" ;;
    3) $E2E --out "$OUT/e2e_$n" --configs llama-1b:8192:1 --variants $V ;;
    4) $E2E --out "$OUT/e2e_$n" --configs llama-1b:131072:1 --variants $V ;;
    5) $E2E --out "$OUT/e2e_$n" --configs llama-1b:131072:4 --variants $V ;;
    6) $E2E --profile --out "$OUT/prof" --configs llama-1b:8192:1,llama-1b:131072:1 --variants ours_cert_int4_g16 ;;
    7) [ -f benchmarks/select_gpu.py ] && python3 benchmarks/select_gpu.py --out "$OUT/select.json" ;;
    8) $E2E --out "$OUT/e2e_$n" --configs llama-1b:131072:16 --variants graph_sdpa_flash,graph_sdpa_cudnn,ours_dense,ours_cert_int4_g16,ours_cert_int8_g64 ;;
    9) $E2E --out "$OUT/e2e_$n" --configs llama-8b:131072:1 --variants graph_sdpa_flash,graph_sdpa_cudnn,ours_dense,ours_cert_int4_g16,ours_cert_int8_g64 ;;
    10) python3 tests/stress/long_gpu.py --tiers gpu-triton-fp32,gpu-triton-bf16,gpu-triton-fp16,cp-fused-fp32 \
           --workers 3 --seconds "${STRESS_SECONDS:-50}" --seed0 60000000 --json "$OUT/stress_10.json" ;;
    *) true ;;
esac
rm -f "$OUT"/e2e_*/*.png "$OUT"/e2e_*/crossover.json
