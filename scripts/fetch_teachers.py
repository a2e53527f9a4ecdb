"""Published teachers in one command: download, check, extract, and record them in the manifest.

    python scripts/fetch_teachers.py mdistiller                  # ./download_ckpts/cifar_teachers/, ./save/manifest.json
    python scripts/fetch_teachers.py mdistiller --url URL        # the same archive from a mirror
    python scripts/fetch_teachers.py mdistiller --dest DIR --save_dir DIR

``mdistiller``: the CIFAR-100 teachers that mdistiller (github.com/megvii-research/mdistiller)
publishes as the release asset ``cifar_teachers.tar`` of its ``checkpoints`` release (its README:
"Download the cifar_teachers.tar ... and untar it to ./download_ckpts"), the teachers of
RepDistiller's, DKD's, MLKD's and the logit-standardization tables (mdistiller's
``models/cifar/__init__.py`` expects resnet56, resnet110, resnet32x4, ResNet50, wrn_40_2, vgg13). The archive is extracted into mdistiller's layout,
``<--dest>/cifar_teachers/<arch>_vanilla/ckpt_epoch_240.pth``, with ``--dest`` the current
directory's ``download_ckpts`` as mdistiller expects, and every teacher is recorded in
``<--save_dir>/manifest.json`` as ``cifar100-<arch>-vanilla``, so that both

    python train_student.py --teachers cifar100-resnet32x4-vanilla ...
    python train_student.py --path_t download_ckpts/cifar_teachers/resnet32x4_vanilla/ckpt_epoch_240.pth ...

find it (the folder name gives the architecture: the checkpoints say neither it nor their data
set). Running it again with the folder in place downloads nothing, checks the folder and records
its teachers again.

What is checked: no stored source states the archive's size or checksum (``ARCHIVE_MD5`` is
``None``; set it and the download is compared with it), so the check is on structure only: a tar whose members are
``cifar_teachers/<arch>_vanilla/ckpt_epoch_240.pth`` (and their folders) with ``<arch>`` in the
model zoo, each a RepDistiller-format checkpoint (``{'model': state_dict, ...}``) that loads
strictly into that architecture with 100 classes (``models.checkpoint.load_model``). The download
itself is ``dataset.download.ensure_extracted``'s, the CIFAR downloader: streamed to a hidden
temporary file, extracted into a hidden temporary folder, checked, and only then renamed into
place, so an interrupted, truncated or refused download leaves nothing behind; a member outside
its folder (``../``, an absolute path, a link) is refused before anything is extracted.
"""
from __future__ import annotations

import argparse
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional, Tuple

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from dataset.base import DataError  # noqa: E402
from dataset.download import ensure_extracted  # noqa: E402
from helper.manifest import ManifestError, add_teacher, entry_name, manifest_path  # noqa: E402
from helper.options import OneLineParser, add_run_arguments, folder_path  # noqa: E402

PROG = "fetch_teachers.py"
# mdistiller's README links the release page (releases/tag/checkpoints); this is GitHub's address of
# that release's asset cifar_teachers.tar (the same address other projects' download scripts use)
MDISTILLER_URL = "https://github.com/megvii-research/mdistiller/releases/download/checkpoints/cifar_teachers.tar"
# No stored source states the official archive's checksum (or size): the check is on structure only.
ARCHIVE_MD5: Optional[str] = None


@dataclass(frozen=True)
class TeacherSource:
    """A published archive of teachers: ``<folder>/<arch><suffix>/<checkpoint>`` members."""
    url: str
    archive_name: str
    folder: str
    dataset: str
    num_classes: int
    suffix: str
    checkpoint: str
    trial: str                       # the manifest names teachers <dataset>-<arch>-<trial>
    md5: Optional[str]
    about: str

    def member(self, arch: str = "<arch>") -> str:
        return f"{self.folder}/{arch}{self.suffix}/{self.checkpoint}"


SOURCES = {
    "mdistiller": TeacherSource(
        url=MDISTILLER_URL, archive_name="cifar_teachers.tar", folder="cifar_teachers", dataset="cifar100",
        num_classes=100, suffix="_vanilla", checkpoint="ckpt_epoch_240.pth", trial="vanilla", md5=ARCHIVE_MD5,
        about="mdistiller's CIFAR-100 teachers (release 'checkpoints', cifar_teachers.tar)"),
}


