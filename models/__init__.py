"""The model zoo. ``model_dict[name](num_classes=...)`` builds a CIFAR model by its RepDistiller
name; ``imagenet_model_dict`` holds the 224-px models. Every model follows ``models.base.ZooModel``."""
from .registry import (ModelCfg, build_model, get_model_cfg, imagenet_model_cfg, imagenet_model_dict,
                       model_cfg, model_dict, model_names, register_model)
from .base import ZooModel
from . import resnet  # noqa: F401  (registers its models)
