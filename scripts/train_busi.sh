#!/usr/bin/env bash
# Reproduce the shipped model: the three training stages, then export to saved_model/.
# Safe to re-run: every stage resumes from its latest checkpoint, a finished
# stage returns after one evaluation. Logs: runs/stage*.log.
#   DATA=../shared/busi/Dataset_BUSI_with_GT scripts/train_busi.sh
set -euo pipefail
cd "$(dirname "$0")/.."
DATA=${DATA:-../shared/busi/Dataset_BUSI_with_GT}
PY=${PY:-.venv/bin/python}

# A stage's weights only serve to start the next one: once a later stage has a
# checkpoint of its own (committed when a session ends mid-run), earlier stages are skipped.
if [ ! -f runs/stage3_640/checkpoint ]; then
  if [ ! -f runs/stage2_640/checkpoint ]; then
    $PY tools/train.py --data "busi=$DATA" --config configs/stage1_384.yaml --model-dir runs/stage1_384 >> runs/stage1_384.log 2>&1
  fi
  $PY tools/train.py --data "busi=$DATA" --config configs/stage2_640.yaml --model-dir runs/stage2_640 \
      --init runs/stage1_384 >> runs/stage2_640.log 2>&1
fi
$PY tools/train.py --data "busi=$DATA" --config configs/stage3_640.yaml --model-dir runs/stage3_640 \
    --init runs/stage2_640 >> runs/stage3_640.log 2>&1
$PY tools/export_model.py --model-dir runs/stage3_640 --output saved_model
# The operating threshold on the validation split and the test metrics, into saved_model/model_info.json.
$PY tools/measure_model.py --data "busi=$DATA" --model saved_model --report report --write-model-info
