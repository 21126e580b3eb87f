#!/usr/bin/env bash
# One batched device call for the certified-mode scan (issue 8): GPU sketch tests, the scan variants,
# and the step benchmark at 128k for int4 (groups 64/32/16) and int8 (group 64). Writes to $OUT.
set -u
export PYTHONPATH=.
OUT=${OUT:-/tmp/vashista_gpu_out}
mkdir -p "$OUT"
{ nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv
  python -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)"; } > "$OUT/card.txt" 2>&1
timeout 150 python -m pytest -q -p no:cacheprovider tests/test_gpu_sketch.py tests/test_gpu_sketch_fused.py \
  tests/test_gpu_sketch_select.py tests/test_gpu_sketch_paged.py ${EXTRA_TESTS:-} > "$OUT/gpu_tests.log" 2>&1
echo "tests rc=$?" >> "$OUT/card.txt"; tail -2 "$OUT/gpu_tests.log" >> "$OUT/card.txt"
[ -n "${SKIP_VARIANTS:-}" ] || { timeout 200 python benchmarks/sketch_scan_variants.py > "$OUT/variants.log" 2>&1; echo "variants rc=$?" >> "$OUT/card.txt"; }
for g in ${GROUPS_INT4:-64 32 16}; do
  timeout 150 python benchmarks/sketch_decode_scaling.py --T 131072 --bits 4 --group $g --out "$OUT/step_int4_g$g.json" > "$OUT/step.log" 2>&1
  echo "step int4 g$g rc=$?" >> "$OUT/card.txt"
done
timeout 150 python benchmarks/sketch_decode_scaling.py --T 131072 --bits 8 --group 64 --out "$OUT/step_int8_g64.json" >> "$OUT/step.log" 2>&1
echo "step int8 g64 rc=$?" >> "$OUT/card.txt"
cat "$OUT/card.txt"
