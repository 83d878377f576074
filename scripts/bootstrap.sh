#!/usr/bin/env bash
# Run as: bash scripts/bootstrap.sh
# Creates .venv with Python 3.11 and installs the project with every extra.
# torch==2.13.0 (the CPU build) is installed first, before anything that depends on it,
# so no resolver ever pulls a multi-GB CUDA build.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3.11}"
command -v "$PY" >/dev/null 2>&1 || PY=python3
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
export PIP_DISABLE_PIP_VERSION_CHECK=1
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q "torch==2.13.0"
.venv/bin/python -m pip install -q -e ".[vendor,pipeline,train,dev]"
echo "bootstrap: ok ($(.venv/bin/python --version))"
