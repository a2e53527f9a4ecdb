#!/usr/bin/env bash
# CA-MKD's CIFAR-100 comparison (Zhang, Chen, Wang, ICASSP 2022, Table 1 setting):
# three resnet32x4 teachers (three seeds) distilled into vgg8, 240 epochs, batch 64, lr 0.05,
# with each ensemble strategy, using CA-MKD's own flags (scripts/run.sh of the reference code).
# Extra arguments are passed to every run, e.g.  bash scripts/run_multi_teacher.sh --trial 1
# DRY_RUN=1 prints the commands instead of running them.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
run() { if [ -n "${DRY_RUN:-}" ]; then echo "$*"; else "$@"; fi; }

# the teachers: one command, three seeds, recorded in save/manifest.json
run "$PY" train_teacher.py --model resnet32x4 --dataset cifar100 --trials 0,1,2

S=(--model_s vgg8 --teacher_num 3 --nesterov --dataset cifar100)
# AVER-MKD
run "$PY" train_student.py "${S[@]}" --distill kd    --ensemble_method AVERAGE_LOSS -r 1 -a 1 -b 0   "$@"
# FitNet-MKD
run "$PY" train_student.py "${S[@]}" --distill hint  --ensemble_method AVERAGE_LOSS -r 1 -a 1 -b 100 "$@"
# EBKD
run "$PY" train_student.py "${S[@]}" --distill kd    --ensemble_method EBKD         -r 1 -a 1 -b 0   "$@"
# AEKD (exact QP; the reference's libsvm weights without --svm_norm are stuck at 0.6/0.4/0)
run "$PY" train_student.py "${S[@]}" --distill kd    --ensemble_method AEKD         -r 1 -a 1 -b 0   "$@"
# CA-MKD
run "$PY" train_student.py "${S[@]}" --distill inter --ensemble_method CAMKD        -r 1 -a 1 -b 50  "$@"
