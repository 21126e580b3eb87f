#!/usr/bin/env bash
# Device calls of the tenth session: the calls that carry the 32k model's parts
# (`benchmarks/longctx_quality.sh stage N`) also run the steps that the ninth session left owed.
#   bash benchmarks/longctx_quality.sh stage 1 && bash benchmarks/session10_side.sh 1
#   (the texts and the wheel now travel with part 10: see longctx_quality.sh)
#     c   the CUDA tests of the new code: the quality suite's captured batch (run_batch; `run` is now a batch
#         of one), the sketch-check kernel, the fused step and the engine (100 s)
#   ... stage 2 && session10_side.sh 2
#     k8, k4  the certified step alone at the paper's shape (batch 16, MHA, D 128, 128k), a real sketch and
#             the sketch-check kernel, dense flash and cuDNN in the same process (120 s each)
#   ... stage 3 && session10_side.sh 3
#     n4c     e2e 1B 128k batch 4 with cuDNN and SDPA flash in the same graph treatment (100 s)
#     a8      8k, where auto mode decodes densely on our cache: ours dense against SDPA flash and cuDNN,
#             1B batch 1/4/16 and 8B batch 1/4 (the "never below 0.97x" target's unmeasured shapes; 90 s)
#   on an H200 (the shapes an H100 cannot hold at 128k): bash benchmarks/session10_side.sh 4
#     n16c    e2e 1B 128k batch 16, cuDNN and flash beside ours (300 s)
#     e8      e2e 8B 128k batch 4 and 1, the same variants (280 s)
#     (4a and 4b: n16c and e8 alone, so that each fits beside a staging call's copy)
#   if device time is left: bash benchmarks/session10_side.sh 5
#     eb  the engine decoder's batch probe, 0.5B shape, 32k, batch 4 and 8 (200 s)
#     pn  the per-part profile of the 1B step, 128k, batch 4, int8 g64 two-sided (90 s)
#   the compiled layers (fifteenth session; the sixteenth timed only batch 1, flash and int8, and ran the tests): cmp
#     cmp     e2e 1B at 128k, batch 1 and 4, SDPA flash / ours dense / certified int8 g64 2s / int4 g16, without
#             and then with --compile (both on the same warm card), then the engine's CUDA tests of compile (300 s)
#   FlashInfer's decode as a dense baseline (seventeenth session; staged, never run on a card yet): carry
#   .devcarry_fi (bash scripts/stage_flashinfer_for_device.sh, ~34 MB) and run: bash benchmarks/session10_side.sh F
#     fi      e2e 1B at 128k, batch 1 and 4: graph_flashinfer (its first plan JIT-builds the decode module with
#             the image's nvcc, into /tmp/fiws) beside SDPA flash, SDPA cuDNN, ours dense and certified int8 g64 /
#             int4 g16 two-sided, the same graph treatment (540 s)
#   the tensor-core int8 scan prototype (seventeenth session; compiles for sm_90 with wgmma, exact under the
#   interpreter, never timed): bash benchmarks/session10_side.sh M
#     mm      benchmarks/scan_mma_prototype.py at the 1B shape (batch 1 and 4) and the paper's MHA shape, beside the
#             engine's two-sided int8 scan on the same store: does an integer-MMA scan reach copy bandwidth? (90 s)
#   after the ten parts: bash benchmarks/session10_side.sh q   (repeat; it resumes)
#     the 32k quality pass at 50 items per task, batch 8, seeded from the newest session's records
#     (LONGCTX_MODES="..." picks the modes; keep LONGCTX_MARGIN_S >= one batch of all its modes + 20 s, or the
#     hard stop cuts the last batch: ~45 s for three modes at 32k)
#     (the sixteenth session completed 32k for its three modes: all six tasks at 50 items, 508 + 546 s;
#     LONGCTX_CONTEXTS="16384 8192" bash benchmarks/session10_side.sh q: the same modes at shorter contexts,
#     into the same results; LONGCTX_TASKS and LONGCTX_ITEMS override the needle tasks + ppl and the 50 items)
# Each step under its own limit; results in one tarball, $OUT/calls_N.tar.gz (device_steps.sh).
set -u
n=${1:?call}
. "$(dirname "$0")/device_steps.sh"
S8="bash $(dirname "$0")/session8_side.sh"
V=graph_sdpa_flash,graph_sdpa_cudnn,ours_dense,ours_cert_int8_g64_2s,ours_cert_int4_g32_2s
PYT="python3 -m pytest -q -p no:cacheprovider -p no:benchmark -rfEs"
case "$n" in
    1) steps c:100; tar xzf "$OUT/calls_1.tar.gz" -O ./side_c.log | tail -14 ;;
    2) steps k8:120 k4:120; for f in k8 k4; do tar xzf "$OUT/calls_2.tar.gz" -O ./side_$f.log | tail -12; done ;;
    3) steps n4c:100 a8:90; for f in n4c a8; do tar xzf "$OUT/calls_3.tar.gz" -O ./side_$f.log | tail -14; done ;;
    a8) python3 benchmarks/e2e_decode.py --out "$OUT/e2e_8k_auto" --time-budget 85 --variants graph_sdpa_flash,graph_sdpa_cudnn,ours_dense \
            --configs llama-1b:8192:1,llama-1b:8192:4,llama-1b:8192:16,llama-8b:8192:1,llama-8b:8192:4 ;;
    M) steps mm:120; tar xzf "$OUT/calls_M.tar.gz" -O ./side_mm.log | tail -8 ;;
    mm) python3 benchmarks/scan_mma_prototype.py --out "$OUT/scan_mma.json" ;;
    F) steps fi:540; tar xzf "$OUT/calls_F.tar.gz" -O ./side_fi.log | grep -v "^\s*$" | tail -24 ;;
    fi) . benchmarks/flashinfer_env.sh
        { echo "CUDA_HOME=${CUDA_HOME:-unset}"; nvcc --version | tail -1; python3 -V; } 2>&1
        python3 -c "import flashinfer; print('flashinfer', flashinfer.__version__)" 2>&1 | tail -1
        python3 benchmarks/e2e_decode.py --out "$OUT/e2e_fi" --configs llama-1b:131072:1,llama-1b:131072:4 --time-budget 420 \
            --variants graph_flashinfer,graph_sdpa_flash,graph_sdpa_cudnn,ours_dense,ours_cert_int8_g64_2s,ours_cert_int4_g16_2s ;;
    5) steps eb:200 pn:90; for f in eb pn; do tar xzf "$OUT/calls_5.tar.gz" -O ./side_$f.log | tail -14; done ;;
    4) steps n16c:300 e8:280; for f in n16c e8; do tar xzf "$OUT/calls_4.tar.gz" -O ./side_$f.log | tail -14; done ;;
    4a|4b) f=n16c; s=300; [ "$n" = 4b ] && f=e8 s=280   # call 4 in two halves, each beside a staging call
        steps $f:$s; tar xzf "$OUT/calls_$n.tar.gz" -O ./side_$f.log | tail -14 ;;
    c) $PYT tests/test_longctx_quality.py::test_a_captured_batch_decodes_each_item_as_alone_on_cuda tests/test_sketch_check_kernel.py \
           tests/test_fused_engine_step.py tests/test_engine_gpu.py > "$OUT/tests.log" 2>&1
       echo "tests rc=$?"; tail -6 "$OUT/tests.log" ;;
    eb) python3 benchmarks/engine_decoder_gpu.py --contexts 32768 --batch 4 8 --hf-max 0 --out "$OUT/engine_decoder_batch.json" ;;
    k4|k8|pn) $S8 "$n" ;;
    n4c) python3 benchmarks/e2e_decode.py --out "$OUT/e2e_b4_cudnn" --configs llama-1b:131072:4 --time-budget 90 \
            --variants "$V" ;;
    cmp) for c in "" --compile; do
             python3 benchmarks/e2e_decode.py --out "$OUT/e2e_compile${c:+_on}" --configs llama-1b:131072:1,llama-1b:131072:4 \
                 --time-budget 120 --variants graph_sdpa_flash,ours_dense,ours_cert_int8_g64_2s,ours_cert_int4_g16 $c
         done
         $PYT tests/test_engine_gpu.py -k compiled > "$OUT/tests_compile.log" 2>&1; echo "tests rc=$?"; tail -4 "$OUT/tests_compile.log" ;;
    n16c) python3 benchmarks/e2e_decode.py --out "$OUT/e2e_b16_cudnn" --configs llama-1b:131072:16 --time-budget 290 \
            --variants "$V" ;;
    e8) python3 benchmarks/e2e_decode.py --out "$OUT/e2e_8b" --configs llama-8b:131072:4,llama-8b:131072:1 --time-budget 270 \
            --variants "$V" ;;
    q) # seeded (on a fresh machine) with the newest pass's records: the twelfth session's merged folder (its
       # 4k and 8k pass of three modes, all six tasks; the eleventh's 32k records: its three modes at 49 items
       # and the tenth's other four at 15); the twelfth's pass ran LONGCTX_CONTEXTS="4096 8192 16384"
       # LONGCTX_TASKS="niah_single niah_multikey niah_multivalue niah_multiquery vt cwe ppl" with the three modes
       # (two calls, 480 s / margin 60 and 505 s / margin 90); the eleventh's own pass ran
       # LONGCTX_SEED=benchmarks/results/gpu_session10_h100/quality32k/out LONGCTX_BUDGET_S=570 LONGCTX_MARGIN_S=60
       # LONGCTX_MODES="dense cert-int8-1/16-fallback@1 cert-int4-1/16-fallback@1" (three calls, the last at 445/30)
       export LONGCTX_SEED=${LONGCTX_SEED:-benchmarks/results/gpu_session16_h100/quality/merged} LONGCTX_BATCH=${LONGCTX_BATCH:-8} \
              LONGCTX_TASKS="${LONGCTX_TASKS:-niah_single niah_multikey niah_multivalue niah_multiquery ppl}" LONGCTX_CONTEXTS="${LONGCTX_CONTEXTS:-32768}" \
              LONGCTX_ITEMS=${LONGCTX_ITEMS:-50} LONGCTX_PPL_TEXTS="stdlib-code devil paradise-lost" \
              LONGCTX_MODES="${LONGCTX_MODES:-dense cert-int8-1/16-fallback@1 cert-int4-1/16-fallback@1 cert-int4-1/16-report cert-int4-1/32-report paged-1/16 window-1/16}" \
              LONGCTX_BUDGET_S=${LONGCTX_BUDGET_S:-560} LONGCTX_MARGIN_S=${LONGCTX_MARGIN_S:-120}
       bash benchmarks/longctx_quality.sh run ;;
    *) true ;;
esac
