#!/usr/bin/env bash
# Side work of the fourth device session's staging calls (benchmarks/gpu_staged_session.sh stage N with
# STAGE_CMD="bash benchmarks/session4_side.sh N"): while the 32k model's parts travel, each call also
# measures one thing in ~30-50 s. Output under $OUT (<= 8 files per call come back).
set -u
n=${1:?call number}
E2E="python3 benchmarks/e2e_decode.py"
V=graph_sdpa_flash,ours_dense,ours_cert_int4_g16,ours_cert_int8_g64,ours_paged
case "$n" in
    1) $E2E --out "$OUT/e2e_$n" --configs llama-1b:8192:1 --variants $V ;;
    2) $E2E --out "$OUT/e2e_$n" --configs llama-1b:131072:1 --variants $V ;;
    3) $E2E --profile --out "$OUT/prof" --configs llama-1b:8192:1,llama-1b:131072:1 --variants ours_cert_int4_g16 ;;
    4) # the DenseFallback probe: every head flagged (random weights), cold and warm runs, phases, profile
       python3 benchmarks/engine_decoder_gpu.py --contexts 8192 --hf-max 0 --feed 6 --new 3 \
           --modes cert-int8-1/16-report cert-int8-1/16-fallback --profile "$OUT/df" --out "$OUT/probe.json" ;;
    5) $E2E --out "$OUT/e2e_$n" --configs llama-1b:131072:4 --variants $V ;;
    6) [ -f benchmarks/select_gpu.py ] && python3 benchmarks/select_gpu.py --out "$OUT/select.json" ;;
    7) $E2E --out "$OUT/e2e_$n" --configs llama-1b:8192:4,llama-1b:8192:16 --variants graph_sdpa_flash,graph_sdpa_cudnn,ours_dense ;;
    8) $E2E --out "$OUT/e2e_$n" --configs llama-8b:8192:1,llama-8b:8192:4 --variants graph_sdpa_flash,graph_sdpa_cudnn,ours_dense ;;
    9) $E2E --out "$OUT/e2e_$n" --configs llama-8b:131072:1 --variants $V ;;
    *) true ;;
esac
rm -f "$OUT"/e2e_*/*.png "$OUT"/e2e_*/crossover.json
