#!/usr/bin/env bash
# Side work of the sixth device session's staging calls (benchmarks/gpu_staged_session.sh stage N
# with STAGE_CMD="bash benchmarks/session6_side.sh N"; STAGE_SECONDS as noted), from what the fifth
# session left owed (RESULTS.md, "Fifth session"): the GPU tests its calls did not reach, the window
# baseline on the engine's captured step, the int4 page-size lever, and compiled stress. Output under
# $OUT (<= 8 files per call come back). Calls 7-10 only stage their part (device time is short).
set -u
n=${1:?call number}
export TRITON_CACHE_DIR=${TRITON_CACHE_DIR:-/tmp/triton_cache}
PYT="python3 -m pytest -q -p no:cacheprovider -p no:benchmark -rfEs"
E2E="python3 benchmarks/e2e_decode.py"
case "$n" in
    1) $PYT tests/test_paged_scan.py tests/test_select_kernel.py > "$OUT/tests_$n.log" 2>&1
       echo "tests rc=$?"; tail -3 "$OUT/tests_$n.log" ;;
    2) $E2E --out "$OUT/e2e_$n" --configs llama-1b:131072:1 \
           --variants graph_sdpa_flash,ours_dense,ours_cert_int4_g16,ours_cert_int4_g32,ours_cert_int4_g64,ours_cert_int8_g64,ours_cert_int4_g16_2s,ours_cert_int4_g32_2s,ours_cert_int8_g64_2s
       $PYT tests/test_engine_gpu.py -k two_sided > "$OUT/tests_$n.log" 2>&1; echo "two-sided tests rc=$?"; tail -2 "$OUT/tests_$n.log" ;;
    3) $E2E --out "$OUT/e2e_$n" --configs llama-1b:131072:4 \
           --variants graph_sdpa_flash,ours_dense,ours_cert_int4_g16,ours_cert_int4_g32,ours_cert_int4_g64,ours_cert_int8_g64,ours_cert_int4_g16_2s,ours_cert_int4_g32_2s,ours_cert_int8_g64_2s ;;
    4) # batch 16 at 128k needs ~82 GiB for the certified cache: an H200 only (the fifth session's H100 could not)
       if nvidia-smi --query-gpu=name --format=csv,noheader | grep -q H200; then
           $E2E --out "$OUT/e2e_$n" --configs llama-1b:131072:16 \
               --variants graph_sdpa_flash,graph_sdpa_cudnn,ours_dense,ours_cert_int4_g16,ours_cert_int4_g32,ours_cert_int8_g64,ours_cert_int4_g32_2s
       else
           $E2E --out "$OUT/e2e_$n" --configs llama-8b:131072:1 \
               --variants graph_sdpa_flash,ours_dense,ours_cert_int4_g16,ours_cert_int4_g32,ours_cert_int8_g64,ours_cert_int4_g32_2s
       fi ;;
    5) $E2E --profile --out "$OUT/prof" --configs llama-1b:131072:1,llama-1b:131072:4 \
           --variants ours_cert_int4_g16,ours_cert_int4_g32,ours_cert_int8_g64,ours_cert_int4_g16_2s ;;
    6) $PYT tests/test_gpu_sketch_select.py tests/test_row_bounds.py > "$OUT/tests_$n.log" 2>&1
       echo "tests rc=$?"; tail -3 "$OUT/tests_$n.log" ;;
    *) true ;;
esac
rm -f "$OUT"/e2e_*/*.png "$OUT"/e2e_*/crossover.json
