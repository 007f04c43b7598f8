"""Model zoo. Every net is registered with timm under an ``msat_`` prefix, so one
factory builds CIFAR and ImageNet nets alike: ``create_model("vgg16", num_classes=...)``."""

from __future__ import annotations

import timm
from torch import nn

from . import resnet_cifar, resnet_imagenet, vgg  # noqa: F401  (registers the models)

MODEL_NAMES = ("vgg16", "resnet20", "resnet34")


def create_model(
    name: str,
    num_classes: int,
    in_channels: int = 3,
    width: float = 1.0,
    pretrained: bool = False,
) -> nn.Module:
    """Build one of the zoo's nets by its short name (``vgg16``, ``resnet20``, ``resnet34``)."""
    if name not in MODEL_NAMES:
        raise ValueError(f"unknown model {name!r}; choose one of {', '.join(MODEL_NAMES)}")
    if num_classes < 1 or in_channels < 1 or width <= 0:
        raise ValueError(
            f"invalid model shape: num_classes={num_classes}, in_channels={in_channels}, width={width}"
        )
    return timm.create_model(
        f"msat_{name}", pretrained=pretrained, num_classes=num_classes, in_channels=in_channels, width=width
    )
