#!/usr/bin/env bash
# What one GPU does at mBERT's size, against the cost model (orchestrator/cost.py), in under 8 minutes:
#   1. bench/throughput.py's comparison: the authors' configuration (fp32, padded, full MLM head) against
#      lnsub's train_round in bf16, per task: examples/s, achieved TFLOP/s, MFU, and the model's prediction;
#   2. one rehearsal cell end to end: lnsub rehearsal, then lnsub sweep of one XNLI cell (bf16, grouped
#      batches, 2 levels of 200 steps, a checkpoint every 50) on the GPU, its seconds per step and per level
#      beside the model's.
# Usage: bash bench/gpu_check.sh [--dry-run]      (from a checkout whose .venv has a CUDA build of torch)
# --dry-run runs every CPU-side piece (the grid, the model's predictions) and prints the GPU commands
# instead of running them. Without a CUDA device it says so in one line and exits 2.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PY="$ROOT/.venv/bin/python"
LNSUB="$ROOT/.venv/bin/lnsub"
DRY_RUN=0
case "${1:-}" in
  --dry-run) DRY_RUN=1 ;;
  "") ;;
  *) echo "gpu_check: unknown argument '$1' (usage: bash bench/gpu_check.sh [--dry-run])" >&2; exit 2 ;;
esac

if [[ ! -x "$PY" || ! -x "$LNSUB" ]]; then
  echo "gpu_check: no lnsub in $ROOT/.venv: run bash scripts/install.sh first" >&2
  exit 2
fi
CUDA="$("$PY" -c 'import torch; print(torch.cuda.get_device_name() if torch.cuda.is_available() else "")')"
if [[ -z "$CUDA" && "$DRY_RUN" == 0 ]]; then
  echo "gpu_check: no CUDA device visible to torch $("$PY" -c 'import torch; print(torch.__version__)'): nothing to measure" >&2
  exit 2
fi

WORK="$(mktemp -d "${TMPDIR:-/tmp}/lnsub-gpu-check.XXXXXX")"
trap 'rm -rf "$WORK"' EXIT
export LNSUB_CACHE="${LNSUB_CACHE:-$WORK/cache}" HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1
START=$SECONDS

stage() {  # stage NAME SECONDS COMMAND...: run it under a time limit (or print it, dry), say how long it took
  local name="$1" limit="$2"
  shift 2
  echo "== $name (at most ${limit} s)"
  if [[ "$DRY_RUN" == 1 ]]; then
    echo "   would run: $*"
    return 0
  fi
  local t0=$SECONDS
  if ! timeout --signal=INT --kill-after=15 "$limit" "$@"; then
    echo "gpu_check: stage '$name' failed or ran past ${limit} s" >&2
    exit 1
  fi
  echo "   $name: $((SECONDS - t0)) s"
}

echo "gpu_check: ${CUDA:-no GPU (dry run)}; work folder $WORK"
cd "$WORK"
"$PY" "$ROOT/bench/gpu_check.py" grid "$WORK" >/dev/null
"$LNSUB" plan --grid full --device h100 | tail -n 12
stage "throughput: the authors' fp32 against lnsub's bf16" 180 "$PY" "$ROOT/bench/gpu_check.py" throughput
stage "lnsub rehearsal (build the model and the copies)" 60 "$LNSUB" rehearsal
# checkpoints every 50 of a level's 200 steps: their copies off the GPU and their writes behind training, measured
CHECKPOINT_EVERY=50
stage "lnsub sweep of one XNLI cell on the GPU" 150 "$LNSUB" sweep --grid "$WORK/cell.yaml" --storage "$WORK/runs" \
  --checkpoint-every "$CHECKPOINT_EVERY"
stage "the cell against the cost model" 20 "$PY" "$ROOT/bench/gpu_check.py" cell "$WORK/runs" --grid "$WORK/cell.yaml" \
  --checkpoint-every "$CHECKPOINT_EVERY"
echo "gpu_check: done in $((SECONDS - START)) s"
