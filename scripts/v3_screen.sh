#!/usr/bin/env bash
# Issue 18 item 3: what helps model v3 tell malignant from benign, screened at 256 where
# a step is cheap. Every arm restarts from stage 1's best for the same 1500 steps
# (configs/v3_screen_256.yaml) and differs from the baseline only by its own YAML.
# Resumable: re-run to continue an arm from its latest checkpoint (not committed: an arm cut
# off in a fresh clone starts over). A finished arm leaves runs/v3_screen_ARM/finished
# (committed with its logs and events, not its checkpoints) and is skipped.
#   scripts/v3_screen.sh                 # all arms, then the comparison table
#   ARMS="base focal" scripts/v3_screen.sh
# The winner, if validation shows one beyond the run-to-run noise, is then tried as a
# 640 fine-tune of stage 2's best against a baseline continuing unchanged.
# Every arm starts from runs/v3_256/best, which left the tree when v3 shipped; get it back first:
#   git checkout "$(git log -1 --format=%H --diff-filter=D -- runs/v3_256/best)^" -- runs/v3_256/best
set -euo pipefail
cd "$(dirname "$0")/.."
BUSI=${BUSI:-../shared/busi/Dataset_BUSI_with_GT}
BUSBRA=${BUSBRA:-../shared/busbra/BUS-BRA}
PY=${PY:-.venv/bin/python}
ARMS=${ARMS:-base copy_paste boost3 focal}
for arm in $ARMS; do
  [ -f "runs/v3_screen_$arm/finished" ] && continue
  [ -f runs/v3_256/best/checkpoint ] || { echo "runs/v3_256/best: missing (see the comment at the top of $0)" >&2; exit 2; }
  extra=()
  [ "$arm" = base ] || extra=(--config "configs/v3_arm_$arm.yaml")
  $PY tools/train.py --data "busi=$BUSI" --data "busbra=$BUSBRA" --config configs/v3_stage1_256.yaml \
      --config configs/v3_screen_256.yaml "${extra[@]}" --model-dir "runs/v3_screen_$arm" \
      --init runs/v3_256/best >> "runs/v3_screen_$arm.log" 2>&1
  date -u +%FT%TZ > "runs/v3_screen_$arm/finished"
done
runs=()
for arm in $ARMS; do runs+=("runs/v3_screen_$arm"); done
$PY tools/compare_runs.py --runs "${runs[@]}" --datasets busi busbra
