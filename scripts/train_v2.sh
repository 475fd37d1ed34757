#!/usr/bin/env bash
# Reproduce the shipped model (v2): BUSI + BUS-BRA, stage 1 at 256, stage 2 at 640, export, measure.
# Safe to re-run at any point: every stage resumes from its latest checkpoint, and a
# stage that stopped early (validation no longer improving) is not resumed.
# Logs: runs/v2_256.log, runs/v2_640.log.
#   BUSI=../shared/busi/Dataset_BUSI_with_GT BUSBRA=../shared/busbra/BUS-BRA scripts/train_v2.sh
set -euo pipefail
cd "$(dirname "$0")/.."
BUSI=${BUSI:-../shared/busi/Dataset_BUSI_with_GT}
BUSBRA=${BUSBRA:-../shared/busbra/BUS-BRA}
PY=${PY:-.venv/bin/python}
DATA=(--data "busi=$BUSI" --data "busbra=$BUSBRA")

# Stage 1's weights only serve to start stage 2: once stage 2 has a checkpoint of its
# own, stage 1 is skipped. v2 is superseded by v3: none of its checkpoints is in the tree, so
# on a fresh clone this retrains both stages (the README says how to restore the
# deleted checkpoints from history instead).
if [ ! -f runs/v2_640/checkpoint ]; then
  $PY tools/train.py "${DATA[@]}" --config configs/v2_stage1_256.yaml --model-dir runs/v2_256 >> runs/v2_256.log 2>&1
fi
$PY tools/train.py "${DATA[@]}" --config configs/v2_stage2_640.yaml --model-dir runs/v2_640 \
    --init runs/v2_256/best >> runs/v2_640.log 2>&1
$PY tools/export_model.py --model-dir runs/v2_640 --output saved_model
# The operating threshold on pooled validation, the test metrics per dataset and the in-distribution
# check (fitted on train, threshold on val) into saved_model/model_info.json and saved_model/ood_stats.npz.
$PY tools/measure_model.py "${DATA[@]}" --model saved_model --report report --write-model-info --fit-ood
