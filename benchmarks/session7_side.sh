#!/usr/bin/env bash
# Side work of the seventh device session's staging calls (benchmarks/gpu_staged_session.sh stage N
# with STAGE_CMD="bash benchmarks/session7_side.sh N"; STAGE_SECONDS as noted), most valuable first:
# the radix selection compiled (equality, then time; call A of the seventh session timed a selection
# split over programs per row here, commit bb36d68, and it lost everywhere: RESULTS.md), its tests on
# the card, the engine end to end, the GPU tests the sixth session left owed, and the compiled
# soundness stress (≥ 10⁵ query-heads, the two-sided planned step included). Output under $OUT (<= 8 files per call come back). Call 11 (not a staging
# call: `bash benchmarks/session7_side.sh real`) runs the 32k quality pass and the real-model decode.
#
# Without the model (devices scarce: no ten consecutive staging calls), the same steps run in three
# calls: `bash benchmarks/session7_side.sh A|B|C` (each step under its own time limit, results in one
# tarball, calls.tar.gz, as the device returns at most 8 files).
set -u
n=${1:?call number}
. "$(dirname "$0")/device_steps.sh"
case "$n" in
    A) steps 1:150 2:130 3:160; tar xzf "$OUT/calls_A.tar.gz" -O ./side_1.log ./side_2.log ./side_3.log | tail -40
       exit 0 ;;
    B) steps 4:170 5:110 6:100; tar xzf "$OUT/calls_B.tar.gz" -O ./side_4.log ./side_5.log | tail -16; exit 0 ;;
    C) steps ${C_STEPS:-11:90 8:100 9:100 7:160}; tar xzf "$OUT/calls_C.tar.gz" -O ./side_11.log ./side_8.log ./side_7.log | tail -24
       exit 0 ;;
esac
PYT="python3 -m pytest -q -p no:cacheprovider -p no:benchmark -rfEs"
E2E="python3 benchmarks/e2e_decode.py"
STRESS="python3 tests/stress/long_gpu.py --workers 3 --seconds ${STRESS_SECONDS:-80}"
VARS=graph_sdpa_flash,ours_dense,ours_cert_int8_g64_2s,ours_cert_int4_g32_2s,ours_cert_int4_g16
case "$n" in
    1) python3 benchmarks/select_gpu.py --out "$OUT/select.json" > "$OUT/select.txt" 2>&1
       echo "select rc=$?"; tail -12 "$OUT/select.txt"
       $PYT tests/test_select_kernel.py > "$OUT/tests_$n.log" 2>&1
       echo "tests rc=$?"; tail -3 "$OUT/tests_$n.log" ;;
    2) $PYT tests/test_gpu_sketch_select.py tests/test_row_bounds.py tests/test_engine_gpu.py > "$OUT/tests_$n.log" 2>&1
       echo "tests rc=$?"; tail -3 "$OUT/tests_$n.log" ;;
    3) $E2E --out "$OUT/e2e_$n" --configs llama-1b:131072:1 --variants "$VARS" ;;
    4) $E2E --out "$OUT/e2e_$n" --configs llama-1b:131072:4 --variants "$VARS" ;;
    5) $E2E --out "$OUT/e2e_$n" --configs llama-8b:131072:1 --variants ours_dense,ours_cert_int8_g64_2s,ours_cert_int4_g32_2s ;;
    6) $E2E --profile --out "$OUT/prof_$n" --configs llama-1b:131072:1,llama-1b:131072:4 \
           --variants ours_cert_int8_g64_2s ;;
    7) # batch 16 at 128k needs ~82 GiB for the certified cache: an H200 only; else the 8k auto check
       if nvidia-smi --query-gpu=name --format=csv,noheader | grep -q H200; then
           $E2E --out "$OUT/e2e_$n" --configs llama-1b:131072:16 \
               --variants graph_sdpa_flash,ours_dense,ours_cert_int8_g64_2s,ours_cert_int4_g32_2s
       else
           $E2E --out "$OUT/e2e_$n" --configs llama-1b:32768:4,llama-1b:8192:1 \
               --variants ours_dense,ours_cert_int8_g64_2s,ours_cert_int4_g32_2s
       fi ;;
    11) $PYT tests/test_select_kernel.py tests/test_gpu_sketch_select.py > "$OUT/tests_$n.log" 2>&1
       echo "tests rc=$?"; tail -3 "$OUT/tests_$n.log" ;;
    8|9|10) $STRESS --tiers gpu-triton-fp32,gpu-triton-bf16,gpu-plan2s-fp32,cp-fused-fp32 \
           --seed0 $(( 130000000 + n * 1000000 )) --json "$OUT/stress_$n.json" ;;
    real) # after the ten parts: the 32k quality pass (LONGCTX_* knobs) with a compiled stress slice
       # beside it at low priority (the quality run's time does not matter), then the honest number
       nice -n 15 python3 tests/stress/long_gpu.py --workers 3 --seconds "$(( ${LONGCTX_BUDGET_S:-300} - 30 ))" \
           --tiers gpu-triton-fp32,gpu-triton-bf16,gpu-plan2s-fp32,cp-fused-fp32 --seed0 140000000 \
           --json "$OUT/stress_q.json" > "$OUT/stress_q.txt" 2>&1 &
       SP=$!
       bash benchmarks/longctx_quality.sh run
       echo "quality rc=$?"
       wait $SP; echo "stress rc=$?"; tail -5 "$OUT/stress_q.txt"
       export PYTHONPATH="/tmp/site:$PWD" VASHISTA_MODEL_DIR=/tmp/vlong/model VASHISTA_TEXT_DIR=/tmp/vlong/texts
       timeout "${REAL_SECONDS:-240}" python3 benchmarks/realmodel_decode.py --out "$OUT/real.json" --new 64 \
           --modes dense cert-int8-2s cert-int8-2s@1 cert-int4 cert-int4@1 > "$OUT/real.txt" 2>&1
       echo "real rc=$?"; tail -12 "$OUT/real.txt" ;;
    *) true ;;
esac
rm -f "$OUT"/e2e_*/*.png "$OUT"/e2e_*/crossover.json "$OUT"/prof_*/*.png
