#!/usr/bin/env bash
# RepDistiller's single-teacher CIFAR-100 benchmark, resnet32x4 -> resnet8x4, one run per loss,
# with this toolkit's flags.
#
# Where the numbers come from: -r/-a/-b are those of RepDistiller's scripts/run_cifar_distill.sh
# (HobbitLong/RepDistiller; the settings behind the CRD paper's tables, Tian et al., ICLR 2020):
# KD -r 0.1 -a 0.9; every feature loss -r 1 -a 0 -b <its weight>; CRD -a 0 -b 0.8; CRD+KD -a 1 -b 0.8.
# kdsvd is implemented by RepDistiller but absent from its scripts and tables: -b 1 is our choice,
# not a published setting. --beta_delay_epochs 0 because RepDistiller uses the -b term from the
# first epoch (CA-MKD, and this toolkit's default, leave it out of epoch 1).
#
# The teacher is this toolkit's train_teacher.py output (RepDistiller's checkpoint layout also loads).
# Extra flags are passed to every run, e.g.:  scripts/run_single_teacher.sh --device cuda:0
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}
TEACHER=./save/teachers/resnet32x4_cifar100_lr_0.05_decay_0.0005_trial_0/resnet32x4_best.pth

run() {  # run <distill> <-r> <-a> <-b> [extra flags]
    local distill=$1 r=$2 a=$3 b=$4
    shift 4
    "$PY" train_student.py --model_s resnet8x4 --path_t "$TEACHER" --distill "$distill" \
        -r "$r" -a "$a" -b "$b" --trial 1 --beta_delay_epochs 0 "$@"
}

run kd          0.1 0.9 0      "$@"   # KD (Hinton et al. 2015)
run hint        1   0   100    "$@"   # FitNet (Romero et al. 2015)
run attention   1   0   1000   "$@"   # AT (Zagoruyko & Komodakis 2017)
run similarity  1   0   3000   "$@"   # SP (Tung & Mori 2019)
run correlation 1   0   0.02   "$@"   # CC (Peng et al. 2019)
run vid         1   0   1      "$@"   # VID (Ahn et al. 2019)
run rkd         1   0   1      "$@"   # RKD (Park et al. 2019)
run pkt         1   0   30000  "$@"   # PKT (Passalis & Tefas 2018)
run abound      1   0   1      "$@"   # AB (Heo et al. 2019); connector init stage: --init_epochs 30
run factor      1   0   200    "$@"   # FT (Kim et al. 2018); paraphraser init stage: --init_epochs 30
run fsp         1   0   50     "$@"   # FSP (Yim et al. 2017); init stage: --init_epochs 30
run nst         1   0   50     "$@"   # NST (Huang & Wang 2017)
run kdsvd       1   0   1      "$@"   # KDSVD (Lee et al. 2018); -b 1 is our choice (see above)
run crd         1   0   0.8    "$@"   # CRD (Tian et al. 2020)
run crd         1   1   0.8    "$@"   # CRD+KD
