"""CIFAR-100 and CIFAR-10 from the official "python version" archives, read with numpy + pickle.

Layout under ``--data_folder`` (the one torchvision uses, so existing data folders work):
``cifar-100-python/{train,test,meta}`` and ``cifar-10-batches-py/{data_batch_1..5,test_batch,
batches.meta}``. Each file is a pickled dict (written by Python 2, hence ``encoding='bytes'``)
with ``b'data'``: uint8 ``[N, 3072]``, each row the 1024 red, then green, then blue values of a
32x32 image in row-major order, so ``reshape(N, 3, 32, 32)`` is already CHW; and ``b'fine_labels'``
(CIFAR-100) or ``b'labels'`` (CIFAR-10).

Normalisation constants are RepDistiller's (CIFAR-100) and the usual CIFAR-10 ones, in [0,1] units.

Reading never runs code: the pickles are read by ``SafeUnpickler``, which admits only what CIFAR's
files hold (dicts, lists, bytes, str, numbers, and numpy arrays rebuilt by numpy's own
reconstructors), so a booby-trapped ``train`` file is refused before any of it runs. The extracted
files are also checked against the official MD5s (torchvision's list) unless ``verify`` is off
(``--no-verify``: your own data in CIFAR's format) or the data came from a caller's own archive
(``url``/``md5`` given: that archive's checksum was checked on download instead).
"""
from __future__ import annotations

import hashlib
import io
import pickle
from pathlib import Path
from typing import List, Sequence, Tuple

import numpy as np
import torch

from .base import DataError, DataOptions, DataSpec, TensorData, data_folder, one_line, \
    register_dataset
from .download import ensure_extracted

CIFAR100_URL = "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz"
CIFAR100_MD5 = "eb9058c3a382ffc7106e4002c42a8d85"
CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
CIFAR10_MD5 = "c58f30108f718f92721af3b95e74349a"

CIFAR100_SPEC = DataSpec("cifar100", 100, 32, 3, (0.5071, 0.4867, 0.4408), (0.2675, 0.2565, 0.2761),
                         50000, 10000)
CIFAR10_SPEC = DataSpec("cifar10", 10, 32, 3, (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616),
                        50000, 10000)

# MD5s of the files inside the official archives (as torchvision lists them)
OFFICIAL_FILE_MD5 = {
    "cifar100": {"train": "16019d7e3df5f24257cddd939b257f8d", "test": "f0ef6b0ae62326f3e7ffdfab6717acfc",
                 "meta": "7973b15100ade9c7d40fb424638fde48"},
    "cifar10": {"data_batch_1": "c99cafc152244af753f735de768cd75f", "data_batch_2": "d4bba439e000b95fd0a9bffe97cbabec",
                "data_batch_3": "54ebc095f3ab1f0389bbae665268c751", "data_batch_4": "634d18415352ddfa80567beed471001a",
                "data_batch_5": "482c414d41f54cd18b22e5b47cb7c3cb", "test_batch": "40351d587109b95175f43aff81a1287e",
                "batches.meta": "5ff9c542aee3614f3951f8cda6e48888"},
}


def _numpy_reconstruct():
    try:
        from numpy._core.multiarray import _reconstruct          # numpy >= 2
    except ImportError:  # pragma: no cover - numpy 1.x
        from numpy.core.multiarray import _reconstruct
    return _reconstruct


def _numpy_frombuffer():
    try:
        from numpy._core.numeric import _frombuffer
    except ImportError:  # pragma: no cover - numpy 1.x
        from numpy.core.numeric import _frombuffer
    return _frombuffer


def _latin1_encode(text, encoding="latin1", *rest):
    """``_codecs.encode`` as Python 3's protocol-2 pickles use it for bytes, and nothing else."""
    if encoding != "latin1" or rest or not isinstance(text, str):
        raise pickle.UnpicklingError(f"_codecs.encode with {encoding!r} is not allowed in a CIFAR file")
    return text.encode("latin1")


# The only globals a CIFAR file may name: numpy's array reconstruction (the module moved from
# numpy.core to numpy._core in numpy 2; _frombuffer is protocol 5's form) and the bytes encoder
# of Python 3's protocol-2 pickles. Anything else (os.system, builtins.eval, ...) is refused.
_ALLOWED_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"): _numpy_reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): _numpy_reconstruct,
    ("numpy.core.numeric", "_frombuffer"): _numpy_frombuffer,
    ("numpy._core.numeric", "_frombuffer"): _numpy_frombuffer,
    ("numpy", "ndarray"): lambda: np.ndarray,
    ("numpy", "dtype"): lambda: np.dtype,
    ("_codecs", "encode"): lambda: _latin1_encode,
}


class SafeUnpickler(pickle.Unpickler):
    """An unpickler that admits only the globals of ``_ALLOWED_GLOBALS`` (no code can run)."""

    def find_class(self, module, name):
        factory = _ALLOWED_GLOBALS.get((module, name))
        if factory is None:
            raise pickle.UnpicklingError(f"it names {module}.{name}, which a CIFAR file never contains "
                                         f"(refused: unpickling it could run code)")
        return factory()

    def persistent_load(self, pid):
        raise pickle.UnpicklingError("persistent ids are not allowed in a CIFAR file")


def safe_load(path: Path):
    with open(path, "rb") as f:
        return SafeUnpickler(io.BufferedReader(f), encoding="bytes").load()


