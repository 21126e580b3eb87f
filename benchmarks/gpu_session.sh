#!/usr/bin/env bash
# One batched device call: the decode benchmark on the card in hand, the paper-shape repro, the
# certified-mode benchmark and the GPU differential tests; everything the run writes goes to $OUT.
set -u
export PYTHONPATH=.
OUT=${OUT:-/tmp/vashista_gpu_out}
mkdir -p "$OUT"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > "$OUT/card.txt" 2>&1
python -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)" >> "$OUT/card.txt" 2>&1
timeout 200 python benchmarks/decode_scaling.py --out "$OUT/decode_scaling.json" > "$OUT/decode_scaling.log" 2>&1; echo "decode_scaling rc=$?" >> "$OUT/card.txt"
timeout 180 python -m vashista_app.repro --out /tmp/repro --no-progress > "$OUT/repro.log" 2>&1; echo "repro rc=$?" >> "$OUT/card.txt"
cp /tmp/repro/vashista_repro.zip "$OUT/" 2>/dev/null
timeout 80 python benchmarks/sketch_decode_scaling.py --out "$OUT/sketch_decode_scaling.json" > "$OUT/sketch.log" 2>&1; echo "sketch rc=$?" >> "$OUT/card.txt"
timeout 100 python -m pytest -q -p no:cacheprovider tests/test_gpu_kernels.py tests/test_gpu_decode.py tests/test_gpu_large.py tests/test_gpu_sketch.py tests/test_gpu_sketch_fused.py > "$OUT/gpu_tests.log" 2>&1; echo "tests rc=$?" >> "$OUT/card.txt"
tail -3 "$OUT/gpu_tests.log" >> "$OUT/card.txt"
cat "$OUT/card.txt"
