#!/usr/bin/env bash
# Install lnsub into ./.venv. torch==2.13.0 goes first: it is the CPU wheel on our
# machines, and with it present pip never pulls several GB of CUDA packages.
# Usage: bash scripts/install.sh [--test]      (--test adds the test dependencies)
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3.11}
command -v "$PYTHON" >/dev/null || PYTHON=python3
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
if ! .venv/bin/python -c "import torch" 2>/dev/null; then
    # On a GPU machine, install the CUDA build of torch 2.13 yourself before running this.
    .venv/bin/python -m pip install -q "torch==2.13.0"
fi
extra=""
[ "${1:-}" = "--test" ] && extra="[test]"
.venv/bin/python -m pip install -q -e ".${extra}"
echo "lnsub installed in .venv ($(.venv/bin/python -c 'import torch; print("torch", torch.__version__)'))"
