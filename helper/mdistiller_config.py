"""mdistiller's configuration files, translated into ``train_student.py``'s flags (``tools/train.py``).

    python tools/train.py --cfg configs/cifar100/kd/resnet32x4_resnet8x4.yaml --logit-stand --base-temp 2 --kd-weight 9
    python tools/train.py --cfg my_dkd.yaml SOLVER.EPOCHS 1 DATASET.TYPE digits

The schema is mdistiller's (github.com/megvii-research/mdistiller, ``mdistiller/engine/cfg.py``)
with the logit-standardization repository's addition ``EXPERIMENT.LOGIT_STAND``
(github.com/sunshangquan/logit-standardization-KD); absent keys take mdistiller's defaults. A file
and the trailing ``KEY VALUE`` pairs are merged as yacs merges them (``merge_from_file``, then
``merge_from_list``): a string value is read as a Python literal when it is one (``"5e-4"`` is a
number, ``digits`` a string), the value must have the default's type (an int where the default is a
float is a mismatch, as in yacs; a list stands for a tuple), and a key the schema does not have is an
error. Each error is one line naming the key.

The translation is thin: it maps the schema onto the flags that give the same run, and the run is
exactly the run of those flags (``train_student.py`` parses and resolves them; the command is
printed). What mdistiller does and where it goes:

- ``DISTILLER.TEACHER`` -> ``--path_t download_ckpts/cifar_teachers/<arch>_vanilla/ckpt_epoch_240.pth``
  (where mdistiller's ``models/cifar/__init__.py`` reads it and ``scripts/fetch_teachers.py mdistiller``
  puts it; relative to the current folder) and ``--model_t <arch>``; ``DISTILLER.STUDENT`` -> ``--model_s``.
- ``DISTILLER.TYPE``: ``KD`` -> ``--distill kd -r KD.LOSS.CE_WEIGHT -a KD.LOSS.KD_WEIGHT --kd_T
  KD.TEMPERATURE``; ``DKD`` -> ``--distill dkd -r DKD.CE_WEIGHT --dkd_alpha --dkd_beta --dkd_T
  --dkd_warmup``; ``MLKD`` (the logit-standardization repository's, trainer ``ours``) -> ``--distill
  mlkd -r KD.LOSS.CE_WEIGHT -a KD.LOSS.KD_WEIGHT --kd_T KD.TEMPERATURE --mlkd_mask reference`` (the
  authors' masking, which their code has). ``NONE`` trains the student alone: refused with the
  ``train_teacher.py`` command. The other methods (AT, CRD, ...) are refused with the
  ``--distill`` name that runs them in ``train_student.py``; OFD, ReviewKD and DOT are not in this
  toolkit.
- ``--logit-stand --base-temp T --kd-weight W`` for KD, DKD, MLKD (as the logit-standardization
  ``tools/train.py``: KD and MLKD take KD weight W and temperature T; DKD's alpha and beta are
  multiplied by W, temperature T) -> ``--logit-stand --base-temp T --kd-weight W``;
  ``EXPERIMENT.LOGIT_STAND: True`` without the flag keeps the configuration's weights and
  temperature (``--kd-weight`` the KD weight for KD/MLKD, 1 for DKD).
- ``SOLVER``: ``BATCH_SIZE``, ``EPOCHS``, ``LR`` (always given: mdistiller has no per-model
  default), ``LR_DECAY_STAGES`` (the same step schedule: the rate times ``LR_DECAY_RATE`` per stage
  passed), ``LR_DECAY_RATE``, ``WEIGHT_DECAY``, ``MOMENTUM`` -> the flags of those names; ``TYPE``
  ``SGD`` only (plain momentum SGD, as mdistiller); ``TRAINER`` ``base`` (``ours`` for MLKD).
- ``DATASET.TYPE`` -> ``--dataset`` (``cifar100``, or a data set of this toolkit such as ``digits``;
  mdistiller's ``imagenet`` teachers are torchvision's pretrained weights and its ``tiny_imagenet``
  models are not this zoo's: refused); ``DATASET.NUM_WORKERS`` -> ``--num_workers``.
- ``LOG.PREFIX`` -> ``--save_dir`` (the run folder is named by its settings under
  ``<save_dir>/students/``, not by ``EXPERIMENT.PROJECT/NAME/TAG``); ``LOG.SAVE_CHECKPOINT_FREQ`` ->
  ``--save_freq``; ``--resume`` -> ``--resume``. Not used, results do not depend on them:
  ``DATASET.TEST.BATCH_SIZE`` (``--eval_batch_size`` keeps its default), ``LOG.TENSORBOARD_FREQ``
  (one TensorBoard point per epoch), ``LOG.WANDB`` (one line says so when true).

The run's ``args.json`` records the file as ``mdistiller_cfg`` (``--mdistiller_cfg``, outside the
result settings) and the whole command as ``command``.
"""
from __future__ import annotations

