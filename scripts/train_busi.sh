#!/usr/bin/env bash
# Reproduce the shipped model: both training stages, then export to saved_model/.
# Safe to re-run: every stage resumes from its latest checkpoint, a finished
# stage returns at once. Logs: runs/stage1_384.log, runs/stage2_640.log.
#   DATA=../shared/busi/Dataset_BUSI_with_GT scripts/train_busi.sh
set -euo pipefail
cd "$(dirname "$0")/.."
DATA=${DATA:-../shared/busi/Dataset_BUSI_with_GT}
PY=${PY:-.venv/bin/python}

# Stage 1 is only needed to start stage 2: once stage 2 has a checkpoint of its
# own (committed when a session ends mid-run), its weights are not used again.
if [ ! -f runs/stage2_640/checkpoint ]; then
  $PY tools/train.py --data "$DATA" --config configs/stage1_384.yaml --model-dir runs/stage1_384 >> runs/stage1_384.log 2>&1
fi
$PY tools/train.py --data "$DATA" --config configs/stage2_640.yaml --model-dir runs/stage2_640 \
    --init runs/stage1_384 >> runs/stage2_640.log 2>&1
