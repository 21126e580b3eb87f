#!/usr/bin/env bash
# The closing device call of a session (one call: the device budget allows no second start).
#   A. side by side (CPU-bound, timings not read): the GPU test files (pytest-xdist), compute-sanitizer
#      memcheck over the fused / planned step, kernel and engine tests, and the GPU soundness stress of
#      the Triton tiers on this code (tests/stress/long_gpu.py), and the quality suite's engine decoder
#      against the HF decoder (benchmarks/engine_decoder_gpu.py: tokens, NLL, violations);
#   B. on the then quiet GPU: the certificate tail's agreement and timing (cert_tail_gpu.py); the
#      certified-step kernel benchmark of the code before the layout refactor (commit 7f39b96, carried
#      in .devstage/old) and of this tree, same card, same treatment (issue 13: "the same numbers within
#      noise"); the end-to-end engine benchmark (issue 14) for what is left of E2E_SECONDS.
# At most 8 files come back, written as the run goes (a run cut at its limit still returns them):
# card.txt, tests.log, memcheck.log, stress.json, bench.log, bench.jsonl, e2e/e2e.json, e2e/e2e.csv.
#     bash benchmarks/gpu_final.sh            (carry .devstage/old)
# (It replaces gpu_verify.sh of the same day, whose two calls ran the tests and stress of phase A alone.)
set -u
export PYTHONPATH=. PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/vashista_final}
mkdir -p "$OUT/e2e"
T0=$(date +%s)
el() { echo $(( $(date +%s) - T0 )); }
{
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
  python3 -c "import torch, triton, transformers; print('torch', torch.__version__, 'triton', triton.__version__, 'transformers', transformers.__version__)"
} > "$OUT/card.txt" 2>&1

A=${PHASE_A_SECONDS:-170}
GPU_TESTS="tests/test_gpu_certificates.py tests/test_gpu_decode.py tests/test_gpu_kernels.py tests/test_gpu_large.py
 tests/test_gpu_sketch.py tests/test_gpu_sketch_fused.py tests/test_gpu_sketch_paged.py tests/test_gpu_sketch_plan.py
 tests/test_gpu_sketch_select.py tests/test_engine.py tests/test_engine_gpu.py tests/test_paged_dense.py
 tests/test_append_kernel.py tests/test_row_keys_kernel.py tests/test_row_vmax_kernel.py tests/test_step_stats_kernel.py
 tests/test_fused_engine_step.py tests/test_device_policy.py tests/test_sketch_decode.py tests/test_sketch_plan.py
 tests/test_sketch.py tests/test_paged_cache.py tests/test_hf_integration.py tests/test_hf_model.py
 tests/test_distributed.py tests/test_distributed_fused.py tests/test_runtime_certificate.py tests/test_policies.py
 tests/test_paged_scan.py tests/test_cert_tail.py tests/test_row_bounds.py tests/test_nonfinite_graph_paths.py
 tests/stress/test_stress_gpu.py ${EXTRA_TESTS:-}"
MEMCHECK_TESTS="${MEMCHECK_TESTS:-tests/test_cert_tail.py tests/test_paged_scan.py tests/test_device_policy.py
 tests/test_gpu_certificates.py tests/test_gpu_sketch_fused.py tests/test_append_kernel.py tests/test_paged_dense.py
 tests/test_row_keys_kernel.py tests/test_row_vmax_kernel.py tests/test_step_stats_kernel.py tests/test_fused_engine_step.py
 tests/test_nonfinite_graph_paths.py}"

timeout "$A" python3 -m pytest -v -p no:cacheprovider -p no:benchmark --timeout "$((A - 15))" -n "${TEST_WORKERS:-8}" -rfEs \
    $GPU_TESTS > "$OUT/tests.log" 2>&1 &
TP=$!
timeout "$A" compute-sanitizer --tool memcheck --error-exitcode 99 \
    python3 -m pytest -v -p no:cacheprovider -p no:benchmark $MEMCHECK_TESTS > "$OUT/memcheck.log" 2>&1 &
