"""ResNet34 for ImageNet: timm's ResNet (7x7 stem, 3x3 max-pool, BasicBlocks 3-4-6-3).

``width`` scales every stage and the stem, so that tests can convert a narrow copy of
the same graph; ``pretrained=True`` loads timm's ``resnet34`` weights (full width only).
"""

from __future__ import annotations

import timm
from timm.models import register_model
from timm.models.resnet import BasicBlock, ResNet

from .activations import make_activation
from .vgg import scaled

RESNET34_LAYERS = (3, 4, 6, 3)
RESNET34_CHANNELS = (64, 128, 256, 512)


@register_model
def msat_resnet34(pretrained: bool = False, num_classes: int = 1000, in_channels: int = 3, width: float = 1.0,
                  activation: str = "relu", levels=None, lam_init=None, **kwargs):
    if pretrained:
        if width != 1.0 or in_channels != 3:
            raise ValueError("pretrained resnet34 weights exist only for width=1 and in_channels=3")
        return timm.create_model("resnet34", pretrained=True, num_classes=num_classes)
    return ResNet(
        block=BasicBlock,
        layers=RESNET34_LAYERS,
        channels=tuple(scaled(c, width) for c in RESNET34_CHANNELS),
        stem_width=scaled(64, width),
        num_classes=num_classes,
        in_chans=in_channels,
        act_layer=_act_layer(activation, levels, lam_init),
    )


def _act_layer(activation: str, levels, lam_init):
    make = make_activation(activation, levels, lam_init)
    if activation == "relu":
        return make
    return lambda inplace=False: make()  # timm passes inplace=True to its activations
