"""ResNet20 for CIFAR, the wide variant of the paper (Section 5): about 4.3M parameters.

Stem conv3x3 with 64 channels; three stages of three BasicBlocks with 64, 128 and 256
channels (strides 1, 2, 2); 1x1 conv + BN projection shortcuts where the shape changes;
global average pool; one Linear layer.
"""

from __future__ import annotations

import torch
from timm.models import register_model
from torch import nn

from .activations import make_activation
from .vgg import init_convs, scaled

# config table: (channels, blocks, stride) per stage
RESNET20_STAGES = ((64, 3, 1), (128, 3, 2), (256, 3, 2))


class BasicBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int, stride: int, act=nn.ReLU):
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.relu1 = act()
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.shortcut = nn.Identity()
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(
                nn.Conv2d(c_in, c_out, 1, stride=stride, bias=False), nn.BatchNorm2d(c_out)
            )
        self.relu2 = act()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu1(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu2(out + self.shortcut(x))


class ResNetCifar(nn.Module):
    def __init__(self, stages=RESNET20_STAGES, num_classes: int = 10, in_channels: int = 3, width: float = 1.0,
                 act=nn.ReLU):
        super().__init__()
        c = scaled(stages[0][0], width)
        self.conv1 = nn.Conv2d(in_channels, c, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c)
        self.relu = act()
        blocks = []
        for channels, n_blocks, stride in stages:
            c_out = scaled(channels, width)
            for i in range(n_blocks):
                blocks.append(BasicBlock(c, c_out, stride if i == 0 else 1, act))
                c = c_out
        self.layers = nn.Sequential(*blocks)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.num_features = c
        self.fc = nn.Linear(c, num_classes)
        self.num_classes = num_classes
        init_convs(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layers(x)
        return self.fc(torch.flatten(self.pool(x), 1))


@register_model
def msat_resnet20(pretrained: bool = False, num_classes: int = 10, in_channels: int = 3, width: float = 1.0,
                  activation: str = "relu", levels=None, lam_init=None, **kwargs):
    if pretrained:
        raise ValueError("msat_resnet20 has no pretrained weights; train one with train_ann.py")
    return ResNetCifar(RESNET20_STAGES, num_classes=num_classes, in_channels=in_channels, width=width,
                       act=make_activation(activation, levels, lam_init))
