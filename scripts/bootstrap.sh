#!/usr/bin/env bash
# Run as: bash scripts/bootstrap.sh [--test]
# Creates .venv with Python 3.11 and installs the project with every extra.
# torch==2.13.0 (the CPU build) is installed first, before anything that depends on it,
# so no resolver ever pulls a multi-GB CUDA build.
# --test also installs the Debian tools some tests drive (dicom3tools' dciodvfy validates our
# DICOM objects, dcmtk writes DICOM "from other software", chromium renders the curator report and drives
# the review app, postgresql backs the review storage tests),
# when apt-get is available and we are root; elsewhere those tests say they were skipped and why.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "${1:-}" = "--test" ]; then
  if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = "0" ]; then
    need=""
    command -v dciodvfy >/dev/null 2>&1 || need="$need dicom3tools"
    command -v img2dcm >/dev/null 2>&1 || need="$need dcmtk"
    command -v chromium >/dev/null 2>&1 || need="$need chromium"
    # a throwaway PostgreSQL cluster for the review app's storage tests (tests/test_review_store.py)
    ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || need="$need postgresql"
    if [ -n "$need" ]; then
      apt-get update -qq >/dev/null
      DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $need >/dev/null
    fi
  else
    echo "bootstrap: not root or no apt-get; install dicom3tools and dcmtk yourself for the full test suite" >&2
  fi
fi
PY="${PYTHON:-python3.11}"
command -v "$PY" >/dev/null 2>&1 || PY=python3
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
export PIP_DISABLE_PIP_VERSION_CHECK=1
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q "torch==2.13.0"
.venv/bin/python -m pip install -q -e ".[vendor,pipeline,train,review,dev]"
echo "bootstrap: ok ($(.venv/bin/python --version))"
