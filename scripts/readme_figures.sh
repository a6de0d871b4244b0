#!/usr/bin/env bash
# Regenerate every figure the README states about the smoke study and the shipped tiny BERT, from a run it
# names: the smoke study into STORAGE (default ./readme-runs; a rerun resumes, nothing redone), then the
# numbers read from its analysis files, then the shipped model's retrieval over the smoke twins' pairs.
# Usage: bash scripts/readme_figures.sh [STORAGE]
set -euo pipefail
cd "$(dirname "$0")/.."
STORAGE=${1:-./readme-runs}
.venv/bin/lnsub study --grid smoke --storage "$STORAGE"
.venv/bin/python bench/readme_figures.py --storage "$STORAGE" --name smoke
.venv/bin/python bench/multilinguality.py --set steps=6000 --languages syn-en,syn-ur,syn-ar | grep -v "^20"
