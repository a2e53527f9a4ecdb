"""The model zoo. ``model_dict[name](num_classes=...)`` builds a CIFAR model by its RepDistiller
name; ``imagenet_model_dict`` holds the 224-px models. Every model follows ``models.base.ZooModel``."""
from .registry import (ModelCfg, build_model, get_model_cfg, imagenet_model_cfg, imagenet_model_dict,
                       model_cfg, model_dict, model_names, register_model)
from .base import ZooModel

__all__ = ["ModelCfg", "ZooModel", "build_model", "get_model_cfg", "imagenet_model_cfg", "imagenet_model_dict",
           "model_cfg", "model_dict", "model_names", "register_model"]
# each module registers its models on import
from . import resnet  # noqa: F401
from . import resnetv2  # noqa: F401
from . import wrn  # noqa: F401
from . import vgg  # noqa: F401
from . import mobilenetv2  # noqa: F401
from . import ShuffleNetv1  # noqa: F401
from . import ShuffleNetv2  # noqa: F401
from . import deit  # noqa: F401  (vision transformers: DeiT, T2T-ViT, PiT, PVT)
from . import t2t_vit  # noqa: F401
from . import pit  # noqa: F401
from . import pvt  # noqa: F401
from . import imagenet  # noqa: F401  (224-px models, into imagenet_model_dict)
