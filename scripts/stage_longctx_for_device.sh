#!/usr/bin/env bash
# Stage what benchmarks/longctx_quality.sh needs on a device machine that has no network, no gguf
# package and no copy of the 32k model, under an upload limit of 64 MiB per call (as
# scripts/stage_model_for_device.sh does for SmolLM2):
#   .devcarry_q01 ... .devcarry_q10   the joined Qwen2.5-Coder-0.5B GGUF (491,400,064 B) in ten parts of
#                                     <= 50,000,000 B, one folder per call (each < 55 MB)
#   .devcarry_texts/                  the optional texts (scripts/fetch_longctx_texts.sh; ~6 MB), carried
#                                     with the last (smallest) part, as is the wheel
#   .whl/gguf-*.whl                   the gguf wheel of the version installed here (pure python)
# The folders are git-ignored through .git/info/exclude (local). The model must be installed here first
# (bash scripts/install_longctx_model.sh), the texts fetched (bash scripts/fetch_longctx_texts.sh).
#
# Usage (repo root):  bash scripts/stage_longctx_for_device.sh
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
MDIR=${VASHISTA_MODEL_DIR:-$HOME/.cache/vashista/models}
TDIR=${VASHISTA_TEXT_DIR:-$HOME/.cache/vashista/texts}
NAME=qwen2.5-coder-0.5b-instruct-q4_k_m.gguf
SHA=$(sed -n 's/^QWEN_SHA256 = "\(.*\)"$/\1/p' vashista_app/quality/longctx_model.py)
GGUF="$MDIR/$NAME"
[ -f "$GGUF" ] || { echo "stage: $GGUF missing: run scripts/install_longctx_model.sh first" >&2; exit 1; }

EXCL=$(git rev-parse --git-path info/exclude)
mkdir -p "$(dirname "$EXCL")"
touch "$EXCL"
for p in /.devcarry_q*/ /.devcarry_texts/ /.whl/; do
    grep -qxF "$p" "$EXCL" || echo "$p" >> "$EXCL"
done

rm -rf .devcarry_q[0-9]* .devcarry_texts
PART=50000000
size=$(stat -c %s "$GGUF")
n=$(( (size + PART - 1) / PART ))
for i in $(seq 1 "$n"); do
    d=$(printf '.devcarry_q%02d' "$i")
    mkdir -p "$d"
    dd if="$GGUF" of="$d/part" bs=1000000 skip=$(( (i - 1) * PART / 1000000 )) count=$(( PART / 1000000 )) status=none
done
echo "$n" > .devcarry_q01/count
echo "$SHA" > .devcarry_q01/sha256
got=$(cat .devcarry_q[0-9]*/part | sha256sum | cut -d' ' -f1)
[ "$got" = "$SHA" ] || { echo "stage: the parts do not join to the pinned sha256" >&2; exit 1; }

mkdir -p .devcarry_texts
if [ -f "$TDIR/sources.json" ]; then cp "$TDIR"/*.txt "$TDIR/sources.json" .devcarry_texts/; fi

GGUF_VERSION=$("$PY" -m pip show gguf | sed -n 's/^Version: //p')
[ -n "$GGUF_VERSION" ] || { echo "stage: gguf is not installed here" >&2; exit 1; }
mkdir -p .whl && rm -f .whl/gguf-*.whl
"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    -d .whl "gguf==$GGUF_VERSION"
for d in .devcarry_q[0-9]* .devcarry_texts .whl; do
    b=$(du -sb "$d" | cut -f1)
    [ "$b" -lt $((55 * 1000 * 1000)) ] || { echo "stage: $d is $b bytes (>= 55 MB)" >&2; exit 1; }
done
du -sb .devcarry_q[0-9]* .devcarry_texts .whl
echo "staged $NAME ($size B, sha256 $SHA) in $n parts, $(ls .devcarry_texts | wc -l) text files, gguf $GGUF_VERSION"
