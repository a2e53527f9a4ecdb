"""The flags of CA-MKD's and RepDistiller's scripts that this toolkit does another way: accepted, and
each given one says in one line what happens instead (or stops with one line saying what to run).

Read from the reference parsers (github.com/Rorozhl/CA-MKD and github.com/HobbitLong/RepDistiller,
``train_student.py`` and ``train_teacher.py``):

- ``--gpu_id IDS`` (CA-MKD: ``os.environ['CUDA_VISIBLE_DEVICES'] = gpu_id``, then the first visible
  GPU). One id ``K`` makes the run use ``cuda:K`` (``--device cuda:K``; the environment is left as it
  is). Without CUDA the run uses the CPU and says so; ``--device`` given as well wins; an id that names
  no GPU is a one-line error. Several ids only make sense with one process per GPU (CA-MKD itself fails
  with them without ``--multiprocessing-distributed``): a one-line error gives the torchrun command.
- ``--multiprocessing-distributed`` / ``--dist-url`` (CA-MKD: ``mp.spawn`` of one process per visible
  GPU on one node): refused in one line that gives the exact ``torchrun --nproc_per_node N`` command
  with the user's other flags (N: the ``--gpu_id`` ids, else the visible GPUs; ``--dist-url``'s host
  and port become torchrun's ``--master_addr``/``--master_port``). Under torchrun they change nothing.
- ``--dali cpu|gpu`` (CA-MKD's NVIDIA DALI loaders): CIFAR-sized data already lives on the training
  device and is augmented there in batches; image folders stream through ``--num_workers`` processes.
- ``--c_embed N`` (CA-MKD ``train_student.py``: parsed, never read; its embedding's width is each
  teacher's channel count, as here).
- ``--tb_freq N`` (RepDistiller: parsed, never read): TensorBoard gets one point per epoch.

None of them changes a result: they are in ``run_identity.NOT_RESULT``. ``-t`` (``--trial``),
``--path-t``, ``--print-freq`` and ``--skip-validation`` are plain aliases (``helper.options``,
``train_student.py``). The notes are printed once, by the scripts' ``parse_args``.
"""
from __future__ import annotations

import argparse
import shlex
import sys
from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple
from urllib.parse import urlsplit

import torch

from .distributed import DistContext, context_from_env
from .options import fail, positive_int

# the flags a torchrun command made from the user's cannot keep (torchrun replaces them)
LAUNCH_FLAGS = ("--multiprocessing-distributed", "--dist-url", "--gpu_id")
# flags that change nothing here: dest -> (flag, what happens instead); a script defines some of them
UNUSED = {
    "dali": ("--dali", "CIFAR-sized data is held on the training device as uint8 and augmented there in "
                       "batches, which is what CA-MKD's DALI pipeline was for (image folders stream through "
                       "--num_workers processes)"),
    "tb_freq": ("--tb_freq", "TensorBoard gets one point per epoch (RepDistiller parses --tb_freq but never "
                             "reads it)"),
    "c_embed": ("--c_embed", "CA-MKD parses it but never reads it; the embedding's width is each teacher's "
                             "channel count, as in CA-MKD"),
}


def gpu_ids(text) -> str:
    """``--gpu_id``: CUDA ids as CA-MKD's ``CUDA_VISIBLE_DEVICES`` takes them, ``0`` or ``0,1``
    (kept as that text; ``ids_of`` reads it)."""
    parts = [p.strip() for p in str(text).split(",")]
    if not all(p.isdigit() for p in parts) or len({int(p) for p in parts}) != len(parts):
        raise argparse.ArgumentTypeError(f"expected distinct CUDA device ids like 0 or 0,1, got {text!r}")
    return ",".join(str(int(p)) for p in parts)


def ids_of(text: Optional[str]) -> Optional[Tuple[int, ...]]:
    return None if text is None else tuple(int(p) for p in text.split(","))


def add_arguments(parser: argparse.ArgumentParser, student: bool):
    g = parser.add_argument_group("CA-MKD / RepDistiller flags done another way here (each says what "
                                  "happens instead; README: their flags)")
    g.add_argument("--gpu_id", type=gpu_ids, default=None, metavar="IDS",
                   help="CA-MKD's CUDA ids: one id K runs on cuda:K (as --device cuda:K, which wins if given); "
                        "without CUDA the CPU; several ids: use torchrun (the error says the command)")
    g.add_argument("--multiprocessing-distributed", action="store_true",
                   help="CA-MKD's one-node DDP spawn: refused with the equivalent torchrun command")
    g.add_argument("--dist-url", default=None, metavar="URL",
                   help="CA-MKD's rendezvous address (with --multiprocessing-distributed: torchrun's "
                        "--master_addr/--master_port)")
    g.add_argument("--dali", choices=("cpu", "gpu"), default=None,
                   help="CA-MKD's DALI loaders: not needed, CIFAR-sized data is augmented on the device")
    g.add_argument("--tb_freq", type=positive_int, default=None, metavar="N",
                   help="RepDistiller's (unused there too): TensorBoard gets one point per epoch")
    if student:
        g.add_argument("--c_embed", type=positive_int, default=None, metavar="N",
                       help="CA-MKD's (parsed, never read there): the embedding's width is each teacher's channels")


