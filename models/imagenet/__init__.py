"""ImageNet-size (224 px) networks, registered into ``models.imagenet_model_dict``.

ResNet18/34/50 and MobileNetV2 use torchvision's state_dict key layout (so torchvision weights load
without importing torchvision); MobileNetV1 uses mdistiller's. All follow ``models.base.ZooModel``.
"""
from . import resnet  # noqa: F401  (registers its models)
from . import mobilenetv1  # noqa: F401
from . import mobilenetv2  # noqa: F401
