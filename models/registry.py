"""Model registry: one decorator per constructor, names exactly as in RepDistiller.

``model_dict`` keeps RepDistiller's public shape (``model_dict[name](num_classes=...)``) so code
written against RepDistiller or CA-MKD keeps working. ``model_cfg`` holds what a training script
needs to know about an architecture without building it (timm's ``pretrained_cfg`` idea).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Dict, Tuple

import torch.nn as nn


@dataclass(frozen=True)
class ModelCfg:
    name: str
    family: str          # architecture family: decides "same-family" pairs (spot-adaptive routing)
    input_size: int      # the image size the model is designed for (32 CIFAR, 224 ImageNet)
    default_lr: float    # RepDistiller's learning rate for this model (0.01 for the light nets)
    options: Tuple[str, ...] = ()   # keyword options the constructor takes (ViTs: img_size, drop_path, ...)


# CIFAR zoo (RepDistiller names) and ImageNet zoo (mdistiller names) are kept apart because the
# two communities reuse "ResNet50" for different networks.
model_dict: Dict[str, Callable[..., nn.Module]] = {}
imagenet_model_dict: Dict[str, Callable[..., nn.Module]] = {}
model_cfg: Dict[str, ModelCfg] = {}
imagenet_model_cfg: Dict[str, ModelCfg] = {}


def register_model(name: str | None = None, *, family: str, input_size: int = 32,
                   default_lr: float = 0.05, options: Tuple[str, ...] = (), cifar_lr: float | None = None):
    """Register a constructor ``fn(num_classes=...) -> nn.Module`` under ``name``: in the ImageNet
    zoo when ``input_size >= 128``, else in the CIFAR zoo.

    ``cifar_lr`` (ImageNet models only) also puts the name in the CIFAR zoo, building the same
    network with ``input_size`` 32 and ``cifar_lr`` as its default learning rate: for the
    224-px networks that CA-MKD's scripts take from its one model_dict and train on CIFAR-100
    (``vgg8_imagenet``, ``ShuffleV2_Imagenet``, ...)."""
    def wrap(fn):
        key = name or fn.__name__
        imagenet = input_size >= 128
        if cifar_lr is not None and not imagenet:
            raise ValueError(f"model {key!r}: cifar_lr is for ImageNet models (input_size >= 128)")
        _add(key, fn, family, input_size, default_lr, options, imagenet)
        if cifar_lr is not None:
            _add(key, fn, family, 32, cifar_lr, options, False)
        return fn
    return wrap


def _add(key, fn, family, input_size, default_lr, options, imagenet):
    table, cfgs = (imagenet_model_dict, imagenet_model_cfg) if imagenet else (model_dict, model_cfg)
    if key in table:
        raise ValueError(f"model {key!r} is registered twice")

    def build(num_classes: int = 100, **kwargs):
        model = fn(num_classes=num_classes, **kwargs)
        model.arch = key
        model.input_size = getattr(model, "img_size", input_size)   # a ViT's own size
        return model
    build.__name__ = key
    build.__doc__ = fn.__doc__
    table[key] = build
    cfgs[key] = ModelCfg(key, family, input_size, default_lr, tuple(options))


def model_names(imagenet: bool = False):
    return sorted(imagenet_model_dict if imagenet else model_dict)


def get_model_cfg(name: str, imagenet: bool = False) -> ModelCfg:
    cfgs = imagenet_model_cfg if imagenet else model_cfg
    if name not in cfgs:
        raise ValueError(f"unknown model {name!r}; expected one of: {', '.join(sorted(cfgs))}")
    return cfgs[name]


def build_model(name: str, num_classes: int, imagenet: bool = False, **options) -> nn.Module:
    """Build a zoo model by name; an unknown name is a one-line ValueError listing the choices.
    ``options`` (e.g. ``img_size``, ``drop_path``) must be among the model's registered options."""
    table = imagenet_model_dict if imagenet else model_dict
    if name not in table:
        raise ValueError(f"unknown model {name!r}; expected one of: {', '.join(sorted(table))}")
    if int(num_classes) < 1:
        raise ValueError(f"num_classes must be positive, got {num_classes}")
    cfg = get_model_cfg(name, imagenet)
    unknown = sorted(set(options) - set(cfg.options))
    if unknown:
        raise ValueError(f"model {name!r} takes no option(s) {', '.join(unknown)}"
                         + (f"; it takes: {', '.join(cfg.options)}" if cfg.options else ""))
    return table[name](num_classes=int(num_classes), **options)
