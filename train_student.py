"""Distil one or several teachers into a student (CA-MKD's and RepDistiller's command line).

    python train_student.py --model_s vgg8 --teacher_num 3 --distill inter --ensemble_method CAMKD \\
        --nesterov -r 1 -a 1 -b 50 --trial 0

Teachers come from the manifest written by train_teacher.py (via ``setting.py``): the first
``--teacher_num`` teachers registered for the data set, or ``--teachers NAME ...``; or from
explicit checkpoints ``--path_t PATH ...`` whose architecture is read from the checkpoint, from its
RepDistiller-style file name, or from ``--model_t``. With one teacher the run is plain
single-teacher distillation. Lists in ``--distill`` / ``--ensemble_method`` (and ``--logit-stand
both``) train a group of students in one process.

This file is the command line: the parser, the resolution of the flags into each student's frozen
configuration (``helper.student_config``) and ``main``; the library builds and trains the run
(``helper.student_run``).
"""
from __future__ import annotations

import argparse
import os
import sys

import distiller_zoo.defaults
from dataset import add_data_arguments
from distiller_zoo.registry import DISTILLERS, ENSEMBLES
from helper import (config_files, cuda_graphs, distributed, mdistiller_config, reference_flags, spot_adaptive,
                    student_config)
from helper.errors import RunError
from helper.manifest import ManifestError, manifest_path, teacher_names
from helper.objective import split_logit_stand
from helper.options import (OneLineParser, add_optimization_arguments, add_run_arguments, fail,
                            non_negative_float, non_negative_int, optional_label, positive_int)
from helper.preemption import StopOnSignals, exit_status, stopped_by
from helper.stop_messages import disk_message, error_message, is_space_error, room_action
from helper.student_run import StudentRun, TeacherSpec
from models import model_dict

PROG = "train_student.py"
STAND_WORDS = {"logit_stand": ("both",)}        # a configuration file may say logit_stand: both


def build_parser():
    parser = OneLineParser(description="Distil one or several teachers into a student.")
    g = parser.add_argument_group("student and teachers")
    g.add_argument("--model_s", type=str, default="resnet8",
                   help=f"student architecture: {', '.join(sorted(model_dict))}")
    g.add_argument("--teacher_num", type=positive_int, default=None,
                   help="number of teachers (default: those given by --teachers/--path_t, else 1)")
    g.add_argument("--teachers", nargs="+", default=None, metavar="NAME",
                   help="teacher names from the manifest / setting.py, e.g. cifar100-resnet32x4-0")
    g.add_argument("--path_t", "--path-t", nargs="+", default=None, metavar="PATH",
                   help="teacher checkpoints ({'model': state_dict, ...} or a bare state_dict)")
    g.add_argument("--model_t", nargs="+", default=None, metavar="ARCH",
                   help="architecture of each --path_t checkpoint (one for all, or one per path) when "
                        "neither the checkpoint nor its file name says it")
    g.add_argument("--skip_validation", "--skip-validation", action="store_true",
                   help="do not evaluate the teachers before training")
    g.add_argument("--fuse_teachers", action=argparse.BooleanOptionalAction, default=None,
                   help="run teachers of one architecture as one batched (vmap) forward (default: on for CUDA)")
    g.add_argument("--fold_bn", action=argparse.BooleanOptionalAction, default=None,
                   help="fold each teacher's BatchNorm into the convolution before it, once at load (fewer "
                        "operators per step; equal to float rounding, checked on a dry batch; default: on for CUDA)")
    g.add_argument("--student_img_size", type=positive_int, default=None, metavar="N",
                   help="the student sees the training and test images resized to N px on the device, after the "
                        "crop and flip; the teachers keep the data set's size (default: the data set's size, "
                        "224 for the vision transformers, as tiny-transformers)")
    g.add_argument("--tag", type=optional_label, default="",
                   help="appended to the run folder name, for runs that differ only in flags the name does not show")

    g = parser.add_argument_group("distillation (CA-MKD / RepDistiller)")
    g.add_argument("--distill", type=str, default="kd", metavar="LOSS[:W][@STRATEGY][+...][,...]",
                   help="the distillation terms, joined by '+', each a loss with an optional weight and ensemble "
                        "strategy, e.g. kd+attention:1000+crd:0.8@AEKD (a comma separates students of a group: "
                        "kd+attention,dkd); a logit term without a weight takes -a, a "
                        "feature term -b; without a logit term kd (-a) comes first. Losses: "
                        + ", ".join(sorted(DISTILLERS)))
    g.add_argument("--ensemble_method", type=str, default=None, metavar="STRATEGY[,STRATEGY...]",
                   help="how teachers are combined in terms without @STRATEGY (default: CAMKD with several "
                        "teachers, AVERAGE_LOSS with one): " + ", ".join(sorted(ENSEMBLES)) + ". A comma-"
                        "separated list (and a list in --distill, --logit-stand both) trains a group of "
                        "students in one process, the teachers' forward shared (README: groups)")
    g.add_argument("-r", "--gamma", type=non_negative_float, default=None, help="weight of the classification loss (1)")
    g.add_argument("-a", "--alpha", type=non_negative_float, default=None,
                   help="weight of logit terms given without one (1)")
    g.add_argument("-b", "--beta", type=non_negative_float, default=None,
                   help="weight of feature terms given without one (default: the first one's usual weight)")
    g.add_argument("--distill_decay", action="store_true",
                   help="decay the logit terms linearly to 0 over the second half of training (CE weight "
                        "1 - decayed -a); CA-MKD's own flag stops with UnboundLocalError there, so no "
                        "finished CA-MKD run used it")
    g.add_argument("--beta_delay_epochs", type=non_negative_int, default=1,
                   help="leave the feature terms out for this many first epochs (1, as CA-MKD; 0 as RepDistiller)")
    g.add_argument("--preact", action="store_true", help="use pre-activation features")
    g.add_argument("--init_epochs", type=non_negative_int, default=30,
                   help="epochs of connector pre-training for losses that have one (FT, AB, FSP; RepDistiller: 30)")
    distiller_zoo.defaults.add_arguments(parser)
    spot_adaptive.add_arguments(parser)

    add_data_arguments(parser)
    add_optimization_arguments(parser)
    cuda_graphs.add_arguments(parser)
    add_run_arguments(parser)
    config_files.add_argument(parser)
    mdistiller_config.add_argument(parser)
    reference_flags.add_arguments(parser, student=True)
    return parser


