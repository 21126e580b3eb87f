#!/usr/bin/env bash
# Side work of the ninth device session's staging calls: ten consecutive calls carry the 32k model's
# parts (issue 16), each also measuring one step of issue 14's owed list (the two-sided slack path, new
# in the eighth session and never run on a card), then one call runs the 32k quality pass.
#   STAGE_CMD="bash benchmarks/session9_side.sh N" STAGE_SECONDS=S bash benchmarks/gpu_staged_session.sh stage N
# The steps themselves live in session8_side.sh (one home); this file only orders them by call:
#   1 t2  the slack path's compiled tests (80 s)          6 s   compiled soundness stress of the slack path (60 s)
#   2 o4  e2e 1B 128k batch 4, old tree (55 s; .old_tree)  7 pn  profile of the new step, batch 4 (90 s)
#   3 n4  e2e 1B 128k batch 4, new tree + SDPA flash (70 s) 8 n1  e2e 1B 128k batch 1, new (140 s)
#   4 k4  certified step alone, paper shape, int4 g16 (120 s) 9-10 only stage their part
#   5 k8  the same, int8 g64 (120 s)
# Or, without staging (two calls of their own): A = t2 o4 n4 s, B = k4 k8 pn, each step under its own limit,
# results in one tarball ($OUT/calls_A.tar.gz) as session8_side.sh's calls do:
#   bash benchmarks/session9_side.sh A      (carry .old_tree)
set -u
n=${1:?call number}
. "$(dirname "$0")/device_steps.sh"
S8="bash $(dirname "$0")/session8_side.sh"
case "$n" in
    A) steps t2:80 o4:55 n4:70 s:60; for f in t2 o4 n4 s; do tar xzf "$OUT/calls_A.tar.gz" -O ./side_$f.log | tail -9; done ;;
    B) steps k4:120 k8:120 pn:90; for f in k4 k8 pn; do tar xzf "$OUT/calls_B.tar.gz" -O ./side_$f.log | tail -12; done ;;
    t2|o4|n4|k4|k8|pn|n1) $S8 "$n" ;;
    s) python3 tests/stress/long_gpu.py --tiers gpu-plan2s-fp32 --workers 3 --seconds "${STRESS_SECONDS:-50}" \
           --seed0 90000000 --json "$OUT/stress_plan2s.json" ;;
    1) $S8 t2 ;;
    2) $S8 o4 ;;
    3) $S8 n4 ;;
    4) $S8 k4 ;;
    5) $S8 k8 ;;
    6) bash "$0" s ;;
    7) $S8 pn ;;
    8) $S8 n1 ;;
    *) true ;;
esac
