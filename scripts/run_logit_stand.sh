#!/usr/bin/env bash
# The CIFAR-100 table of "Logit Standardization in Knowledge Distillation" (Sun et al., CVPR 2024)
# for this toolkit: KD, CTKD, DKD and MLKD, each without and with --logit-stand, on the paper's six
# teacher -> student pairs (single teacher). The numbers in the README come from a GPU run of these
# commands.
#
#   TEACHERS=./download_ckpts/cifar_teachers bash scripts/run_logit_stand.sh     # everything
#   METHODS="kd dkd" PAIRS="res32x4_res8x4" TRIALS="0 1 2" bash scripts/run_logit_stand.sh
#   DRY_RUN=1 bash scripts/run_logit_stand.sh                                      # print only
#
# Teachers: mdistiller's CIFAR-100 teachers (cifar_teachers.tar, <arch>_vanilla/ckpt_epoch_240.pth);
# the architecture is read from the folder name. Any other checkpoints: set TEACHERS or edit T_*.
#
# Common recipe (mdistiller's CIFAR-100 configs): SGD, momentum 0.9, weight decay 5e-4, batch 64,
# learning rate x0.1 after epochs 150, 180, 210; lr 0.05, or 0.01 for MobileNetV2 (the toolkit's
# default per student). KD/CTKD/DKD: 240 epochs. MLKD: 480 epochs at lr 0.025 (0.01 for MobileNetV2)
# with the same decay epochs, as its configs.
#
# Per method (without -> with --logit-stand):
#   KD    mdistiller: T 4, CE 0.1, KD 0.9  ->  --logit-stand --base-temp 2 --kd-weight 9 (CE 0.1, KD 9);
#         the authors' logs use base temperature 3 for vgg13->vgg8 and 3 with KD weight 1 for
#         ResNet50->MobileNetV2.
#   CTKD  the CTKD paper's script: CE 0.1, KD 0.9, learned T in (1, 21), cosine reversal over 10
#         epochs  ->  --logit-stand --kd-weight 9 (CE 0.1, KD 9; the temperature stays learned).
#   DKD   alpha 1, beta per pair (8; 6 for vgg13->vgg8 and wrn_40_2->wrn_16_2; 2 for
#         resnet56->resnet20), T 4, warm-up 20, CE 1  ->  --logit-stand --base-temp 2 --kd-weight 9
#         (alpha and beta times 9, CE 1); the authors' logs use base temp 2, weight 12, beta 2 for
#         wrn_40_2->wrn_16_2 and base temp 3, weight 18, beta 2 for resnet56->resnet20.
#   MLKD  T 4, CE 0.1, KD 0.9  ->  --logit-stand --base-temp 2 --kd-weight 9 (weight 6 for vgg13->vgg8).
# Runs without and with --logit-stand go to different --save_dir folders (their run names would
# otherwise coincide for DKD and CTKD).
set -euo pipefail
cd "$(dirname "$0")/.."

PY=${PYTHON:-python3}
TEACHERS=${TEACHERS:-./download_ckpts/cifar_teachers}
SAVE=${SAVE:-./save/logit_stand}
TRIALS=${TRIALS:-0}
METHODS=${METHODS:-"kd ctkd dkd mlkd"}
PAIRS=${PAIRS:-"res32x4_res8x4 vgg13_vgg8 wrn40_2_wrn16_2 res56_res20 wrn40_2_res8x4 res50_mv2"}
DRY_RUN=${DRY_RUN:-0}

teacher() { echo "$TEACHERS/$1_vanilla/ckpt_epoch_240.pth"; }
COMMON="--dataset cifar100 --batch_size 64 --weight_decay 5e-4 --momentum 0.9 --lr_decay_epochs 150,180,210"
LS="--logit-stand"