def file_md5(path: Path) -> str:
    h = hashlib.md5()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def verify_official(name: str, folder: Path, files: Sequence[str]):
    """Each file must be the official one; a one-line DataError names the first that is not."""
    for f in files:
        want = OFFICIAL_FILE_MD5[name][f]
        got = file_md5(folder / f)
        if got != want:
            raise DataError(f"{folder / f} is not the official {_FORMATS[name][-1]} file (md5 {got}, "
                            f"expected {want}): delete {folder} to download it again, or pass --no-verify "
                            f"if it is your own data in CIFAR's format")


# (folder, train files, test files, meta file, label key, label-names key, url, md5, title)
_FORMATS = {
    "cifar100": ("cifar-100-python", ["train"], ["test"], "meta", b"fine_labels",
                 b"fine_label_names", CIFAR100_URL, CIFAR100_MD5, "CIFAR-100"),
    "cifar10": ("cifar-10-batches-py", [f"data_batch_{i}" for i in range(1, 6)], ["test_batch"],
                "batches.meta", b"labels", b"label_names", CIFAR10_URL, CIFAR10_MD5, "CIFAR-10"),
}


def cifar_folder(name: str, root: str, *, download: bool = True, url: str | None = None,
                 md5: str | None = None) -> Path:
    """The extracted folder of ``name`` ('cifar100' or 'cifar10') under ``root``, downloaded from
    ``url`` (default: the official archive) and checked against ``md5`` if absent."""
    dirname, train, test, meta, *_, off_url, off_md5, title = _FORMATS[name]
    return ensure_extracted(root, dirname, [*train, *test, meta], url=url or off_url,
                            md5=(md5 or off_md5).lower(), download=download, what=title)


def read_batch(path: Path, label_key: bytes) -> Tuple[np.ndarray, np.ndarray]:
    """One official pickle -> (uint8 [N, 3, 32, 32], int64 [N]); any defect is a ``DataError``."""
    try:
        d = safe_load(path)
        data = np.asarray(d[b"data"])
        labels = np.asarray(d[label_key], dtype=np.int64)
    except FileNotFoundError:
        raise DataError(f"missing CIFAR file {path}") from None
    except Exception as e:  # unpickling garbage raises almost anything
        detail = f"missing key {e}" if isinstance(e, KeyError) else f"{type(e).__name__}: {one_line(e)}"
        raise DataError(f"corrupt CIFAR file {path} ({detail}); expected a pickled dict with "
                        f"b'data' and {label_key!r} (delete the folder to download it again)") \
            from None
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072 \
            or labels.shape != (data.shape[0],):
        raise DataError(f"corrupt CIFAR file {path}: expected b'data' uint8 [N, 3072] and N labels, "
                        f"got {data.dtype} {data.shape} and {labels.shape[0]} labels")
    return data.reshape(-1, 3, 32, 32), labels


def read_meta(path: Path, key: bytes) -> Tuple[str, ...]:
    try:
        names = safe_load(path)[key]
        return tuple(n.decode() if isinstance(n, bytes) else str(n) for n in names)
    except Exception as e:
        raise DataError(f"corrupt CIFAR file {path} ({type(e).__name__}: {one_line(e)}); expected a "
                        f"pickled dict with {key!r}") from None


def load_cifar(name: str, root: str, *, download: bool = True, url: str | None = None,
               md5: str | None = None, verify: bool = True) -> TensorData:
    """Read (downloading if allowed and needed) CIFAR-100 or CIFAR-10 into uint8 tensors.

    ``verify``: check the files against the official MD5s first; skipped for data that came from
    the caller's own archive (``url`` or ``md5`` given), whose checksum was checked instead."""
    folder = cifar_folder(name, root, download=download, url=url, md5=md5)
    dirname, train, test, meta, label_key, names_key, *_ = _FORMATS[name]
    if verify and url is None and md5 is None:
        verify_official(name, folder, [*train, *test, meta])
    spec = CIFAR100_SPEC if name == "cifar100" else CIFAR10_SPEC

    def read(files: Sequence[str]):
        parts: List[Tuple[np.ndarray, np.ndarray]] = [read_batch(folder / f, label_key) for f in files]
        return (torch.from_numpy(np.concatenate([p[0] for p in parts])),
                torch.from_numpy(np.concatenate([p[1] for p in parts])))

    (xtr, ytr), (xte, yte) = read(train), read(test)
    names = read_meta(folder / meta, names_key)
    for split, y in (("train", ytr), ("test", yte)):
        if len(y) and (int(y.min()) < 0 or int(y.max()) >= spec.num_classes):
            raise DataError(f"corrupt CIFAR {split} labels in {folder}: expected 0.."
                            f"{spec.num_classes - 1}, got {int(y.min())}..{int(y.max())}")
    spec = DataSpec(spec.name, spec.num_classes, 32, 3, spec.mean, spec.std, len(ytr), len(yte))
    return TensorData(spec, xtr, ytr, xte, yte, names)


@register_dataset("cifar100", spec=CIFAR100_SPEC)
def build_cifar100(options: DataOptions) -> TensorData:
    """CIFAR-100 (official python archive, downloaded and MD5-checked if missing)."""
    return load_cifar("cifar100", data_folder(options), download=options.download,
                      url=options.url, md5=options.md5, verify=options.verify)


@register_dataset("cifar10", spec=CIFAR10_SPEC)
def build_cifar10(options: DataOptions) -> TensorData:
    """CIFAR-10 (official python archive, downloaded and MD5-checked if missing)."""
    return load_cifar("cifar10", data_folder(options), download=options.download,
                      url=options.url, md5=options.md5, verify=options.verify)
