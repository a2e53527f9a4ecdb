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
#
# Groups (README: "Several students in one run"): the methods of a pair whose flags agree apart from
# --distill train as ONE process (--distill kd,ctkd): each batch loaded once, the teacher's forward once,
# every student its own run folder, bit-identical to a separate run. Each loss's own flags (CTKD's
# --t_start..., DKD's --dkd_*) are at their defaults where a group shares them, so names stay those of
# separate runs. What cannot share a group: different -r/-a (given for KD/CTKD/MLKD without
# --logit-stand, derived under it), MLKD's 480 epochs and learning rate, a different --base-temp,
# --kd-weight or --dkd_beta.
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

CTKD_FLAGS="--t_start 1 --t_end 20 --decay_loops 10 --decay_max 0 --decay_min -1"
DKD_FLAGS="--dkd_alpha 1 --dkd_T 4 --dkd_warmup 20 --epochs 240"
MLKD_BASE="--distill mlkd -r 0.1 -a 0.9 --kd_T 4 --epochs 480"

pick() {   # pick <pair> <method>...: the wanted methods of the pair, comma-separated (a group's --distill)
    local pair=$1 out=""
    shift
    for m in "$@"; do if wanted "$m" "$pair"; then out="${out:+$out,}$m"; fi; done
    echo "$out"
}

group() {  # group <pair> <save subfolder> <teacher> <student> "<methods>" <flags...>: one run of the wanted methods
    local pair=$1 sub=$2 t=$3 s=$4 list
    list=$(pick "$pair" $5)
    shift 5
    if [ -n "$list" ]; then run "$sub" "$t" "$s" --distill "$list" "$@"; fi
}

# per pair: base KD+CTKD (-r 0.1 -a 0.9), base DKD, base MLKD; with --logit-stand the methods that
# share --base-temp/--kd-weight (/--dkd_beta), then the others, then MLKD
base() {   # base <pair> <teacher> <student> <dkd beta> <extra flags (learning rate)...>
    local pair=$1 t=$2 s=$3 beta=$4
    shift 4
    group "$pair" base "$t" "$s" "kd ctkd" -r 0.1 -a 0.9 --kd_T 4 $CTKD_FLAGS --epochs 240 "$@"
    group "$pair" base "$t" "$s" "dkd" $DKD_FLAGS --dkd_beta "$beta" "$@"
}

# --- resnet32x4 -> resnet8x4 ---------------------------------------------------------------------
P=res32x4_res8x4
base $P resnet32x4 resnet8x4 8
group $P base resnet32x4 resnet8x4 "mlkd" -r 0.1 -a 0.9 --kd_T 4 --epochs 480 --learning_rate 0.025
group $P ls resnet32x4 resnet8x4 "kd ctkd dkd" --epochs 240 $LS --base-temp 2 --kd-weight 9 $CTKD_FLAGS $DKD_FLAGS --dkd_beta 8
group $P ls resnet32x4 resnet8x4 "mlkd" --epochs 480 --learning_rate 0.025 $LS --base-temp 2 --kd-weight 9

# --- vgg13 -> vgg8 -------------------------------------------------------------------------------
P=vgg13_vgg8
base $P vgg13 vgg8 6
group $P base vgg13 vgg8 "mlkd" -r 0.1 -a 0.9 --kd_T 4 --epochs 480 --learning_rate 0.025
group $P ls vgg13 vgg8 "kd" --epochs 240 $LS --base-temp 3 --kd-weight 9
group $P ls vgg13 vgg8 "ctkd" $CTKD_FLAGS --epochs 240 $LS --kd-weight 9
group $P ls vgg13 vgg8 "dkd" $DKD_FLAGS --dkd_beta 6 $LS --base-temp 2 --kd-weight 9
group $P ls vgg13 vgg8 "mlkd" --epochs 480 --learning_rate 0.025 $LS --base-temp 2 --kd-weight 6

# --- wrn_40_2 -> wrn_16_2 ------------------------------------------------------------------------
P=wrn40_2_wrn16_2
base $P wrn_40_2 wrn_16_2 6
group $P base wrn_40_2 wrn_16_2 "mlkd" -r 0.1 -a 0.9 --kd_T 4 --epochs 480 --learning_rate 0.025
group $P ls wrn_40_2 wrn_16_2 "kd ctkd" --epochs 240 $LS --base-temp 2 --kd-weight 9 $CTKD_FLAGS
group $P ls wrn_40_2 wrn_16_2 "dkd" $DKD_FLAGS --dkd_beta 2 $LS --base-temp 2 --kd-weight 12
group $P ls wrn_40_2 wrn_16_2 "mlkd" --epochs 480 --learning_rate 0.025 $LS --base-temp 2 --kd-weight 9

# --- resnet56 -> resnet20 ------------------------------------------------------------------------
P=res56_res20
base $P resnet56 resnet20 2
group $P base resnet56 resnet20 "mlkd" -r 0.1 -a 0.9 --kd_T 4 --epochs 480 --learning_rate 0.025
group $P ls resnet56 resnet20 "kd ctkd" --epochs 240 $LS --base-temp 2 --kd-weight 9 $CTKD_FLAGS
group $P ls resnet56 resnet20 "dkd" $DKD_FLAGS --dkd_beta 2 $LS --base-temp 3 --kd-weight 18
group $P ls resnet56 resnet20 "mlkd" --epochs 480 --learning_rate 0.025 $LS --base-temp 2 --kd-weight 9

# --- wrn_40_2 -> resnet8x4 -----------------------------------------------------------------------
P=wrn40_2_res8x4
base $P wrn_40_2 resnet8x4 8
group $P base wrn_40_2 resnet8x4 "mlkd" -r 0.1 -a 0.9 --kd_T 4 --epochs 480 --learning_rate 0.025
group $P ls wrn_40_2 resnet8x4 "kd ctkd dkd" --epochs 240 $LS --base-temp 2 --kd-weight 9 $CTKD_FLAGS $DKD_FLAGS --dkd_beta 8
group $P ls wrn_40_2 resnet8x4 "mlkd" --epochs 480 --learning_rate 0.025 $LS --base-temp 2 --kd-weight 9

# --- ResNet50 -> MobileNetV2 (lr 0.01) -----------------------------------------------------------
P=res50_mv2
base $P ResNet50 MobileNetV2 8 --learning_rate 0.01
group $P base ResNet50 MobileNetV2 "mlkd" -r 0.1 -a 0.9 --kd_T 4 --epochs 480 --learning_rate 0.01
group $P ls ResNet50 MobileNetV2 "kd" --epochs 240 --learning_rate 0.01 $LS --base-temp 3 --kd-weight 1
group $P ls ResNet50 MobileNetV2 "ctkd dkd" --epochs 240 --learning_rate 0.01 $LS --base-temp 2 --kd-weight 9 $CTKD_FLAGS $DKD_FLAGS --dkd_beta 8
group $P ls ResNet50 MobileNetV2 "mlkd" --epochs 480 --learning_rate 0.01 $LS --base-temp 2 --kd-weight 9
