#!/usr/bin/env bash
# Side work planned for the seventh device session's staging calls (benchmarks/gpu_staged_session.sh
# stage N with STAGE_CMD="bash benchmarks/session7_side.sh N"; STAGE_SECONDS as noted), from what the
# sixth session left owed (RESULTS.md, "Sixth session"): the compiled soundness stress (≥ 10⁵
# query-heads, the two-sided planned step included), the GPU tests not yet run on a card, batch 16 at
# 128k (H200 only), and the real 32k model with two-sided bounds. Output under $OUT (<= 8 files per
# call come back). Most valuable first: a lost machine loses the tail.
set -u
n=${1:?call number}
export TRITON_CACHE_DIR=${TRITON_CACHE_DIR:-/tmp/triton_cache}
PYT="python3 -m pytest -q -p no:cacheprovider -p no:benchmark -rfEs"
E2E="python3 benchmarks/e2e_decode.py"
STRESS="python3 tests/stress/long_gpu.py --workers 3 --seconds ${STRESS_SECONDS:-80}"
case "$n" in
    1) # batch 16 at 128k needs ~82 GiB for the certified cache: an H200 only; else the 8B at 8k/32k
       if nvidia-smi --query-gpu=name --format=csv,noheader | grep -q H200; then
           $E2E --out "$OUT/e2e_$n" --configs llama-1b:131072:16 \
               --variants graph_sdpa_flash,ours_dense,ours_cert_int4_g16,ours_cert_int8_g64,ours_cert_int4_g32_2s,ours_cert_int8_g64_2s
       else
           $E2E --out "$OUT/e2e_$n" --configs llama-8b:32768:4,llama-1b:32768:4 \
               --variants ours_dense,ours_cert_int8_g64,ours_cert_int4_g32_2s,ours_cert_int8_g64_2s
       fi ;;
    2) $PYT tests/test_gpu_sketch_select.py tests/test_row_bounds.py > "$OUT/tests_$n.log" 2>&1
       echo "tests rc=$?"; tail -3 "$OUT/tests_$n.log" ;;
    3) $PYT tests/test_select_kernel.py tests/test_engine_gpu.py > "$OUT/tests_$n.log" 2>&1
       echo "tests rc=$?"; tail -3 "$OUT/tests_$n.log" ;;
    4|5|6|7|8|9|10) $STRESS --tiers gpu-triton-fp32,gpu-triton-bf16,gpu-plan2s-fp32,cp-fused-fp32 \
           --seed0 $(( 120000000 + n * 1000000 )) --json "$OUT/stress_$n.json" ;;
    *) true ;;
esac
rm -f "$OUT"/e2e_*/*.png "$OUT"/e2e_*/crossover.json