MP=$!
python3 tests/stress/long_gpu.py --tiers "${STRESS_TIERS:-gpu-triton-fp32,gpu-triton-bf16,gpu-triton-fp16,cp-fused-fp32}" --workers "${STRESS_WORKERS:-2}" \
    --seconds "$((A - 20))" --json "$OUT/stress.json" > "$OUT/bench.log" 2>&1 &
SP=$!
# the quality suite's engine decoder (CUDA-graph step vs the HF decoder): correctness on the card; its
# ms/token here share the GPU with the tests, so they are not reported as timings
(PYTHONPATH=. timeout "$A" python3 benchmarks/engine_decoder_gpu.py --contexts 8192 32768 --out /tmp/engine_decoder.json \
    > /tmp/engine_decoder.log 2>&1; echo "engine_decoder rc=$? at $(el) s" >> "$OUT/card.txt") &
EP=$!
wait $TP; echo "gpu tests rc=$? at $(el) s: $(grep -cE 'PASSED' "$OUT/tests.log") passed, $(grep -cE '^FAILED|^ERROR' "$OUT/tests.log") failed/errors; $(tail -1 "$OUT/tests.log")" >> "$OUT/card.txt"
wait $MP; echo "memcheck rc=$? at $(el) s: $(grep -c PASSED "$OUT/memcheck.log") passed; $(grep -E 'ERROR SUMMARY' "$OUT/memcheck.log" | tail -1)" >> "$OUT/card.txt"
wait $SP; echo "stress rc=$? at $(el) s" >> "$OUT/card.txt"
wait $EP; { echo "=== engine_decoder"; cat /tmp/engine_decoder.log; } >> "$OUT/bench.log"
[ -f /tmp/engine_decoder.json ] && python3 -c "import json; print(json.dumps(dict(name='engine_decoder', result=json.load(open('/tmp/engine_decoder.json')))))" >> "$OUT/bench.jsonl"

bench() {   # name, timeout, dir, command...: stdout/stderr to bench.log, its JSON appended to bench.jsonl
  local name=$1 t=$2 dir=$3; shift 3
  echo "=== $name" >> "$OUT/bench.log"
  (cd "$dir" && PYTHONPATH=. timeout "$t" "$@" --out "/tmp/$name.json") >> "$OUT/bench.log" 2>&1
  local rc=$?
  echo "$name rc=$rc at $(el) s" >> "$OUT/card.txt"
  [ -f "/tmp/$name.json" ] && python3 -c "import json,sys; print(json.dumps(dict(name='$name', result=json.load(open('/tmp/$name.json')))))" >> "$OUT/bench.jsonl"
}
bench cert_tail 30 . python3 benchmarks/cert_tail_gpu.py
bench sketch_new "${KERNEL_SECONDS:-40}" . python3 benchmarks/sketch_decode_scaling.py --T 131072
bench sketch_old "${KERNEL_SECONDS:-40}" .devstage/old python3 benchmarks/sketch_decode_scaling.py --T 131072

E=$(( ${TOTAL_SECONDS:-420} - $(el) ))
echo "e2e gets $E s" >> "$OUT/card.txt"
timeout "$E" python3 benchmarks/e2e_decode.py --out "$OUT/e2e" \
    --configs "${E2E_CONFIGS:-llama-1b:131072:4,llama-1b:131072:1,llama-1b:8192:1,llama-8b:131072:1}" \
    --variants "${E2E_VARIANTS:-graph_sdpa_flash,graph_sdpa_cudnn,ours_dense,ours_cert_int4_g16,ours_cert_int8_g64,ours_paged,ours_cert_int4_g16+df}" \
    --time-budget "$(( E - 40 ))" >> "$OUT/bench.log" 2>&1
echo "e2e rc=$? at $(el) s" >> "$OUT/card.txt"
rm -f "$OUT/e2e/"*.png "$OUT/e2e/crossover.json"   # 8 files at most come back
cat "$OUT/card.txt"