run() {   # run <save subfolder> <teacher arch> <student arch> <flags...>
    local sub=$1 t=$2 s=$3
    shift 3
    for trial in $TRIALS; do
        local cmd="$PY train_student.py --path_t $(teacher "$t") --model_s $s $COMMON --save_dir $SAVE/$sub --trial $trial $*"
        echo "$cmd"
        if [ "$DRY_RUN" != 1 ]; then $cmd; fi
    done
}

wanted() { [[ " $METHODS " == *" $1 "* ]] && [[ " $PAIRS " == *" $2 "* ]]; }

KD_BASE="--distill kd -r 0.1 -a 0.9 --kd_T 4 --epochs 240"
CTKD="--distill ctkd --t_start 1 --t_end 20 --decay_loops 10 --decay_max 0 --decay_min -1 --epochs 240"
CTKD_BASE="$CTKD -r 0.1 -a 0.9"
DKD_BASE="--distill dkd --dkd_alpha 1 --dkd_T 4 --dkd_warmup 20 --epochs 240"
MLKD_BASE="--distill mlkd -r 0.1 -a 0.9 --kd_T 4 --epochs 480"

# --- resnet32x4 -> resnet8x4 ---------------------------------------------------------------------
if wanted kd res32x4_res8x4; then
    run base resnet32x4 resnet8x4 $KD_BASE
    run ls   resnet32x4 resnet8x4 --distill kd --epochs 240 $LS --base-temp 2 --kd-weight 9
fi
if wanted ctkd res32x4_res8x4; then
    run base resnet32x4 resnet8x4 $CTKD_BASE
    run ls   resnet32x4 resnet8x4 $CTKD $LS --kd-weight 9
fi
if wanted dkd res32x4_res8x4; then
    run base resnet32x4 resnet8x4 $DKD_BASE --dkd_beta 8
    run ls   resnet32x4 resnet8x4 $DKD_BASE --dkd_beta 8 $LS --base-temp 2 --kd-weight 9
fi
if wanted mlkd res32x4_res8x4; then
    run base resnet32x4 resnet8x4 $MLKD_BASE --learning_rate 0.025
    run ls   resnet32x4 resnet8x4 --distill mlkd --epochs 480 --learning_rate 0.025 $LS --base-temp 2 --kd-weight 9
fi

# --- vgg13 -> vgg8 -------------------------------------------------------------------------------
if wanted kd vgg13_vgg8; then
    run base vgg13 vgg8 $KD_BASE
    run ls   vgg13 vgg8 --distill kd --epochs 240 $LS --base-temp 3 --kd-weight 9
fi
if wanted ctkd vgg13_vgg8; then
    run base vgg13 vgg8 $CTKD_BASE
    run ls   vgg13 vgg8 $CTKD $LS --kd-weight 9
fi
if wanted dkd vgg13_vgg8; then
    run base vgg13 vgg8 $DKD_BASE --dkd_beta 6
    run ls   vgg13 vgg8 $DKD_BASE --dkd_beta 6 $LS --base-temp 2 --kd-weight 9
fi
if wanted mlkd vgg13_vgg8; then
    run base vgg13 vgg8 $MLKD_BASE --learning_rate 0.025
    run ls   vgg13 vgg8 --distill mlkd --epochs 480 --learning_rate 0.025 $LS --base-temp 2 --kd-weight 6
fi

# --- wrn_40_2 -> wrn_16_2 ------------------------------------------------------------------------
if wanted kd wrn40_2_wrn16_2; then
    run base wrn_40_2 wrn_16_2 $KD_BASE
    run ls   wrn_40_2 wrn_16_2 --distill kd --epochs 240 $LS --base-temp 2 --kd-weight 9
fi
if wanted ctkd wrn40_2_wrn16_2; then
    run base wrn_40_2 wrn_16_2 $CTKD_BASE
    run ls   wrn_40_2 wrn_16_2 $CTKD $LS --kd-weight 9
fi
if wanted dkd wrn40_2_wrn16_2; then
    run base wrn_40_2 wrn_16_2 $DKD_BASE --dkd_beta 6
    run ls   wrn_40_2 wrn_16_2 $DKD_BASE --dkd_beta 2 $LS --base-temp 2 --kd-weight 12
