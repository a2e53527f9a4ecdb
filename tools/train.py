"""mdistiller's command line: train a student from an mdistiller configuration file.

    python tools/train.py --cfg configs/cifar100/kd/resnet32x4_resnet8x4.yaml --logit-stand --base-temp 2 --kd-weight 9
    python tools/train.py --cfg configs/cifar100/dkd/resnet32x4_resnet8x4.yaml SOLVER.EPOCHS 1 DATASET.TYPE digits
    python tools/train.py --cfg ... --resume

As mdistiller's ``tools/train.py`` (github.com/megvii-research/mdistiller) and the
logit-standardization repository's (github.com/sunshangquan/logit-standardization-KD): the file is
merged into mdistiller's defaults, then the trailing ``KEY VALUE`` pairs (yacs' ``merge_from_list``);
``--logit-stand --base-temp T --kd-weight W`` standardize KD, DKD and MLKD as there. A thin adapter:
``helper.mdistiller_config`` translates the configuration into ``train_student.py``'s flags (and
says how each key maps), the equivalent ``python train_student.py ...`` command is printed, and the
run is exactly that command's run (same configuration, run folder and hash), with the file recorded
as ``mdistiller_cfg`` in its ``args.json``. Teachers are read where mdistiller reads them,
``download_ckpts/cifar_teachers/<arch>_vanilla/ckpt_epoch_240.pth`` under the current folder
(``python scripts/fetch_teachers.py mdistiller`` puts them there). Bad input is one line naming the
key, exit status 2.
"""
from __future__ import annotations

import argparse
import os
import shlex
import sys
from typing import List, Optional, Sequence, Tuple

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import train_student  # noqa: E402
from helper import mdistiller_config  # noqa: E402
from helper.options import OneLineParser, non_negative_float, positive_float  # noqa: E402

PROG = "tools/train.py"


def build_parser(student_parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    temp, weight = student_parser.get_default("base_temp"), student_parser.get_default("kd_weight")
    parser = OneLineParser(prog=PROG, description="Train a student from an mdistiller configuration file "
                                                  "(mdistiller's tools/train.py command line).")
    parser.add_argument("--cfg", required=True, metavar="FILE.yaml", help="mdistiller's configuration file")
    parser.add_argument("--resume", action="store_true", help="continue the run of this configuration")
    parser.add_argument("--logit-stand", action="store_true",
                        help="logit standardization for KD, DKD and MLKD (Sun et al., CVPR 2024)")
    parser.add_argument("--base-temp", type=positive_float, default=None,
                        help=f"with --logit-stand: the temperature (default {temp}, train_student.py's)")
    parser.add_argument("--kd-weight", type=non_negative_float, default=None,
                        help=f"with --logit-stand: the KD weight; DKD's alpha and beta are multiplied by it "
                             f"(default {weight}, train_student.py's)")
    parser.add_argument("opts", nargs=argparse.REMAINDER, metavar="KEY VALUE",
                        help="configuration keys to override, e.g. SOLVER.EPOCHS 1 DATASET.TYPE digits")
    return parser


def translation(argv: Optional[Sequence[str]] = None) -> Tuple[List[str], List[str], str]:
    """``(train_student.py's argv, notes, the configuration file)`` of a tools/train.py command
    line; a flag error exits with one line, a configuration error raises ``MdistillerConfigError``."""
    student_parser = train_student.build_parser()
    parser = build_parser(student_parser)
    args = parser.parse_args(sys.argv[1:] if argv is None else list(argv))
    notes = []
    if not args.logit_stand:
        notes += [f"{flag} {value}: not used without --logit-stand (as in the logit-standardization tools/train.py)"
                  for flag, value in (("--base-temp", args.base_temp), ("--kd-weight", args.kd_weight))
                  if value is not None]
    cfg = mdistiller_config.load(args.cfg, args.opts)
    dataset = next(a for a in student_parser._actions if a.dest == "dataset")
    student, more = mdistiller_config.translate(
        cfg, args.logit_stand,
        student_parser.get_default("base_temp") if args.base_temp is None else args.base_temp,
        student_parser.get_default("kd_weight") if args.kd_weight is None else args.kd_weight,
        args.resume, sorted(dataset.choices))
    return student, notes + more, args.cfg


def main(argv: Optional[Sequence[str]] = None) -> int:
    try:
        student, notes, cfg = translation(argv)
    except mdistiller_config.MdistillerConfigError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 2
    for line in notes:
        print(f"{PROG}: note: {line}", file=sys.stderr)
    print(f"==> {PROG}: the run of python train_student.py {shlex.join(student)}", flush=True)
    return train_student.main(student + ["--mdistiller_cfg", os.path.abspath(cfg)])


if __name__ == "__main__":
    sys.exit(main())
