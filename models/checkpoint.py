"""Loading model checkpoints: one reader for RepDistiller, mdistiller, CA-MKD and our own files.

- ``read_state_dict(path) -> (state_dict, meta)``: a weights-only ``torch.load`` of
  ``{'model': state_dict, 'epoch': ..., 'best_acc': ..., ...}`` (also ``'state_dict'``), or of a
  bare state_dict (besides tensors it rebuilds only argparse options and numpy scalars:
  ``_safe_extras``); ``module.`` (DataParallel/DDP) and ``_orig_mod.`` (``torch.compile``) prefixes
  are stripped; ``meta`` holds the other top-level entries that are plain values.
- ``infer_arch(path, meta)``: ``meta['arch']``, else the architecture in RepDistiller-style file
  and folder names (``resnet32x4_best.pth``, ``resnet32x4_cifar100_lr_0.05_.../ckpt_epoch_240.pth``,
  student folders ``S:resnet8x4_T:...``, CA-MKD's ``S~...``); the longest registered name wins.
- ``load_model(path, arch=None, num_classes=None, ...)``: builds the architecture with the
  checkpoint's class count, loads strictly, returns it in eval mode. CA-MKD trains torchvision's
  ImageNet layouts on CIFAR under the names ResNet18/34/50/101, which in the CIFAR zoo (and
  RepDistiller, mdistiller) are the ``resnetv2`` networks: a CIFAR checkpoint under such a name that
  fits only the ImageNet zoo's network of that name loads into that one (``input_size`` 32).

Everything that can go wrong is a ``CheckpointError`` (a ``ValueError``) with a one-line message
that names the file and what did not match, so a script can print it instead of a traceback.
"""
from __future__ import annotations

import argparse
import pickle
import re
from collections import OrderedDict
from collections.abc import Mapping
from pathlib import Path
from typing import Dict, Optional, Tuple

import torch
import torch.nn as nn

from .registry import imagenet_model_cfg, imagenet_model_dict, model_cfg, model_dict

_PREFIXES = ("module.", "_orig_mod.")        # DataParallel/DDP, torch.compile
_STATE_KEYS = ("model", "state_dict")        # where training scripts put the weights
_PLAIN = (str, int, float, bool, type(None))


class CheckpointError(ValueError):
    """A checkpoint that cannot be used; the message is one line naming the file."""

    def __init__(self, message: str):
        super().__init__(" ".join(str(message).split()))


def _fail(path, problem: str) -> CheckpointError:
    return CheckpointError(f"checkpoint {path}: {problem}")


def _few(keys, n: int = 3) -> str:
    keys = list(keys)
    shown = ", ".join(keys[:n])
    return shown + (f" (+{len(keys) - n} more)" if len(keys) > n else "")


def _load_error(path: Path, err: Exception) -> CheckpointError:
    """Turn whatever torch.load raised into one sentence about the file."""
    text = str(err)
    if isinstance(err, pickle.UnpicklingError) and "Weights only load failed" in text:
        found = re.search(r"Unsupported global: GLOBAL (\S+)", text)
        if found:
            return _fail(path, f"stores Python objects ({found.group(1)}) that a weights-only load "
                               "refuses; re-save it with tensors and plain values only")
        return _fail(path, "is not a PyTorch checkpoint (a pickle that a weights-only load refuses)")
    try:
        with open(path, "rb") as f:
            head = f.read(4)
    except OSError as e:
        return _fail(path, f"cannot be read ({e.strerror or type(e).__name__})")
    if not head:
        return _fail(path, "is empty")
    if head != b"PK\x03\x04" and not head.startswith(b"\x80"):
        return _fail(path, "is not a PyTorch checkpoint (neither a torch.save zip archive nor a pickle)")
    if "Invalid magic number" in text:
        return _fail(path, "is not a PyTorch checkpoint (a plain pickle, or a corrupt legacy torch.save file)")
    first = next((line.strip() for line in text.splitlines() if line.strip()), "")
    first = first.split(". ")[0].rstrip(".")
    reason = f"{type(err).__name__}: {first}" if first else type(err).__name__
    if len(reason) > 160:
        reason = reason[:157] + "..."
    return _fail(path, f"is truncated or corrupt ({reason})")


def _plain(value):
    """A meta value as a plain Python value, or None when it is not one (0-d tensors count)."""
    if isinstance(value, _PLAIN):
        return value
    if isinstance(value, torch.Tensor) and value.numel() == 1 and value.dim() == 0:
        return value.item()
    return None