import argparse
import copy
import difflib
import os
from ast import literal_eval
from typing import Any, Dict, List, Mapping, Sequence, Tuple

# mdistiller's mdistiller/engine/cfg.py, as data, plus EXPERIMENT.LOGIT_STAND of the
# logit-standardization repository (which also changed KD.TEMPERATURE to 2 and KD.LOSS.KD_WEIGHT
# to 9 and LOG.WANDB to False; mdistiller's defaults are kept: README)
DEFAULTS: Dict[str, Any] = {
    "EXPERIMENT": {"PROJECT": "distill", "NAME": "", "TAG": "default", "LOGIT_STAND": False},
    "DATASET": {"TYPE": "cifar100", "NUM_WORKERS": 2, "TEST": {"BATCH_SIZE": 64}},
    "DISTILLER": {"TYPE": "NONE", "TEACHER": "ResNet50", "STUDENT": "resnet32"},
    "SOLVER": {"TRAINER": "base", "BATCH_SIZE": 64, "EPOCHS": 240, "LR": 0.05, "LR_DECAY_STAGES": [150, 180, 210],
               "LR_DECAY_RATE": 0.1, "WEIGHT_DECAY": 0.0001, "MOMENTUM": 0.9, "TYPE": "SGD",
               "DOT": {"DELTA": 0.075}},
    "LOG": {"TENSORBOARD_FREQ": 500, "SAVE_CHECKPOINT_FREQ": 40, "PREFIX": "./output", "WANDB": True},
    "KD": {"TEMPERATURE": 4, "LOSS": {"CE_WEIGHT": 0.1, "KD_WEIGHT": 0.9}},
    "AT": {"P": 2, "LOSS": {"CE_WEIGHT": 1.0, "FEAT_WEIGHT": 1000.0}},
    "RKD": {"DISTANCE_WEIGHT": 25, "ANGLE_WEIGHT": 50, "LOSS": {"CE_WEIGHT": 1.0, "FEAT_WEIGHT": 1.0},
            "PDIST": {"EPSILON": 1e-12, "SQUARED": False}},
    "FITNET": {"HINT_LAYER": 2, "INPUT_SIZE": (32, 32), "LOSS": {"CE_WEIGHT": 1.0, "FEAT_WEIGHT": 100.0}},
    "KDSVD": {"K": 1, "LOSS": {"CE_WEIGHT": 1.0, "FEAT_WEIGHT": 1.0}},
    "OFD": {"LOSS": {"CE_WEIGHT": 1.0, "FEAT_WEIGHT": 0.001}, "CONNECTOR": {"KERNEL_SIZE": 1}},
    "NST": {"LOSS": {"CE_WEIGHT": 1.0, "FEAT_WEIGHT": 50.0}},
    "PKT": {"LOSS": {"CE_WEIGHT": 1.0, "FEAT_WEIGHT": 30000.0}},
    "SP": {"LOSS": {"CE_WEIGHT": 1.0, "FEAT_WEIGHT": 3000.0}},
    "VID": {"LOSS": {"CE_WEIGHT": 1.0, "FEAT_WEIGHT": 1.0}, "EPS": 1e-5, "INIT_PRED_VAR": 5.0, "INPUT_SIZE": (32, 32)},
    "CRD": {"MODE": "exact", "FEAT": {"DIM": 128, "STUDENT_DIM": 256, "TEACHER_DIM": 256},
            "LOSS": {"CE_WEIGHT": 1.0, "FEAT_WEIGHT": 0.8},
            "NCE": {"K": 16384, "MOMENTUM": 0.5, "TEMPERATURE": 0.07}},
    "REVIEWKD": {"CE_WEIGHT": 1.0, "REVIEWKD_WEIGHT": 1.0, "WARMUP_EPOCHS": 20, "SHAPES": [1, 8, 16, 32],
                 "OUT_SHAPES": [1, 8, 16, 32], "IN_CHANNELS": [64, 128, 256, 256],
                 "OUT_CHANNELS": [64, 128, 256, 256], "MAX_MID_CHANNEL": 512, "STU_PREACT": False},
    "DKD": {"CE_WEIGHT": 1.0, "ALPHA": 1.0, "BETA": 8.0, "T": 4.0, "WARMUP": 20},
}

