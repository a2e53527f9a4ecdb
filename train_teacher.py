"""Train teacher networks, several seeds in one command, and record them in the teacher manifest.

    python train_teacher.py --model resnet32x4 --trials 0,1,2
    python train_teacher.py --model resnet8 --dataset digits --epochs 15 --trials 3

Each trial is an independent run with its own seed (``--seed`` + trial) in
``<save_dir>/teachers/<model>_<dataset>_lr_<lr>_decay_<wd>_trial_<t>/`` (RepDistiller's naming),
with ``<model>_best.pth``/``<model>_last.pth``, ``args.json``, ``metrics.jsonl`` and TensorBoard
events. Finished teachers are added to ``<save_dir>/manifest.json``, which ``setting.py`` and
``train_student.py`` read.

This file is the command line: the parser, the resolution of the flags into each trial's frozen
configuration (``helper.teacher_config``) and ``main``; the library trains them
(``helper.teacher_run``).
"""
from __future__ import annotations

import sys

from dataset import add_data_arguments
from distiller_zoo.registry import CLASSIFICATION_LOSSES
from helper import config_files, cuda_graphs, distributed, reference_flags, teacher_config
from helper.errors import RunError
from helper.manifest import ManifestError, manifest_path, read_manifest
from helper.options import OneLineParser, add_optimization_arguments, add_run_arguments, optional_label
from helper.preemption import StopOnSignals, exit_status, stopped_by
from helper.stop_messages import disk_message, error_message, is_space_error, room_action
from helper.teacher_run import TeacherRun
from models import imagenet_model_dict, model_dict

PROG = "train_teacher.py"


def build_parser():
    parser = OneLineParser(description="Train teacher networks (one run per trial).")
    parser.add_argument("--model", type=str, default="resnet110",
                        help=f"architecture: {', '.join(sorted(model_dict))} (CIFAR-sized), "
                             f"{', '.join(sorted(imagenet_model_dict))} (--dataset imagenet)")
    parser.add_argument("--loss", type=str, default="ce", choices=sorted(CLASSIFICATION_LOSSES),
                        help="classification loss the teacher is trained with")
    parser.add_argument("--trials", type=str, default=None,
                        help="several trials in one command: a list like 0,1,2 or a count N (trials 0..N-1); "
                             "overrides --trial")
    parser.add_argument("--tag", type=optional_label, default="",
                        help="appended to the run folder's and the manifest entry's names (runs kept apart)")
    add_data_arguments(parser)
    add_optimization_arguments(parser)
    cuda_graphs.add_arguments(parser)
    add_run_arguments(parser, short_trial=True)          # -t: RepDistiller's and CA-MKD's
    config_files.add_argument(parser)
    reference_flags.add_arguments(parser, student=False)
    return parser


def parse_args(argv=None, parser=None):
    """Each trial's frozen configuration, from the command line with its ``--config`` files' flags
    first (a bad flag exits with one line, status 2); CA-MKD's and RepDistiller's flags that work
    another way here print one note each (``helper.reference_flags``)."""
    parser = parser or build_parser()
    argv = sys.argv[1:] if argv is None else list(argv)
    ns, _ = config_files.parse(parser, argv)
    choice = reference_flags.resolve(parser, ns, argv, PROG)
    trials = teacher_config.resolve(parser, ns, device=choice.device)
    reference_flags.announce(choice.notes, PROG)
    return trials


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser()
    trials = parse_args(argv, parser)
    try:
        read_manifest(manifest_path(trials[0].save_dir))    # before any training: a trained teacher must be recordable
    except ManifestError as exc:
        print(f"{PROG}: error: {exc} (repair or delete it before training teachers)", file=sys.stderr)
        return 2
    ctx = distributed.context_from_env()
    run = TeacherRun(parser, trials, ctx, prog=PROG)
    with StopOnSignals() as stop:     # SIGTERM, SIGUSR1, SIGHUP stop the run as Ctrl-C does (helper.preemption)
        try:
            with stop.armed():
                distributed.join(ctx, trials[0].device)
                results = run.train()
        except RunError as exc:
            print(f"{PROG}: error: {error_message(exc, PROG, argv, parser)}", file=sys.stderr)
            return exc.code
        except KeyboardInterrupt as exc:      # Ctrl-C, or a stop signal (preemption.StopSignal)
            if ctx.is_main:
                print(f"{PROG}: {stopped_by(exc)}{run.where()}; {run.stop_line(argv)}", file=sys.stderr)
            return exit_status(exc)
        except OSError as exc:            # a read-only or full save folder, ...
            then = f"; {room_action(exc)}, then{run.where()}: {run.stop_line(argv)}" if is_space_error(exc) else ""
            print(f"{PROG}: error: {disk_message(exc)}{then}", file=sys.stderr)
            return 1
        finally:
            distributed.cleanup(ctx)
    if ctx.is_main:
        print("==> teachers:")
        for name, s in results:
            print(f"    {name:40s} best {s['best_acc']:6.2f}  last {s['last_acc']:6.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