@dataclass(frozen=True)
class ReferenceChoice:
    """What the reference flags decided: the device asked for (``--device``, or what ``--gpu_id``
    names; None: the default) and the lines saying what happens instead."""
    device: Optional[str]
    notes: Tuple[str, ...]


def _launch_flag(token: str, longs: Sequence[str]) -> Optional[str]:
    """The launch flag ``token`` gives (``--flag``, ``--flag=value`` or an abbreviation argparse
    takes: the one long option it begins), else None."""
    if not token.startswith("--"):
        return None
    name = token.split("=", 1)[0]
    if name in LAUNCH_FLAGS:
        return name
    matches = [o for o in longs if o.startswith(name)]
    return matches[0] if len(matches) == 1 and matches[0] in LAUNCH_FLAGS else None


def without_launch_flags(argv: Sequence[str], parser) -> List[str]:
    """``argv`` less the flags torchrun replaces (and their values)."""
    longs = [o for a in parser._actions for o in a.option_strings if o.startswith("--")]
    out, i, argv = [], 0, list(argv)
    while i < len(argv):
        flag = _launch_flag(argv[i], longs)
        if flag is None:
            out.append(argv[i])
            i += 1
        else:
            i += 2 if flag != "--multiprocessing-distributed" and "=" not in argv[i] else 1
    return out


def torchrun_command(prog: str, argv: Sequence[str], parser, processes: int,
                     ids: Optional[Sequence[int]], dist_url: Optional[str]) -> str:
    """The torchrun line that runs ``prog`` with the user's other flags on ``processes`` GPUs."""
    parts = []
    if ids:
        parts.append("CUDA_VISIBLE_DEVICES=" + ",".join(str(i) for i in ids))
    parts += ["torchrun", "--nproc_per_node", str(processes)]
    if dist_url:
        where = urlsplit(dist_url)
        if where.hostname:
            parts += ["--master_addr", where.hostname]
        if where.port:
            parts += ["--master_port", str(where.port)]
    return " ".join(parts + [shlex.quote(prog)] + [shlex.quote(a) for a in without_launch_flags(argv, parser)])


def resolve(parser, ns, argv: Sequence[str], prog: str, ctx: Optional[DistContext] = None) -> ReferenceChoice:
    """The device and the notes of the reference flags in ``ns`` (``argv``: the user's command
    line, for a torchrun command); a one-line flag error where the run cannot go as asked."""
    ctx = context_from_env() if ctx is None else ctx
    notes: List[str] = []
    ids, shown = ids_of(ns.gpu_id), ns.gpu_id
    if ids is not None and ctx.enabled:
        fail(parser, f"--gpu_id {shown}: under torchrun each process uses cuda:<LOCAL_RANK>; leave --gpu_id out "
                     f"and put CUDA_VISIBLE_DEVICES={shown} before torchrun")
    if ids is not None and ns.device is None and torch.cuda.is_available() and max(ids) >= torch.cuda.device_count():
        visible = torch.cuda.device_count()
        fail(parser, f"--gpu_id {shown} names no GPU of this machine: it has {visible} visible CUDA GPU(s) "
                     f"(ids 0 to {visible - 1})")
    if ns.multiprocessing_distributed and ctx.enabled:
        notes.append("--multiprocessing-distributed: already one process per GPU under torchrun; nothing to spawn")
    elif ns.multiprocessing_distributed:
        if not torch.cuda.is_available():
            fail(parser, "--multiprocessing-distributed spawns one process per GPU, and no CUDA GPU is visible "
                         "on this machine: run the same command without it (one process)")
        count = len(ids) if ids else torch.cuda.device_count()
        fail(parser, "--multiprocessing-distributed: CA-MKD's spawn is torchrun's job here; run: "
                     + torchrun_command(prog, argv, parser, count, ids, ns.dist_url))
    elif ns.dist_url is not None:
        notes.append(f"--dist-url {ns.dist_url}: not used (it is the rendezvous of --multiprocessing-distributed; "
                     f"torchrun has its own)")
    device = ns.device
    if ids is not None:
        if ns.device is not None:
            notes.append(f"--gpu_id {shown}: not used, --device {ns.device} is given and wins")
        elif not torch.cuda.is_available():
            notes.append(f"--gpu_id {shown}: CUDA is not available on this machine; the run uses the CPU")
            device = "cpu"
        elif len(ids) > 1:
            fail(parser, f"--gpu_id {shown} names {len(ids)} GPUs and one process trains on one; for all of "
                         f"them run: " + torchrun_command(prog, argv, parser, len(ids), ids, ns.dist_url))
        else:
            device = f"cuda:{ids[0]}"
            notes.append(f"--gpu_id {shown}: the run uses {device} (as --device {device}; CUDA_VISIBLE_DEVICES "
                         f"is left as it is)")
    defined = {a.dest for a in parser._actions}
    for dest, (flag, instead) in UNUSED.items():
        if dest in defined and vars(ns)[dest] is not None:
            notes.append(f"{flag} {vars(ns)[dest]}: not used; {instead}")
    return ReferenceChoice(device, tuple(notes))


def announce(notes: Sequence[str], prog: str, ctx: Optional[DistContext] = None):
    """Print each note once (the main process of a torchrun job only)."""
    ctx = context_from_env() if ctx is None else ctx
    if ctx.is_main:
        for line in notes:
            print(f"{prog}: note: {line}", file=sys.stderr)