# where mdistiller reads its CIFAR teachers (models/cifar/__init__.py; scripts/fetch_teachers.py
# puts them there), relative to the folder the command runs in
TEACHER_PATH = os.path.join("download_ckpts", "cifar_teachers", "{arch}_vanilla", "ckpt_epoch_240.pth")
LOGIT_STAND_TYPES = ("KD", "DKD", "MLKD")                  # the logit-standardization tools/train.py's
TRAINER_OF = {"KD": "base", "DKD": "base", "MLKD": "ours"}
ELSEWHERE = {"AT": "attention", "RKD": "rkd", "FITNET": "hint", "KDSVD": "kdsvd", "CRD": "crd", "NST": "nst",
             "PKT": "pkt", "SP": "similarity", "VID": "vid"}
NOT_HERE = {"OFD": "OFD", "REVIEWKD": "ReviewKD", "Sonly": "Sonly", "DOT": "DOT"}
DATASETS = {"cifar100": "cifar100"}                         # mdistiller's name -> --dataset
REFUSED_DATASETS = {
    "imagenet": "mdistiller's ImageNet teachers are torchvision's pretrained weights, which this toolkit "
                "does not download; use train_student.py --dataset imagenet --path_t CHECKPOINT",
    "tiny_imagenet": "mdistiller's tiny-ImageNet teacher (ti_res18) and MobileNetV2 are not this zoo's "
                     "models; use train_student.py --dataset tinyimagenet",
}


class MdistillerConfigError(ValueError):
    """A configuration that cannot be translated; the message is one line naming the key."""


def add_argument(parser: argparse.ArgumentParser):
    parser.add_argument("--mdistiller_cfg", default=None, metavar="FILE",
                        help="recorded in args.json: the mdistiller configuration tools/train.py translated "
                             "into these flags (tools/train.py sets it; it changes nothing)")


# -- yacs' merge rules -----------------------------------------------------------------------------
def decoded(value):
    """A value as yacs reads it: a string that is a Python literal becomes that literal."""
    if not isinstance(value, str):
        return value
    try:
        return literal_eval(value)
    except (ValueError, SyntaxError):
        return value


def _type_name(value) -> str:
    return "a section" if isinstance(value, dict) else f"{'an' if type(value).__name__[0] in 'aeiou' else 'a'} " \
                                                        f"{type(value).__name__}"


def coerced(value, default, key: str):
    """``value`` for ``key`` if it has the default's type (or stands for it: list/tuple, None), as
    yacs checks; a one-line error otherwise."""
    if type(value) is type(default) or (value is None and not isinstance(default, dict)) or default is None:
        return value
    if isinstance(value, (list, tuple)) and isinstance(default, (list, tuple)):
        return type(default)(value)
    if isinstance(default, dict):
        raise MdistillerConfigError(f"{key}: expected a section of keys ({', '.join(default)}), got {value!r}")
    raise MdistillerConfigError(f"{key}: expected {_type_name(default)} like mdistiller's default {default!r} "
                                f"(yacs requires the default's type), got {value!r} ({_type_name(value)})")


def _unknown(key: str, known) -> MdistillerConfigError:
    close = difflib.get_close_matches(key.split(".")[-1], list(known), n=1)
    hint = f" (did you mean {key.rsplit('.', 1)[0] + '.' if '.' in key else ''}{close[0]}?)" if close else ""
    return MdistillerConfigError(f"{key}: not a key of mdistiller's configuration{hint}")


def merged(base: Dict[str, Any], data: Mapping, prefix: str = "") -> Dict[str, Any]:
    """``data`` (a file's mapping) merged into a copy of ``base``, key by key, as yacs'
    ``merge_from_file`` does."""
    out = copy.deepcopy(base)
    for key, raw in data.items():
        full = f"{prefix}{key}"
        if not isinstance(key, str) or key not in out:
            raise _unknown(str(full), out)
        value = coerced(decoded(raw), out[key], full)
        if isinstance(out[key], dict):
            out[key] = merged(out[key], value, full + ".")
        else:
            out[key] = value
    return out


