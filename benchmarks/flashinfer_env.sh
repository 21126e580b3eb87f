# Source on the device machine (bash): makes the FlashInfer staged by scripts/stage_flashinfer_for_device.sh
# importable, from .devcarry_fi (carried with the call) or from /tmp/fisite (unpacked by an earlier call
# while the machine stayed warm). FlashInfer's JIT builds into /tmp/fiws (kept while warm) with the image's
# nvcc. Without either, nothing is set and e2e_decode.py's graph_flashinfer rows say "not importable".
if [ ! -d /tmp/fisite/flashinfer ] && [ -f .devcarry_fi/fi_site.tgz ]; then
    mkdir -p /tmp/fisite
    tar xzf .devcarry_fi/fi_site.tgz -C /tmp/fisite
    python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/fisite .devcarry_fi/apache_tvm_ffi-*.whl \
        || python3 -m zipfile -e .devcarry_fi/apache_tvm_ffi-*.whl /tmp/fisite
    mkdir -p /tmp/fisite_fb && tar xzf .devcarry_fi/fallback.tgz -C /tmp/fisite_fb
fi
if [ -d /tmp/fisite/flashinfer ]; then
    # the fallback folder last: the image's own requests (if any) wins
    export PYTHONPATH="/tmp/fisite${PYTHONPATH:+:$PYTHONPATH}:/tmp/fisite_fb" FLASHINFER_WORKSPACE_BASE=/tmp/fiws
    export MAX_JOBS=${MAX_JOBS:-16}
    if [ -z "${CUDA_HOME:-}" ] && command -v nvcc >/dev/null; then
        CUDA_HOME=$(dirname "$(dirname "$(readlink -f "$(command -v nvcc)")")"); export CUDA_HOME
    fi
fi
