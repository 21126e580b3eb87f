#!/usr/bin/env bash
# The fourth session's second device call: the per-(row, head) append and the one-launch selection
# checked on the card (their tests, compiled), then timed end to end and profiled. Output: $OUT/s4b.tgz.
export PYTHONPATH=. PYTHONUNBUFFERED=1 TRITON_CACHE_DIR=/tmp/tc
FINAL=$OUT; O=/tmp/s4b; mkdir -p $O; T0=$(date +%s)
{ nvidia-smi --query-gpu=name --format=csv,noheader; git log -1 --format=%h; } > $O/card.txt
lap() { echo "$1 rc=$2 at $(( $(date +%s) - T0 )) s" >> $O/card.txt; }
T=$(ls tests/test_append_kernel.py tests/test_select_kernel.py tests/test_gpu_sketch_select.py tests/test_row_bounds.py \
    tests/test_fused_engine_step.py tests/test_engine_gpu.py 2>/dev/null)
timeout 150 python3 -m pytest -q -p no:cacheprovider -p no:benchmark $T > $O/tests.log 2>&1; lap tests $?
tail -3 $O/tests.log >> $O/card.txt
V=graph_sdpa_flash,ours_dense,ours_cert_int4_g16,ours_cert_int8_g64,ours_cert_int4_g16+df
timeout 150 python3 benchmarks/e2e_decode.py --out $O/e2e --configs llama-1b:8192:1,llama-1b:131072:1,llama-1b:131072:4 \
    --variants $V > $O/e2e.log 2>&1; lap e2e $?
timeout 50 python3 benchmarks/e2e_decode.py --profile --out $O/prof --configs llama-1b:8192:1,llama-1b:131072:1 \
    --variants ours_cert_int4_g16 >> $O/e2e.log 2>&1; lap profile $?
[ -f benchmarks/select_gpu.py ] && { timeout 60 python3 benchmarks/select_gpu.py --out $O/select.json > $O/select.log 2>&1; lap select $?; }
rm -f $O/e2e/*.png $O/e2e/crossover.json
tar czf "$FINAL/s4b.tgz" -C /tmp s4b; cp $O/card.txt "$FINAL/"; cat $O/card.txt
