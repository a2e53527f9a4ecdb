#!/usr/bin/env bash
# Installs mtkd into the current Python environment.
# An already-installed torch is kept; otherwise torch==2.13.0 is installed explicitly
# (a loose 'torch' requirement would let pip pick a CUDA build of several GB).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if ! "$PY" -c "import torch" >/dev/null 2>&1; then
    "$PY" -m pip install -q "torch==${MTKD_TORCH_VERSION:-2.13.0}"
fi
"$PY" -m pip install -q -e ".[test]"
