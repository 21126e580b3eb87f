#!/usr/bin/env bash
# The fifth session's last device call, cut to ~150 s by two failed machine starts: the tensor-core int4
# scan against the dp2a scan (alone, then end to end at 128k with the decode's own peak memory), then
# test_paged_scan (the tensor-core scan's tests) with a compiled stress slice beside. Output: $OUT/*.
# Ran once, at 4ae63bf (results/gpu_session5_h100/final/). The tensor-core scan measured 2-6x slower than
# the dp2a scan and was removed afterwards: its two steps (scan_variants_gpu.py --mma, the '+mma' e2e
# variant) no longer run from later trees.
set -u
export PYTHONPATH=. PYTHONUNBUFFERED=1 TRITON_CACHE_DIR=/tmp/tc
FINAL=$OUT; OUT=/tmp/s5f; mkdir -p $OUT     # at most 8 files come back: one archive and the summary
T0=$(date +%s)
{ nvidia-smi --query-gpu=name --format=csv,noheader; git log -1 --format=%h; } > "$OUT/card.txt"
# the tensor-core int4 scan against the dp2a scan, alone (equality first, then CUDA-graph timings)
timeout 45 python3 benchmarks/scan_variants_gpu.py --mma --budget-s 25 --out "$OUT/scan_mma.json" > "$OUT/scan_mma.log" 2>&1
echo "scan mma rc=$? at $(( $(date +%s) - T0 )) s" >> "$OUT/card.txt"
timeout 50 python3 benchmarks/e2e_decode.py --out "$OUT/e2e" --configs llama-1b:131072:1 \
    --variants graph_sdpa_flash,ours_dense,ours_cert_int4_g16,ours_cert_int4_g16+mma > "$OUT/e2e.log" 2>&1
echo "e2e rc=$? at $(( $(date +%s) - T0 )) s" >> "$OUT/card.txt"
python3 tests/stress/long_gpu.py --tiers gpu-triton-fp32,gpu-triton-bf16,gpu-triton-fp16,cp-fused-fp32 \
    --workers 3 --seconds 45 --seed0 70000000 --json "$OUT/stress_final.json" > "$OUT/stress_final.txt" 2>&1 &
SP=$!
timeout 55 python3 -m pytest -q -p no:cacheprovider -p no:benchmark -rfEs tests/test_paged_scan.py \
    > "$OUT/tests_final.log" 2>&1
echo "tests rc=$? at $(( $(date +%s) - T0 )) s: $(tail -1 "$OUT/tests_final.log")" >> "$OUT/card.txt"
wait $SP; echo "stress rc=$? at $(( $(date +%s) - T0 )) s" >> "$OUT/card.txt"
rm -f "$OUT"/e2e/*.png "$OUT"/e2e/crossover.json
tar czf "$FINAL/s5f.tgz" -C /tmp s5f; cp "$OUT/card.txt" "$FINAL/"
cat "$OUT/card.txt"; tail -4 "$OUT/stress_final.txt"; grep -E "^1b|^mha" "$OUT/scan_mma.log" | cut -c1-150
grep -E "^llama" "$OUT/e2e.log" | cut -c1-160