fi
if wanted mlkd wrn40_2_wrn16_2; then
    run base wrn_40_2 wrn_16_2 $MLKD_BASE --learning_rate 0.025
    run ls   wrn_40_2 wrn_16_2 --distill mlkd --epochs 480 --learning_rate 0.025 $LS --base-temp 2 --kd-weight 9
fi

# --- resnet56 -> resnet20 ------------------------------------------------------------------------
if wanted kd res56_res20; then
    run base resnet56 resnet20 $KD_BASE
    run ls   resnet56 resnet20 --distill kd --epochs 240 $LS --base-temp 2 --kd-weight 9
fi
if wanted ctkd res56_res20; then
    run base resnet56 resnet20 $CTKD_BASE
    run ls   resnet56 resnet20 $CTKD $LS --kd-weight 9
fi
if wanted dkd res56_res20; then
    run base resnet56 resnet20 $DKD_BASE --dkd_beta 2
    run ls   resnet56 resnet20 $DKD_BASE --dkd_beta 2 $LS --base-temp 3 --kd-weight 18
fi
if wanted mlkd res56_res20; then
    run base resnet56 resnet20 $MLKD_BASE --learning_rate 0.025
    run ls   resnet56 resnet20 --distill mlkd --epochs 480 --learning_rate 0.025 $LS --base-temp 2 --kd-weight 9
fi

# --- wrn_40_2 -> resnet8x4 -----------------------------------------------------------------------
if wanted kd wrn40_2_res8x4; then
    run base wrn_40_2 resnet8x4 $KD_BASE
    run ls   wrn_40_2 resnet8x4 --distill kd --epochs 240 $LS --base-temp 2 --kd-weight 9
fi
if wanted ctkd wrn40_2_res8x4; then
    run base wrn_40_2 resnet8x4 $CTKD_BASE
    run ls   wrn_40_2 resnet8x4 $CTKD $LS --kd-weight 9
fi
if wanted dkd wrn40_2_res8x4; then
    run base wrn_40_2 resnet8x4 $DKD_BASE --dkd_beta 8
    run ls   wrn_40_2 resnet8x4 $DKD_BASE --dkd_beta 8 $LS --base-temp 2 --kd-weight 9
fi
if wanted mlkd wrn40_2_res8x4; then
    run base wrn_40_2 resnet8x4 $MLKD_BASE --learning_rate 0.025
    run ls   wrn_40_2 resnet8x4 --distill mlkd --epochs 480 --learning_rate 0.025 $LS --base-temp 2 --kd-weight 9
fi

# --- ResNet50 -> MobileNetV2 (lr 0.01) -----------------------------------------------------------
if wanted kd res50_mv2; then
    run base ResNet50 MobileNetV2 $KD_BASE --learning_rate 0.01
    run ls   ResNet50 MobileNetV2 --distill kd --epochs 240 --learning_rate 0.01 $LS --base-temp 3 --kd-weight 1
fi
if wanted ctkd res50_mv2; then
    run base ResNet50 MobileNetV2 $CTKD_BASE --learning_rate 0.01
    run ls   ResNet50 MobileNetV2 $CTKD --learning_rate 0.01 $LS --kd-weight 9
fi
if wanted dkd res50_mv2; then
    run base ResNet50 MobileNetV2 $DKD_BASE --dkd_beta 8 --learning_rate 0.01
    run ls   ResNet50 MobileNetV2 $DKD_BASE --dkd_beta 8 --learning_rate 0.01 $LS --base-temp 2 --kd-weight 9
fi
if wanted mlkd res50_mv2; then
    run base ResNet50 MobileNetV2 $MLKD_BASE --learning_rate 0.01
    run ls   ResNet50 MobileNetV2 --distill mlkd --epochs 480 --learning_rate 0.01 $LS --base-temp 2 --kd-weight 9
fi
