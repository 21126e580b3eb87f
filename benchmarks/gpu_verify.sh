#!/usr/bin/env bash
# One batched device call that re-verifies the library on a real GPU (issues 13 and 15):
#   1. the GPU soundness stress (tests/stress/long_gpu.py) in the background, every GPU tier, for
#      STRESS_SECONDS, beside the tests;
#   2. every test file that exercises the GPU tier, with compiled Triton kernels (pytest-xdist);
#   3. compute-sanitizer --tool memcheck over the fused / planned step, kernel and engine tests;
#   4. the stress totals once it ends.
# Everything goes to $OUT (the device tool brings it back). Usage on the device:
#     STRESS_SECONDS=470 [STRESS_TIERS=gpu-triton-fp32,...] bash benchmarks/gpu_verify.sh
set -u
export PYTHONPATH=. PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/vashista_verify}
mkdir -p "$OUT"
STRESS_SECONDS=${STRESS_SECONDS:-470}
STRESS_WORKERS=${STRESS_WORKERS:-3}
T0=$(date +%s)
{
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
  python3 -c "import torch, triton, transformers; print('torch', torch.__version__, 'triton', triton.__version__, 'transformers', transformers.__version__)"
  git log -1 --format='code %H' 2>/dev/null || true
} > "$OUT/card.txt" 2>&1

python3 tests/stress/long_gpu.py --tiers "${STRESS_TIERS:-gpu-triton-fp32,gpu-triton-bf16,gpu-torch-fp32,gpu-torch-bf16}" \
    --workers "$STRESS_WORKERS" --seconds "$STRESS_SECONDS" --json "$OUT/stress_gpu.json" \
    > "$OUT/stress_gpu.log" 2>&1 &
STRESS_PID=$!

GPU_TESTS="tests/test_gpu_certificates.py tests/test_gpu_decode.py tests/test_gpu_kernels.py tests/test_gpu_large.py
 tests/test_gpu_sketch.py tests/test_gpu_sketch_fused.py tests/test_gpu_sketch_paged.py tests/test_gpu_sketch_plan.py
 tests/test_gpu_sketch_select.py tests/test_engine.py tests/test_engine_gpu.py tests/test_paged_dense.py
 tests/test_append_kernel.py tests/test_row_keys_kernel.py tests/test_row_vmax_kernel.py tests/test_step_stats_kernel.py
 tests/test_fused_engine_step.py tests/test_device_policy.py tests/test_sketch_decode.py tests/test_sketch_plan.py
 tests/test_sketch.py tests/test_paged_cache.py tests/test_hf_integration.py tests/test_hf_model.py
 tests/test_distributed.py tests/test_distributed_fused.py tests/test_runtime_certificate.py tests/test_policies.py
 tests/stress/test_stress_gpu.py"
timeout "${TEST_SECONDS:-280}" python3 -m pytest -q -p no:cacheprovider -n "${TEST_WORKERS:-4}" -rfEs \
    --junitxml="$OUT/gpu_tests.xml" $GPU_TESTS > "$OUT/gpu_tests.log" 2>&1
echo "gpu tests rc=$? after $(( $(date +%s) - T0 )) s: $(tail -1 "$OUT/gpu_tests.log")" >> "$OUT/card.txt"

MEMCHECK_TESTS="tests/test_gpu_certificates.py tests/test_gpu_sketch_fused.py tests/test_gpu_sketch_plan.py
 tests/test_append_kernel.py tests/test_paged_dense.py tests/test_row_keys_kernel.py tests/test_row_vmax_kernel.py
 tests/test_step_stats_kernel.py tests/test_fused_engine_step.py tests/test_engine_gpu.py"
timeout "${MEMCHECK_SECONDS:-170}" compute-sanitizer --tool memcheck --error-exitcode 99 \
    python3 -m pytest -q -p no:cacheprovider $MEMCHECK_TESTS > "$OUT/memcheck.log" 2>&1
echo "memcheck rc=$? after $(( $(date +%s) - T0 )) s: $(grep -E 'ERROR SUMMARY|passed|failed' "$OUT/memcheck.log" | tail -2 | tr '\n' ' ')" >> "$OUT/card.txt"

wait "$STRESS_PID"
echo "stress rc=$? after $(( $(date +%s) - T0 )) s" >> "$OUT/card.txt"
cat "$OUT/stress_gpu.log" >> "$OUT/card.txt"
cat "$OUT/card.txt"