def _strip_prefixes(sd: "OrderedDict[str, torch.Tensor]") -> "OrderedDict[str, torch.Tensor]":
    changed = True
    while changed and sd:
        changed = False
        for prefix in _PREFIXES:
            if all(k.startswith(prefix) for k in sd):
                sd = OrderedDict((k[len(prefix):], v) for k, v in sd.items())
                changed = True
    return sd


def _safe_extras():
    """What a weights-only load may rebuild besides tensors and plain values: the argparse options
    scripts save next to the weights, and numpy scalars (older RepDistiller-era checkpoints, e.g.
    the teachers mdistiller publishes, keep their accuracy as one): numpy's scalar constructor,
    under its numpy 1 and numpy 2 names, with the numeric dtypes it reads. None of them runs code."""
    import numpy as np
    scalar = np.float64(0).__reduce__()[0]
    extras = [argparse.Namespace, np.dtype, scalar] + [type(np.dtype(code)) for code in "?bBhHiIlLqQefdgFD"]
    major, minor = (int(part) for part in torch.__version__.split("+")[0].split(".")[:2])
    if (major, minor) >= (2, 6):                 # (object, pickled name) pairs: torch 2.6 and later
        for name in ("numpy.core.multiarray.scalar", "numpy._core.multiarray.scalar"):
            if name != f"{scalar.__module__}.{scalar.__name__}":
                extras.append((scalar, name))
    return extras


def read_state_dict(path) -> Tuple["OrderedDict[str, torch.Tensor]", Dict[str, object]]:
    """``(state_dict, meta)`` of a checkpoint file; see the module docstring."""
    path = Path(path)
    if not path.exists():
        raise _fail(path, "no such file")
    if path.is_dir():
        raise _fail(path, "is a directory, not a checkpoint file")
    try:
        if hasattr(torch.serialization, "safe_globals"):
            with torch.serialization.safe_globals(_safe_extras()):
                obj = torch.load(path, map_location="cpu", weights_only=True)
        else:
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001  (corrupt files raise anything from EOFError to KeyError)
        raise _load_error(path, e) from e

    if not isinstance(obj, Mapping):
        raise _fail(path, f"holds a {type(obj).__name__}, not a state_dict or a dict with a 'model' entry")
    weights, rest = obj, {}
    for key in _STATE_KEYS:
        if isinstance(obj.get(key), Mapping):
            weights, rest = obj[key], {k: v for k, v in obj.items() if k != key}
            break
    sd = OrderedDict((str(k), v) for k, v in weights.items() if isinstance(v, torch.Tensor))
    if not sd:
        raise _fail(path, "contains no tensors (expected a state_dict or a dict with a 'model' entry)")
    meta = {}
    for k, v in rest.items():                    # epoch, best_acc (often a 0-d tensor), arch, ...
        value = _plain(v)
        if value is not None or v is None:
            meta[str(k)] = value
    if weights is obj:                           # a bare dict: its non-tensor plain entries
        meta.update((str(k), v) for k, v in obj.items() if isinstance(v, _PLAIN))
    return _strip_prefixes(sd), meta


def _registered(imagenet: bool):
    return imagenet_model_dict if imagenet else model_dict


def _name_in(text: str, names) -> Optional[str]:
    for prefix in ("S:", "S~"):                  # RepDistiller / CA-MKD student folders
        if text.startswith(prefix):
            text = text[len(prefix):]
    for name in names:                           # longest first: resnet32x4 before resnet32
        if text == name or text.startswith(name + "_"):
            return name
    return None


def infer_arch(path, meta: Optional[Mapping] = None, imagenet: bool = False) -> Optional[str]:
    """The architecture of a checkpoint from ``meta['arch']`` or its file/folder name, else None."""
    if meta and isinstance(meta.get("arch"), str) and meta["arch"]:
        return meta["arch"]
    names = sorted(_registered(imagenet), key=len, reverse=True)
    path = Path(path)
    for text in (path.stem, path.parent.name):   # <arch>_best.pth, then <arch>_<dataset>_lr_.../
        name = _name_in(text, names)
        if name is not None:
            return name
    return None


