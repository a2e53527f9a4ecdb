#!/usr/bin/env bash
# Spot-adaptive KD (Song, Chen, Ye, Song, "Spot-adaptive Knowledge Distillation", IEEE TIP 2022) on
# CIFAR-100 with this toolkit's flags: the paper's ten teacher -> student pairs and its ten feature
# distillers, each next to KD at the output spot, as in the authors' configs
# (zju-vipa/spot-adaptive-pytorch, configs/cifar-100/seed-1029/<loss>/<teacher>-<student>.yml).
#
#   TEACHERS=./download_ckpts/cifar_teachers bash scripts/run_spot_adaptive.sh        # everything
#   LOSSES="attention hint" PAIRS="res32x4_res8x4 vgg13_vgg8" bash scripts/run_spot_adaptive.sh
#   MODES="adaptive all random anti" LOSSES=attention PAIRS=res56_res20 bash scripts/run_spot_adaptive.sh
#   MULTI=1 LOSSES=attention bash scripts/run_spot_adaptive.sh      # also: 3 teachers (this toolkit's extension)
#   DRY_RUN=1 bash scripts/run_spot_adaptive.sh                                       # print only
#
# Teachers: mdistiller's CIFAR-100 teachers (<arch>_vanilla/ckpt_epoch_240.pth; the architecture is
# read from the folder name), or set TEACHERS / edit teacher() for others.
#
# Recipe (the authors' configs): SGD, momentum 0.9, weight decay 5e-4, batch 64, 240 epochs, x0.1 after
# 150, 180, 210; lr 0.05, or 0.01 for MobileNetV2 and ShuffleV1 students (the toolkit's default per
# student). Student loss CE + KD (T 4, weight 1) + beta x feature loss from the first epoch
# (--beta_delay_epochs 0). Policy: one linear layer, Gumbel tau 5, its own SGD at half the student's
# learning rate with weight decay 1e-3 (--policy_lr_ratio 0.5 --policy_weight_decay 1e-3, defaults).
# The start-up bias towards distilling everywhere ("homo") is decided from the architectures
# (--policy_homo auto): on for the same-family, same-width pairs (res56/20, res110/32, res32x4/8x4,
# wrn40_2/16_2, vgg13/8), off for the others, exactly the configs' flags.
#
# Per loss (toolkit name, SAKD name: beta = other_kd, gamma = classify_weight of the policy loss):
#   hint FitNet 1 / 1      attention AT 1000 / 2   nst NST 50 / 1        similarity SP 3000 / 1
#   factor FT 200 / 1      rkd RKD 1 / 2           pkt PKT 30000 / 1     correlation CC 0.02 / 1
#   vid VID 1 / 2          crd CRD 0.8 / 1
# FitNet's -b 1 is SAKD's value (RepDistiller uses 100). KDSVD has no SAKD config (add "kdsvd" to
# LOSSES to run it anyway, with -b 1). FT pre-trains its paraphraser for 30 epochs (--init_epochs 30);
# its lr is 0.01 for ResNet/WRN students and the student's lr otherwise (the configs use 0.01 for
# vgg13 -> vgg8 too). CRD: 16384 negatives, 128-d embeddings, exact positives (the toolkit's defaults).
# Extra flags are passed to every run, e.g.:  bash scripts/run_spot_adaptive.sh --device cuda:0
set -euo pipefail
cd "$(dirname "$0")/.."

PY=${PYTHON:-python3}
TEACHERS=${TEACHERS:-./download_ckpts/cifar_teachers}
SAVE=${SAVE:-./save/spot_adaptive}
TRIALS=${TRIALS:-0}
MODES=${MODES:-adaptive}
LOSSES=${LOSSES:-"hint attention nst similarity factor rkd pkt correlation vid crd"}
PAIRS=${PAIRS:-"res56_res20 res110_res32 res32x4_res8x4 res32x4_res32 wrn40_2_wrn16_2 vgg13_vgg8 res50_vgg8 res50_mv2 vgg13_mv2 wrn40_2_sv1"}
MULTI=${MULTI:-0}
DRY_RUN=${DRY_RUN:-0}

teacher() { echo "$TEACHERS/$1_vanilla/ckpt_epoch_240.pth"; }
COMMON="--dataset cifar100 --batch_size 64 --epochs 240 --weight_decay 5e-4 --momentum 0.9 --lr_decay_epochs 150,180,210"
COMMON="$COMMON --spot_adaptive --kd_T 4 -r 1 -a 1 --beta_delay_epochs 0"

declare -A BETA=([hint]=1 [attention]=1000 [nst]=50 [similarity]=3000 [factor]=200 [rkd]=1 [pkt]=30000
                 [correlation]=0.02 [vid]=1 [crd]=0.8 [kdsvd]=1)
declare -A GAMMA=([attention]=2 [rkd]=2 [vid]=2)
declare -A PAIR=([res56_res20]="resnet56 resnet20" [res110_res32]="resnet110 resnet32"
                 [res32x4_res8x4]="resnet32x4 resnet8x4" [res32x4_res32]="resnet32x4 resnet32"
                 [wrn40_2_wrn16_2]="wrn_40_2 wrn_16_2" [vgg13_vgg8]="vgg13 vgg8" [res50_vgg8]="ResNet50 vgg8"
                 [res50_mv2]="ResNet50 MobileNetV2" [vgg13_mv2]="vgg13 MobileNetV2" [wrn40_2_sv1]="wrn_40_2 ShuffleV1")

run() {   # run <flags...>
    for trial in $TRIALS; do
        local cmd="$PY train_student.py $COMMON --trial $trial $* ${EXTRA[*]}"
        echo "$cmd"
        if [ "$DRY_RUN" != 1 ]; then $cmd; fi
    done
}

EXTRA=("$@")
for pair in $PAIRS; do
    read -r t s <<< "${PAIR[$pair]}"
    for loss in $LOSSES; do
        for mode in $MODES; do
            run --path_t "$(teacher "$t")" --model_s "$s" --distill "$loss" -b "${BETA[$loss]}" \
                --classify_weight "${GAMMA[$loss]:-1}" --spot_mode "$mode" --save_dir "$SAVE"
        done
    done
done

# Several teachers (no published numbers): each decision picks one of three teachers or none; the
# routing masks multiply CA-MKD's confidence weights. Teachers come from this toolkit's manifest
# (train_teacher.py --model resnet32x4 --trials 3 --dataset cifar100).
if [ "$MULTI" = 1 ]; then
    for loss in $LOSSES; do
        run --teacher_num 3 --teachers cifar100-resnet32x4-0 cifar100-resnet32x4-1 cifar100-resnet32x4-2 \
            --ensemble_method CAMKD --model_s resnet8x4 --distill "$loss" -b "${BETA[$loss]}" \
            --classify_weight "${GAMMA[$loss]:-1}" --spot_mode adaptive --save_dir "$SAVE/multi"
    done
fi
