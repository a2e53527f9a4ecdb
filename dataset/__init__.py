"""Data sets and loaders (the ground floor: nothing here knows about distillation).

Every data set reports a ``DataSpec``; ``build_loaders`` / ``loaders_from_args`` return loaders
whose batches are already normalised and on the training device (see ``dataset.loader`` for the
contract). Small data (cifar100, cifar10, digits, synthetic, tinyimagenet, a small imagefolder)
stays on the device as uint8 and is augmented there in batches (``dataset.augment``); large image
folders (imagenet, a large imagefolder) stream through decoding workers (``dataset.streaming``).
Image files are decoded by Pillow (``dataset.decode``, the ``[vision]`` extra) and transformed with
torch (``dataset.transforms``); torchvision is never needed.
"""
from .base import (DATASETS, DataError, DataOptions, DataSpec, TensorData, dataset_names, get_spec,
                   make_options, register_dataset, stratified_holdout)
from .augment import AUGMENTATIONS, augmentation_names, get_augmentation, register_augmentation
from .loader import BaseLoader, DeviceLoader
from . import cifar, digits, synthetic, imagenet, imagefolder, tinyimagenet  # noqa: F401  (register)
from .build import (Loaders, add_data_arguments, build_loaders, loaders_from_args,
                    options_from_args, spec_from_args)

__all__ = ["AUGMENTATIONS", "BaseLoader", "DATASETS", "DataError", "DataOptions", "DataSpec",
           "DeviceLoader", "Loaders", "TensorData", "add_data_arguments", "augmentation_names",
           "build_loaders", "dataset_names", "get_augmentation", "get_spec", "loaders_from_args",
           "make_options", "options_from_args", "register_augmentation", "register_dataset",
           "spec_from_args", "stratified_holdout"]