def num_classes_of(state_dict: Mapping) -> int:
    """The class count of a classifier state_dict: the rows of its last 2-D ``.weight``."""
    for key in reversed(list(state_dict)):
        value = state_dict[key]
        if key.endswith("weight") and isinstance(value, torch.Tensor) and value.dim() == 2:
            return int(value.shape[0])
    raise ValueError("no classifier weight (a 2-D '.weight' tensor) in the state_dict")


def _build(table, name: str, n_cls: int, meta: Mapping, imagenet: bool) -> nn.Module:
    """The registered network ``name`` for a checkpoint with ``n_cls`` classes and ``meta``."""
    # a student trained at --student_img_size (a ViT is built for it; a CNN resizes its input)
    size = meta.get("img_size") if isinstance(meta.get("img_size"), int) else None
    takes_size = "img_size" in (imagenet_model_cfg if imagenet else model_cfg)[name].options
    model = table[name](num_classes=n_cls, **({"img_size": size} if size and takes_size else {}))
    if size:
        model.input_resize = size
    return model


def _mismatch(expected: Mapping, sd: Mapping) -> Optional[str]:
    """What keeps ``sd`` from loading strictly into a model whose state_dict is ``expected``, as one
    phrase (earliest key first), or None when it fits."""
    missing = [k for k in expected if k not in sd]
    unexpected = [k for k in sd if k not in expected]
    wrong = [k for k in expected if k in sd and tuple(sd[k].shape) != tuple(expected[k].shape)]
    if not (missing or unexpected or wrong):
        return None
    order = {k: i for i, k in enumerate(expected)}
    order.update((k, i) for i, k in enumerate(sd) if k not in order)
    parts = []                                    # (position of the first key, text): earliest first
    if missing:
        parts.append((order[missing[0]], f"missing keys {_few(missing)}"))
    if unexpected:
        parts.append((order[unexpected[0]], f"unexpected keys {_few(unexpected)}"))
    if wrong:
        k = wrong[0]
        more = f" (+{len(wrong) - 1} more)" if len(wrong) > 1 else ""
        parts.append((order[k], f"shape of {k} is {tuple(sd[k].shape)} in the file but "
                                f"{tuple(expected[k].shape)} in the model{more}"))
    return "; ".join(text for _, text in sorted(parts))


def load_model(path, arch: Optional[str] = None, num_classes: Optional[int] = None,
               imagenet: bool = False, device="cpu") -> nn.Module:
    """Build the checkpoint's architecture, load its weights strictly, return it in eval mode."""
    sd, meta = read_state_dict(path)
    guessed = infer_arch(path, meta, imagenet)
    name = arch or guessed
    if not name:
        raise _fail(path, "cannot tell its architecture from the file, its name or its folder; "
                          "pass the architecture explicitly")
    table = _registered(imagenet)
    if name not in table:
        kind = "ImageNet" if imagenet else "CIFAR"
        raise _fail(path, f"unknown {kind} architecture {name!r}; expected one of: {', '.join(sorted(table))}")
    try:
        n_cls = num_classes_of(sd)
    except ValueError as e:
        raise _fail(path, str(e)) from None
    if num_classes is not None and int(num_classes) != n_cls:
        raise _fail(path, f"has {n_cls} classes, expected {int(num_classes)}")

    model = _build(table, name, n_cls, meta, imagenet)
    problems = _mismatch(model.state_dict(), sd)
    if problems and not imagenet and name in imagenet_model_dict:
        # CA-MKD trains torchvision-layout networks on CIFAR under names that RepDistiller gives
        # its CIFAR ResNets (ResNet18/34/50/101): such a checkpoint fits the ImageNet zoo's network
        with torch.device("meta"):                             # only the layout: no weights drawn
            fits = _mismatch(_build(imagenet_model_dict, name, n_cls, meta, True).state_dict(), sd) is None
        if fits:
            model, problems = _build(imagenet_model_dict, name, n_cls, meta, True), None
            model.input_size = model_cfg[name].input_size      # it was trained on CIFAR-sized images
    if problems:
        if arch and guessed and guessed != arch and isinstance(meta.get("arch"), str) and meta["arch"]:
            raise _fail(path, f"is a checkpoint of {guessed!r} (its 'arch' entry), not of the architecture "
                              f"{name!r} given for it: {problems}")
        hint = f" (its name suggests {guessed!r})" if arch and guessed and guessed != arch else ""
        raise _fail(path, f"does not fit architecture {name!r}{hint}: {problems}")
    model.load_state_dict(sd, strict=True)
    model.arch = name
    return model.to(device).eval()
