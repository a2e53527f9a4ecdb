#!/usr/bin/env bash
# The main job on the embedded digits data (scikit-learn's handwritten digits, no download):
# train three teachers (three seeds, one command), then distil them into one student with CA-MKD.
# A few minutes on 2 CPU cores. Everything lands under $SAVE_DIR (default ./save/demo).
set -euo pipefail
cd "$(dirname "$0")/.."
SAVE=${SAVE_DIR:-./save/demo}
PY=${PYTHON:-python3}
COMMON=(--dataset digits --epochs 12 --lr_decay_epochs 8,11 --save_dir "$SAVE" --print_freq 1000)
"$PY" train_teacher.py --model resnet14 --trials 3 "${COMMON[@]}"
"$PY" train_student.py --model_s resnet8 --teacher_num 3 --distill inter --ensemble_method CAMKD \
    -r 1 -a 1 -b 50 --batch_size 32 "${COMMON[@]}"