def parse_args(argv=None, parser=None) -> student_config.StudentPlan:
    """The students of a command line (with its ``--config`` files' flags first), each with its
    frozen configuration (a bad flag exits with one line, status 2); CA-MKD's and RepDistiller's
    flags that work another way here print one note each (``helper.reference_flags``)."""
    parser = parser or build_parser()
    argv = sys.argv[1:] if argv is None else list(argv)
    ns, stand_values = config_files.parse(parser, argv, split=split_logit_stand, words=STAND_WORDS)
    choice = reference_flags.resolve(parser, ns, argv, PROG)
    plan = student_config.resolve(parser, ns, stand_values, device=choice.device)
    reference_flags.announce(choice.notes, PROG)
    return plan


def resolve_teachers(parser, config):
    """The run's teachers, from ``--path_t`` or the manifest / ``setting.py`` (``--teachers`` or the
    first ``--teacher_num`` registered for the data set); a one-line flag error otherwise."""
    import setting            # here, not at the top: importing it reads the default save folder's manifest
    if config.path_t:
        archs = list(config.model_t or [None])
        archs = archs * len(config.path_t) if len(archs) == 1 else archs
        return [TeacherSpec(os.path.basename(os.path.dirname(os.path.abspath(p))) or p, p, a)
                for p, a in zip(config.path_t, archs)]
    try:
        known = setting.available_teachers(config.save_dir)
        names = list(config.teachers or teacher_names(known, config.dataset)[:config.teacher_num])
        if len(names) < config.teacher_num:
            fail(parser, f"--teacher_num {config.teacher_num}, but only {len(names)} teacher(s) are registered "
                         f"for {config.dataset} in {manifest_path(config.save_dir)} or setting.py (train more "
                         f"with train_teacher.py --trials, or pass --path_t)")
        return [TeacherSpec(n, setting.checked_teacher_path(n, config.save_dir), known[n].get("model"))
                for n in names]
    except ManifestError as exc:
        fail(parser, str(exc))


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser()
    plan = parse_args(argv, parser)
    teachers = resolve_teachers(parser, plan.shared)
    ctx = distributed.context_from_env()
    run = None
    with StopOnSignals() as stop:     # SIGTERM, SIGUSR1, SIGHUP stop the run as Ctrl-C does (helper.preemption)
        try:
            with stop.armed():
                distributed.join(ctx, plan.shared.device)
                run = StudentRun(parser, plan, teachers, ctx, prog=PROG)
                run.train()
            return 0
        except RunError as exc:
            print(f"{PROG}: error: {error_message(exc, PROG, argv, parser)}", file=sys.stderr)
            return exc.code
        except KeyboardInterrupt as exc:      # Ctrl-C, or a stop signal (preemption.StopSignal)
            if ctx.is_main:
                print(f"{PROG}: {stopped_by(exc)}; " + (run.stop_line(argv) if run is not None else
                                                        "no checkpoint was written; the same command starts the "
                                                        "run over"), file=sys.stderr)
            return exit_status(exc)
        except OSError as exc:            # a read-only or full save folder, ...
            then = ""
            if is_space_error(exc):
                then = f"; {room_action(exc)}, then: " + (run.stop_line(argv) if run is not None else
                                                          "run the same command again")
            print(f"{PROG}: error: {disk_message(exc)}{then}", file=sys.stderr)
            return 1
        finally:
            if run is not None:
                run.close()
            distributed.cleanup(ctx)


if __name__ == "__main__":
    sys.exit(main())
