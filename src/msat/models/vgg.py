"""VGG16 for CIFAR-sized inputs (paper Section 5).

13 conv3x3 layers, each followed by BatchNorm and its own ReLU, five 2x2 MaxPools and one
Linear layer. The pools use ``ceil_mode=True``: on 32x32 inputs this is the standard
net, and it lets narrow test versions run on 28x28 or 8x8 inputs (the spatial size never
reaches zero).
"""

from __future__ import annotations

import torch
from timm.models import register_model
from torch import nn

from .activations import make_activation

# config table: channel counts, "M" = 2x2 max-pool
VGG16_CFG = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M")


def scaled(channels: int, width: float) -> int:
    return max(1, int(round(channels * width)))


def init_convs(model: nn.Module) -> None:
    """He (fan-out) initialisation of every conv, as torchvision's ResNets."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")


class VGG(nn.Module):
    def __init__(self, cfg=VGG16_CFG, num_classes: int = 10, in_channels: int = 3, width: float = 1.0, act=nn.ReLU):
        super().__init__()
        layers: list[nn.Module] = []
        c_in = in_channels
        for item in cfg:
            if item == "M":
                layers.append(nn.MaxPool2d(kernel_size=2, stride=2, ceil_mode=True))
            else:
                c_out = scaled(item, width)
                layers += [
                    nn.Conv2d(c_in, c_out, kernel_size=3, padding=1, bias=False),
                    nn.BatchNorm2d(c_out),
                    act(),  # one object per call site: each becomes its own spiking layer
                ]
                c_in = c_out
        self.features = nn.Sequential(*layers)
        # after five pools a 32x32 input is 1x1; the global average keeps other sizes valid
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.num_features = c_in
        self.classifier = nn.Linear(c_in, num_classes)
        self.num_classes = num_classes
        init_convs(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.flatten(self.pool(self.features(x))))


@register_model
def msat_vgg16(pretrained: bool = False, num_classes: int = 10, in_channels: int = 3, width: float = 1.0,
               activation: str = "relu", levels=None, lam_init=None, **kwargs):
    if pretrained:
        raise ValueError("msat_vgg16 has no pretrained weights; train one with train_ann.py")
    return VGG(VGG16_CFG, num_classes=num_classes, in_channels=in_channels, width=width,
               act=make_activation(activation, levels, lam_init))
