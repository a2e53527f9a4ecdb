"""CIFAR-100 and CIFAR-10 from the official "python version" archives, read with numpy + pickle.

Layout under ``--data_folder`` (the one torchvision uses, so existing data folders work):
``cifar-100-python/{train,test,meta}`` and ``cifar-10-batches-py/{data_batch_1..5,test_batch,
batches.meta}``. Each file is a pickled dict (written by Python 2, hence ``encoding='bytes'``)
with ``b'data'``: uint8 ``[N, 3072]``, each row the 1024 red, then green, then blue values of a
32x32 image in row-major order, so ``reshape(N, 3, 32, 32)`` is already CHW; and ``b'fine_labels'``
(CIFAR-100) or ``b'labels'`` (CIFAR-10).

Normalisation constants are RepDistiller's (CIFAR-100) and the usual CIFAR-10 ones, in [0,1] units.
"""
from __future__ import annotations

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
        with open(path, "rb") as f:
            d = pickle.load(f, encoding="bytes")
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
        with open(path, "rb") as f:
            names = pickle.load(f, encoding="bytes")[key]
        return tuple(n.decode() if isinstance(n, bytes) else str(n) for n in names)
    except Exception as e:
        raise DataError(f"corrupt CIFAR file {path} ({type(e).__name__}: {one_line(e)}); expected a "
                        f"pickled dict with {key!r}") from None


def load_cifar(name: str, root: str, *, download: bool = True, url: str | None = None,
               md5: str | None = None) -> TensorData:
    """Read (downloading if allowed and needed) CIFAR-100 or CIFAR-10 into uint8 tensors."""
    folder = cifar_folder(name, root, download=download, url=url, md5=md5)
    dirname, train, test, meta, label_key, names_key, *_ = _FORMATS[name]
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
                      url=options.url, md5=options.md5)


@register_dataset("cifar10", spec=CIFAR10_SPEC)
def build_cifar10(options: DataOptions) -> TensorData:
    """CIFAR-10 (official python archive, downloaded and MD5-checked if missing)."""
    return load_cifar("cifar10", data_folder(options), download=options.download,
                      url=options.url, md5=options.md5)
