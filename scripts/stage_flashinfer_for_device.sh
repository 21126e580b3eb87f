#!/usr/bin/env bash
# Stage FlashInfer for the device machine (issue 14's dense baseline "FlashInfer's decode, if its wheel
# can be carried and JIT-built on the device"). The device has nvcc and ninja but no network; FlashInfer
# 0.7.4 is a JIT-only wheel of 101 MB (its CUDA sources for every kernel family), above the 64 MiB carry.
# Its batch decode needs only the Python package, the headers (include, cccl, spdlog, cutlass/include)
# and the top-level csrc files (batch_decode*.cu and the jinja templates), plus apache-tvm-ffi (its
# bindings; a CPython 3.12 build, the device's python3), einops, tabulate and nvidia-ml-py at import.
# This script downloads those pinned wheels here and packs that subset into one folder of ~38 MB:
#   .devcarry_fi/fi_site.tgz        flashinfer (trimmed), einops, tabulate, pynvml
#   .devcarry_fi/apache_tvm_ffi-*.whl   cp312 manylinux
#   .devcarry_fi/fallback.tgz       requests and its dependencies, used only where the device lacks them
# git-ignored through .git/info/exclude (local). On the machine, benchmarks/flashinfer_env.sh unpacks
# them into /tmp/fisite and builds nothing until the first decode plan (FlashInfer's JIT, into /tmp).
#
# Usage (repo root; needs pip's index):  bash scripts/stage_flashinfer_for_device.sh
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
FI=flashinfer-python==0.7.4
TVM="apache-tvm-ffi==0.1.15.post2"
W=$(mktemp -d)
trap 'rm -rf "$W"' EXIT

EXCL=$(git rev-parse --git-path info/exclude)
grep -qxF /.devcarry_fi/ "$EXCL" 2>/dev/null || echo /.devcarry_fi/ >> "$EXCL"

"$PY" -m pip download -q --no-deps -d "$W/whl" "$FI" einops==0.8.2 tabulate==0.10.0 nvidia-ml-py==13.615.71
"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
    --platform manylinux_2_28_x86_64 -d "$W/tvm" "$TVM"
# what FlashInfer imports besides those and that the device's torch/transformers may not bring (requests
# and its dependencies): unpacked into a folder put *last* on the device's path, a fallback only
"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --platform any -d "$W/fb" \
    requests==2.32.5 urllib3==2.5.0 idna==3.10 certifi==2025.8.3 charset-normalizer==3.4.3
mkdir -p "$W/site" "$W/fbsite"
for w in "$W"/whl/*.whl; do "$PY" -m zipfile -e "$w" "$W/site"; done
for w in "$W"/fb/*.whl; do "$PY" -m zipfile -e "$w" "$W/fbsite"; done
tar czf "$W/fallback.tgz" -C "$W/fbsite" .
( cd "$W/site"
  { find flashinfer -name '*.py' -not -path 'flashinfer/data/*'
    find flashinfer/data/include flashinfer/data/cccl flashinfer/data/spdlog flashinfer/data/cutlass/include -type f
    find flashinfer/data/csrc -maxdepth 1 -type f
    find einops tabulate -type f -not -path '*__pycache__*'
    echo pynvml.py
    find . -maxdepth 1 -name '*.dist-info' | sed 's|^\./||'; } > "$W/list"
  tar czf "$W/fi_site.tgz" -T "$W/list" )
rm -rf .devcarry_fi && mkdir -p .devcarry_fi
mv "$W/fi_site.tgz" "$W/fallback.tgz" "$W"/tvm/*.whl .devcarry_fi/
du -ch .devcarry_fi/* | tail -1
ls -l .devcarry_fi
