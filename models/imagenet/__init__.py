"""ImageNet-size (224 px) networks, registered into ``models.imagenet_model_dict``.

ResNet18/34/50/101, Wide ResNet-50-2, MobileNetV2, ShuffleNetV2 and VGG-8 use torchvision's
state_dict key layout (so torchvision weights and CA-MKD's checkpoints of its ImageNet-style
networks load without importing torchvision); MobileNetV1 uses mdistiller's. All follow
``models.base.ZooModel``. The names CA-MKD's CIFAR scripts take for some of these networks
(``vgg8_imagenet``, ``MobileNetV2_Imagenet``, ``ShuffleV2_Imagenet``, ``shufflenet_v2_x0_5``,
``wrn_50_2``, ``ResNet10``, ``ResNet34x2``) are in the CIFAR zoo too (``register_model(cifar_lr=...)``).
"""
from . import resnet  # noqa: F401  (registers its models)
from . import mobilenetv1  # noqa: F401
from . import mobilenetv2  # noqa: F401
from . import shufflenetv2  # noqa: F401
from . import vgg  # noqa: F401
