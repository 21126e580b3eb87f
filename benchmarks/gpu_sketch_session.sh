#!/usr/bin/env bash
# Batched device calls for certified mode (issue 8): tests and measurements. Writes to $OUT.
#   bash benchmarks/gpu_sketch_session.sh tests        # GPU tests, the HF smoke test, the paged step benchmark
#   bash benchmarks/gpu_sketch_session.sh gputests     # the GPU tests alone
#   bash benchmarks/gpu_sketch_session.sh steps        # the step benchmark at 8k/32k/128k (group 64)
#   bash benchmarks/gpu_sketch_session.sh groups       # int4 groups 32 and 16 at 128k
#   bash benchmarks/gpu_sketch_session.sh variants     # the scan's arithmetic variants (sketch_scan_variants.py)
# (several modes in one call: bash benchmarks/gpu_sketch_session.sh gputests steps)
set -u
export PYTHONPATH=.
OUT=${OUT:-/tmp/vashista_gpu_out}
mkdir -p "$OUT"
{ nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv
  python -c "import torch, triton, transformers; print('torch', torch.__version__, 'triton', triton.__version__, 'transformers', transformers.__version__)"; } > "$OUT/card.txt" 2>&1
gputests() {
  timeout 240 python -m pytest -q -p no:cacheprovider tests/test_gpu_*.py tests/test_sketch_plan.py > "$OUT/gpu_tests.log" 2>&1
  echo "tests rc=$?" >> "$OUT/card.txt"; tail -2 "$OUT/gpu_tests.log" >> "$OUT/card.txt"
}
for mode in "${@:-tests}"; do
case "$mode" in
gputests) gputests ;;
tests)
  gputests
  timeout 150 python benchmarks/gpu_hf_smoke.py --device cuda > "$OUT/hf_smoke.log" 2>&1
  echo "hf smoke rc=$?" >> "$OUT/card.txt"
  timeout 150 python benchmarks/sketch_paged_scaling.py --out "$OUT/paged.json" > "$OUT/paged.log" 2>&1
  echo "paged rc=$?" >> "$OUT/card.txt" ;;
steps)
  timeout 300 python benchmarks/sketch_decode_scaling.py --T 8192 32768 131072 --bits 4 8 --group 64 --out "$OUT/step_g64.json" > "$OUT/step.log" 2>&1
  echo "step g64 rc=$?" >> "$OUT/card.txt" ;;
variants)
  timeout 200 python benchmarks/sketch_scan_variants.py > "$OUT/variants.log" 2>&1
  echo "variants rc=$?" >> "$OUT/card.txt" ;;
groups)
  for g in 32 16; do
    timeout 120 python benchmarks/sketch_decode_scaling.py --T 131072 --bits 4 --group $g --out "$OUT/step_int4_g$g.json" >> "$OUT/step.log" 2>&1
    echo "step int4 g$g rc=$?" >> "$OUT/card.txt"
  done ;;
esac
done
cat "$OUT/card.txt"
