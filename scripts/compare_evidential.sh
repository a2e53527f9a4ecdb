#!/usr/bin/env bash
# EVIDENTIAL vs AVERAGE_LOSS vs CAMKD on digits when one of three teachers is weak: two resnet20
# teachers trained for $EPOCHS_T epochs and one trained for a single epoch (inaccurate and
# uncertain, or confidently wrong), then a resnet8 student with --distill kd under each strategy
# for trials $TRIALS; EVIDENTIAL also without its label calibration (--evidential_calibrate none).
# About fifteen minutes on 2 CPU cores. The table at the end is scripts/summarize.py's.
#
#   bash scripts/compare_evidential.sh
#   TRIALS="0 1 2 3 4" DISTILL=dkd SAVE_DIR=./save/cmp_dkd bash scripts/compare_evidential.sh
#   REUSE_TEACHERS=1 METHODS="EVIDENTIAL EVIDENTIAL:--evidential_calibrate:none" bash scripts/compare_evidential.sh
set -euo pipefail
cd "$(dirname "$0")/.."
SAVE=${SAVE_DIR:-./save/compare_evidential}
PY=${PYTHON:-python3}
TRIALS=${TRIALS:-"0 1 2"}
EPOCHS_T=${EPOCHS_T:-15}
EPOCHS_S=${EPOCHS_S:-15}
DISTILL=${DISTILL:-kd}
# a method, optionally followed by its flags joined with ':'
METHODS=${METHODS:-"AVERAGE_LOSS CAMKD EVIDENTIAL EVIDENTIAL:--evidential_calibrate:none"}
COMMON=(--dataset digits --save_dir "$SAVE" --quiet)

if [ -z "${REUSE_TEACHERS:-}" ]; then
  "$PY" train_teacher.py --model resnet20 --trials 0,1 --epochs "$EPOCHS_T" --lr_decay_epochs "$((EPOCHS_T * 2 / 3))" "${COMMON[@]}"
  "$PY" train_teacher.py --model resnet20 --trials weak --epochs 1 "${COMMON[@]}"
fi

for spec in $METHODS; do
  IFS=: read -r -a parts <<< "$spec"
  method=${parts[0]}
  for trial in $TRIALS; do
    "$PY" train_student.py --model_s resnet8 --teachers digits-resnet20-0 digits-resnet20-1 digits-resnet20-weak \
        --distill "$DISTILL" --ensemble_method "$method" "${parts[@]:1}" --epochs "$EPOCHS_S" \
        --lr_decay_epochs "$((EPOCHS_S * 2 / 3))" --batch_size 32 --trial "$trial" "${COMMON[@]}"
  done
done
"$PY" scripts/summarize.py "$SAVE/students"
