#!/usr/bin/env bash
# Device calls of the eighth session, each against the previous tree in the same call (`.old_tree/`, the
# whole tree of b02069b, the last commit before the session's changes, staged by `git archive`; an ignored
# folder that the call carries; its own e2e_decode.py runs, which puts that tree first on the path), so
# the dense baseline is measured on the same card both times.
#   calls 1 and 5 ran (H100, RESULTS.md "Eighth session") on the block bounds, since reverted; call 1's
#   "old" run measured the new tree (it used the new script, whose path comes first)
#   bash benchmarks/session8_side.sh 6   the two-sided slack: its tests compiled, e2e 1B 128k batch 4 old then new
#   bash benchmarks/session8_side.sh 2   e2e 1B 128k batch 1 new then old, the profile of the new step
#   bash benchmarks/session8_side.sh 3   (an H200: ~82 GiB of cache) e2e 1B 128k batch 16 new then old
#   bash benchmarks/session8_side.sh 4   the certified step alone at the paper's shape (batch 16, MHA, D 128,
#                                        128k; int4 g16 and int8 g64), dense flash and cuDNN in the same process
# Each step under its own time limit; results in one tarball under $OUT (at most 8 files come back).
set -u
n=${1:?call}
. "$(dirname "$0")/device_steps.sh"
PYT="python3 -m pytest -q -p no:cacheprovider -p no:benchmark -rfEs"
E2E="python3 benchmarks/e2e_decode.py"
V4=ours_dense,ours_cert_int8_g64_2s,ours_cert_int4_g32_2s,ours_cert_int4_g16
case "$n" in
    1) steps t:130 n4:170 o4:140; tar xzf "$OUT/calls_1.tar.gz" -O ./side_t.log | tail -6
       for f in n4 o4; do tar xzf "$OUT/calls_1.tar.gz" -O ./side_$f.log | grep -E 'ms/token|ms_per|×|x ' | tail -8; done
       exit 0 ;;
    2) steps n1:170 o1:150 p:150; for f in n1 o1 p; do tar xzf "$OUT/calls_2.tar.gz" -O ./side_$f.log | tail -10; done
       exit 0 ;;
    6) steps t2:80 o4:55 n4:70; for f in t2 o4 n4; do tar xzf "$OUT/calls_6.tar.gz" -O ./side_$f.log | tail -9; done
       exit 0 ;;
    t2) $PYT tests/test_slack_bounds.py tests/test_gpu_sketch_fused.py tests/test_gpu_sketch_plan.py \
            tests/test_engine_gpu.py > "$OUT/tests2.log" 2>&1
        echo "tests rc=$?"; tail -4 "$OUT/tests2.log" ;;
    5) steps o4:120 n4:120 pn:100 po:100; for f in o4 n4 pn po; do tar xzf "$OUT/calls_5.tar.gz" -O ./side_$f.log | tail -14; done
       exit 0 ;;
    pn) $E2E --profile --out "$OUT/prof_new" --configs llama-1b:131072:4 --variants ours_cert_int8_g64_2s ;;
    po) PYTHONPATH="$PWD/.old_tree" python3 .old_tree/benchmarks/e2e_decode.py --profile --out "$OUT/prof_old" \
           --configs llama-1b:131072:4 --variants ours_cert_int8_g64_2s ;;
    3) steps n16:330 o16:200; for f in n16 o16; do tar xzf "$OUT/calls_3.tar.gz" -O ./side_$f.log | tail -10; done
       exit 0 ;;
    n16) $E2E --out "$OUT/e2e_new_b16" --configs llama-1b:131072:16 --time-budget 300 \
            --variants graph_sdpa_flash,ours_dense,ours_cert_int8_g64_2s,ours_cert_int4_g32_2s ;;
    o16) PYTHONPATH="$PWD/.old_tree" python3 .old_tree/benchmarks/e2e_decode.py --out "$OUT/e2e_old_b16" --configs llama-1b:131072:16 \
            --variants ours_dense,ours_cert_int8_g64_2s --time-budget 180 ;;
    4) steps k4:200 k8:200; for f in k4 k8; do tar xzf "$OUT/calls_4.tar.gz" -O ./side_$f.log | tail -4; done
       exit 0 ;;
    k4) python3 benchmarks/sketch_decode_scaling.py --T 131072 --bits 4 --group 16 --out "$OUT/step_int4_g16.json" ;;
    k8) python3 benchmarks/sketch_decode_scaling.py --T 131072 --bits 8 --group 64 --out "$OUT/step_int8_g64.json" ;;
    t) $PYT tests/test_slack_bounds.py tests/test_gpu_sketch_fused.py tests/test_gpu_sketch_paged.py \
           tests/test_gpu_sketch_plan.py tests/test_engine_gpu.py tests/test_gpu_sketch_select.py \
           tests/test_select_kernel.py > "$OUT/tests.log" 2>&1
       echo "tests rc=$?"; tail -4 "$OUT/tests.log" ;;
    n4) $E2E --out "$OUT/e2e_new_b4" --configs llama-1b:131072:4 --time-budget 65 \
            --variants graph_sdpa_flash,ours_dense,ours_cert_int8_g64_2s,ours_cert_int4_g32_2s ;;
    o4) PYTHONPATH="$PWD/.old_tree" python3 .old_tree/benchmarks/e2e_decode.py --out "$OUT/e2e_old_b4" --configs llama-1b:131072:4 \
           --variants ours_dense,ours_cert_int8_g64_2s,ours_cert_int4_g32_2s --time-budget 50 ;;
    n1) $E2E --out "$OUT/e2e_new_b1" --configs llama-1b:131072:1 --variants "$V4" --time-budget 140 ;;
    o1) PYTHONPATH="$PWD/.old_tree" python3 .old_tree/benchmarks/e2e_decode.py --out "$OUT/e2e_old_b1" --configs llama-1b:131072:1 \
           --variants ours_dense,ours_cert_int8_g64_2s,ours_cert_int4_g16 --time-budget 120 ;;
    p) $E2E --profile --out "$OUT/prof" --configs llama-1b:131072:1,llama-1b:131072:4 \
           --variants ours_cert_int8_g64_2s,ours_cert_int4_g16 ;;
esac
rm -f "$OUT"/e2e_*/*.png "$OUT"/e2e_*/crossover.json "$OUT"/prof*/*.png
