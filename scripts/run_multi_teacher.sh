#!/usr/bin/env bash
# CA-MKD's CIFAR-100 comparison (Zhang, Chen, Wang, ICASSP 2022, Table 1 setting):
# three resnet32x4 teachers (three seeds) distilled into vgg8, 240 epochs, batch 64, lr 0.05,
# with each ensemble strategy, using CA-MKD's own flags (scripts/run.sh of the reference code).
# A group (--ensemble_method A,B,C) trains the students that share all other flags together.
# Extra arguments are passed to every run, e.g.  bash scripts/run_multi_teacher.sh --trial 1
# DRY_RUN=1 prints the commands instead of running them.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
run() { if [ -n "${DRY_RUN:-}" ]; then echo "$*"; else "$@"; fi; }

# the teachers: one command, three seeds, recorded in save/manifest.json
run "$PY" train_teacher.py --model resnet32x4 --dataset cifar100 --trials 0,1,2

S=(--model_s vgg8 --teacher_num 3 --nesterov --dataset cifar100)
# Students that share every flag but the strategy train as one group (one process, the teachers'
# forward once per batch for all of them; each student its own run folder, bit-identical to a
# separate run): AVER-MKD, EBKD and AEKD (--distill kd -b 0). AEKD: the exact QP (the reference's
# libsvm weights without --svm_norm are stuck at 0.6/0.4/0).
run "$PY" train_student.py "${S[@]}" --distill kd    --ensemble_method AVERAGE_LOSS,EBKD,AEKD -r 1 -a 1 -b 0 "$@"
# FitNet-MKD and CA-MKD differ in -b (and loss), so each is its own run
run "$PY" train_student.py "${S[@]}" --distill hint  --ensemble_method AVERAGE_LOSS -r 1 -a 1 -b 100 "$@"
run "$PY" train_student.py "${S[@]}" --distill inter --ensemble_method CAMKD        -r 1 -a 1 -b 50  "$@"