def merged_list(cfg: Dict[str, Any], pairs: Sequence[str]) -> Dict[str, Any]:
    """``KEY VALUE ...`` merged into a copy of ``cfg``, as yacs' ``merge_from_list`` does."""
    flags = [w for w in pairs[0::2] if w.startswith("--")]
    if flags:
        raise MdistillerConfigError(f"{flags[0]} comes after the KEY VALUE pairs, which take every word after "
                                    f"the first KEY (as in mdistiller): give the flags before them")
    if len(pairs) % 2:
        raise MdistillerConfigError(f"expected KEY VALUE pairs after the flags, got an odd number of words: "
                                    f"{' '.join(pairs)}")
    out = copy.deepcopy(cfg)
    for full, raw in zip(pairs[0::2], pairs[1::2]):
        node, parts = out, full.split(".")
        for i, part in enumerate(parts):
            if not isinstance(node, dict) or part not in node:
                raise _unknown(full, node if isinstance(node, dict) else {})
            if i < len(parts) - 1:
                node = node[part]
        if isinstance(node[parts[-1]], dict):
            raise MdistillerConfigError(f"{full}: a section, not a value (name one of its keys: "
                                        f"{', '.join(f'{full}.{k}' for k in node[parts[-1]])})")
        node[parts[-1]] = coerced(decoded(raw), node[parts[-1]], full)
    return out


def load(path: str, pairs: Sequence[str] = ()) -> Dict[str, Any]:
    """mdistiller's defaults, the file at ``path`` (``yaml.safe_load``) and the ``KEY VALUE`` pairs."""
    from .config_files import ConfigFileError, read_file
    if os.path.splitext(path)[1].lower() not in (".yaml", ".yml"):
        raise MdistillerConfigError(f"{path}: expected mdistiller's YAML configuration (.yaml)")
    try:
        data = read_file(path)
    except ConfigFileError as exc:
        raise MdistillerConfigError(str(exc)) from None
    try:
        return merged_list(merged(DEFAULTS, data), pairs)
    except MdistillerConfigError as exc:
        raise MdistillerConfigError(f"{path}: {exc}") from None


# -- the translation -------------------------------------------------------------------------------
def teacher_argv(cfg) -> List[str]:
    """The flags of the student-alone part (train_teacher.py's too): data, solver, log."""
    solver, log, data = cfg["SOLVER"], cfg["LOG"], cfg["DATASET"]
    return ["--batch_size", str(solver["BATCH_SIZE"]), "--epochs", str(solver["EPOCHS"]),
            "--learning_rate", str(solver["LR"]),
            "--lr_decay_epochs", ",".join(str(s) for s in solver["LR_DECAY_STAGES"]),
            "--lr_decay_rate", str(solver["LR_DECAY_RATE"]), "--weight_decay", str(solver["WEIGHT_DECAY"]),
            "--momentum", str(solver["MOMENTUM"]), "--num_workers", str(data["NUM_WORKERS"]),
            "--save_freq", str(log["SAVE_CHECKPOINT_FREQ"]), "--save_dir", str(log["PREFIX"])]


def _dataset(cfg, choices: Sequence[str]) -> str:
    name = cfg["DATASET"]["TYPE"]
    if name in REFUSED_DATASETS:
        raise MdistillerConfigError(f"DATASET.TYPE {name}: {REFUSED_DATASETS[name]}")
    dataset = DATASETS.get(name, name)
    if dataset not in choices:
        raise MdistillerConfigError(f"DATASET.TYPE {name!r}: expected cifar100 or a data set of this toolkit "
                                    f"({', '.join(choices)})")
    return dataset