def check_teachers(folder: Path, source: TeacherSource, where: str) -> List[Tuple[str, Path, dict]]:
    """``[(arch, checkpoint path relative to folder, meta)]`` of an extracted ``<folder>`` laid out
    as ``source`` says; a one-line ``DataError`` naming ``where`` and the member otherwise."""
    from models import model_dict
    from models.checkpoint import CheckpointError, infer_arch, load_model, read_state_dict

    expected = f"only {source.member()} with <arch> a model of the zoo"
    teachers = []
    for path in sorted(folder.rglob("*")):
        rel = path.relative_to(folder)
        member = f"{source.folder}/{rel.as_posix()}"
        if path.is_symlink() or not (path.is_dir() or path.is_file()):
            raise DataError(f"{where}: {member} is not a plain file or folder; expected {expected}")
        if path.is_dir():
            if len(rel.parts) != 1 or not rel.name.endswith(source.suffix):
                raise DataError(f"{where}: unexpected folder {member}/; expected {expected}")
            continue
        if len(rel.parts) != 2 or rel.name != source.checkpoint or not rel.parts[0].endswith(source.suffix):
            raise DataError(f"{where}: unexpected file {member}; expected {expected}")
        arch = rel.parts[0][:-len(source.suffix)]
        if arch not in model_dict:
            raise DataError(f"{where}: {member}: {arch!r} is not a model of the zoo (models.model_dict)")
        try:
            load_model(path, arch=arch, num_classes=source.num_classes)
            meta = read_state_dict(path)[1]
        except CheckpointError as exc:
            problem = str(exc).split(f"{path}: ", 1)[-1]
            raise DataError(f"{where}: {member} {problem}") from None
        if infer_arch(path, meta) != arch:
            raise DataError(f"{where}: {member} says its architecture is {infer_arch(path, meta)!r}, its "
                            f"folder {arch!r}")
        teachers.append((arch, rel, meta))
    if not teachers:
        raise DataError(f"{where}: no teacher checkpoints; expected {source.member()}")
    return teachers


def writable_problem(folder: str) -> Optional[str]:
    """Why ``folder`` cannot be created or written into, or None."""
    parent = Path(folder).expanduser().absolute()
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        return f"{parent} is a file"
    if not os.access(parent, os.W_OK | os.X_OK):
        return f"{parent} is not writable"
    return None


def build_parser() -> argparse.ArgumentParser:
    run = argparse.ArgumentParser(add_help=False)
    add_run_arguments(run)                         # --save_dir's default: the training scripts' own
    parser = OneLineParser(prog=PROG, description="Download published teachers, check them, extract them "
                                                  "into their authors' layout and record them in the manifest.")
    parser.add_argument("source", choices=sorted(SOURCES), help="whose teachers: " + "; ".join(
        f"{name}: {s.about}" for name, s in sorted(SOURCES.items())))
    parser.add_argument("--url", default=None, help="fetch the same archive from this address (a mirror; "
                                                    "default: the official release asset)")
    parser.add_argument("--dest", type=folder_path, default="download_ckpts",
                        help="where the archive's folder goes (default: ./download_ckpts, as mdistiller expects)")
    parser.add_argument("--save_dir", type=folder_path, default=run.get_default("save_dir"),
                        help="the teacher manifest's folder, as train_student.py's --save_dir "
                             f"(default: {run.get_default('save_dir')})")
    return parser


def fetch(args) -> List[str]:
    """Download (unless present), check, extract, record; returns the manifest names."""
    source = SOURCES[args.source]
    url = args.url or source.url
    for flag, folder in (("--dest", args.dest), ("--save_dir", args.save_dir)):
        problem = writable_problem(folder)
        if problem:
            raise DataError(f"{flag} {folder}: cannot write there ({problem})")
    target = Path(args.dest).expanduser() / source.folder
    if target.exists():
        if not target.is_dir():
            raise DataError(f"{target} is not a folder; expected {source.folder}/ under --dest {args.dest}")
        teachers = check_teachers(target, source, f"{target} (delete it to download again)")
        print(f"{PROG}: {target} is already there; checked, not downloaded", file=sys.stderr)
    else:
        teachers = []

        def check(extracted: Path):                 # runs before the folder is moved into place
            teachers.extend(check_teachers(extracted, source, f"archive {url}"))

        ensure_extracted(args.dest, source.folder, (), url=url, md5=source.md5, download=True,
                         what=f"{args.source} teachers", archive_name=source.archive_name, folder_flag="--dest",
                         check=check)
    manifest = manifest_path(args.save_dir)
    names = []
    for arch, rel, meta in teachers:
        path = target / rel
        accuracy = meta.get("best_acc", meta.get("accuracy"))
        names.append(add_teacher(manifest, model=arch, dataset=source.dataset, trial=source.trial,
                                 checkpoint=str(path), num_classes=source.num_classes,
                                 best_acc=float(accuracy) if isinstance(accuracy, (int, float)) else None,
                                 extra={"origin": args.source, "url": url}))
        print(f"{entry_name(source.dataset, arch, source.trial)}: {path}")
    print(f"{PROG}: {len(names)} teachers recorded in {manifest}; use them with "
          f"train_student.py --teachers {names[0]} ... or --path_t {target / teachers[0][1]}", file=sys.stderr)
    return names


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        fetch(args)
    except (DataError, ManifestError) as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:
        where = exc.filename or args.save_dir
        print(f"{PROG}: error: cannot write {where}: {exc.strerror or exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted; nothing was left half-written (run the same command again)", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