def _method_argv(cfg, kind: str, stand: bool, stand_flag: bool, base_temp: float, kd_weight: float) -> List[str]:
    """The distillation flags of KD, DKD or MLKD (``stand``: logit standardization on;
    ``stand_flag``: by ``--logit-stand``, whose ``--base-temp``/``--kd-weight`` then replace the
    configuration's temperature and KD weight, as the logit-standardization tools/train.py does)."""
    if kind == "DKD":
        dkd = cfg["DKD"]
        argv = ["--distill", "dkd", "-r", str(dkd["CE_WEIGHT"]), "--dkd_alpha", str(dkd["ALPHA"]),
                "--dkd_beta", str(dkd["BETA"]), "--dkd_warmup", str(dkd["WARMUP"])]
        if not stand:
            return argv + ["--dkd_T", str(dkd["T"])]
        temp, weight = (base_temp, kd_weight) if stand_flag else (dkd["T"], 1.0)
        return argv + ["--logit-stand", "--base-temp", str(temp), "--kd-weight", str(weight)]
    kd = cfg["KD"]
    argv = ["--distill", kind.lower(), "-r", str(kd["LOSS"]["CE_WEIGHT"])]
    argv += ["--mlkd_mask", "reference"] if kind == "MLKD" else []
    if not stand:
        return argv + ["-a", str(kd["LOSS"]["KD_WEIGHT"]), "--kd_T", str(kd["TEMPERATURE"])]
    temp, weight = (base_temp, kd_weight) if stand_flag else (kd["TEMPERATURE"], kd["LOSS"]["KD_WEIGHT"])
    return argv + ["--logit-stand", "--base-temp", str(temp), "--kd-weight", str(weight)]


def translate(cfg, logit_stand: bool, base_temp: float, kd_weight: float, resume: bool,
              dataset_choices: Sequence[str]) -> Tuple[List[str], List[str]]:
    """``(train_student.py's argv, notes)`` of a merged configuration and tools/train.py's flags;
    a one-line ``MdistillerConfigError`` naming the key where this toolkit cannot run it."""
    kind, distiller, solver = cfg["DISTILLER"]["TYPE"], cfg["DISTILLER"], cfg["SOLVER"]
    notes = []
    dataset = _dataset(cfg, dataset_choices)
    if solver["TYPE"] != "SGD":
        raise MdistillerConfigError(f"SOLVER.TYPE {solver['TYPE']!r}: mdistiller trains with SGD only")
    if kind == "NONE":
        command = (["python", "train_teacher.py", "--model", str(distiller["STUDENT"]), "--dataset", dataset]
                   + teacher_argv(cfg))
        raise MdistillerConfigError(f"DISTILLER.TYPE NONE trains the student without a teacher: "
                                    f"{' '.join(command)}")
    if kind in ELSEWHERE:
        raise MdistillerConfigError(f"DISTILLER.TYPE {kind}: tools/train.py translates KD, DKD and MLKD (the "
                                    f"logit-standardization configurations); train_student.py --distill "
                                    f"{ELSEWHERE[kind]} runs {kind} (see its --help)")
    if kind in NOT_HERE or solver["TRAINER"] == "dot":
        name = NOT_HERE.get(kind, "DOT")
        raise MdistillerConfigError(f"{'DISTILLER.TYPE' if kind in NOT_HERE else 'SOLVER.TRAINER'} "
                                    f"{kind if kind in NOT_HERE else 'dot'}: {name} is not in this toolkit")
    if kind not in TRAINER_OF:
        raise MdistillerConfigError(f"DISTILLER.TYPE {kind!r}: not a method of mdistiller's that tools/train.py "
                                    f"translates (KD, DKD, MLKD)")
    if solver["TRAINER"] != TRAINER_OF[kind]:
        raise MdistillerConfigError(f"SOLVER.TRAINER {solver['TRAINER']!r}: DISTILLER.TYPE {kind} trains with "
                                    f"the trainer {TRAINER_OF[kind]!r}")
    teacher_path = TEACHER_PATH.format(arch=distiller["TEACHER"])
    if not os.path.isfile(teacher_path):
        raise MdistillerConfigError(f"DISTILLER.TEACHER {distiller['TEACHER']}: no checkpoint at {teacher_path}, "
                                    f"where mdistiller reads it (python scripts/fetch_teachers.py mdistiller "
                                    f"puts its published CIFAR-100 teachers there)")
    stand = (logit_stand and kind in LOGIT_STAND_TYPES) or bool(cfg["EXPERIMENT"]["LOGIT_STAND"])
    if cfg["LOG"]["WANDB"]:
        notes.append("LOG.WANDB True: no Weights & Biases here; the run logs to metrics.jsonl, log.txt and "
                     "TensorBoard in its folder")
    argv = (["--model_s", str(distiller["STUDENT"]), "--path_t", teacher_path, "--model_t",
             str(distiller["TEACHER"]), "--dataset", dataset]
            + _method_argv(cfg, kind, stand, logit_stand, base_temp, kd_weight) + teacher_argv(cfg))
    return argv + (["--resume"] if resume else []), notes
