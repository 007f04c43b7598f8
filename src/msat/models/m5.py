"""M5 (Dai, Dai, Qu, Li, Das 2017, "Very deep convolutional neural networks for raw
waveforms", Table 1): a 1-D conv net on raw audio.

Config table (kernel, stride, channels): the first conv has a long receptive field (80 taps,
stride 4, 128 channels); then three 3-tap convs with 128, 256 and 512 channels. Every conv
is followed by BatchNorm and ReLU and a max-pool of 4; global average pooling and one Linear
layer give the classes. ``width`` scales the channels (narrow test versions).
"""

from __future__ import annotations

import torch
from timm.models import register_model
from torch import nn

from .activations import make_activation
from .vgg import scaled

M5_CFG = ((80, 4, 128), (3, 1, 128), (3, 1, 256), (3, 1, 512))


class M5(nn.Module):
    def __init__(self, num_classes: int = 35, in_channels: int = 1, width: float = 1.0, act=nn.ReLU):
        super().__init__()
        layers: list[nn.Module] = []
        c_in = in_channels
        for k, stride, channels in M5_CFG:
            c = scaled(channels, width)
            layers += [nn.Conv1d(c_in, c, k, stride=stride, padding=k // 2 if k == 3 else 0, bias=False),
                       nn.BatchNorm1d(c), act(), nn.MaxPool1d(4)]
            c_in = c
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool1d(1)
        self.flatten = nn.Flatten()
        self.num_features = c_in
        self.classifier = nn.Linear(c_in, num_classes)
        self.num_classes = num_classes
        for m in self.modules():
            if isinstance(m, nn.Conv1d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.flatten(self.pool(self.features(x))))


@register_model
def msat_m5(pretrained: bool = False, num_classes: int = 35, in_channels: int = 1, width: float = 1.0,
            activation: str = "relu", levels=None, lam_init=None, **kwargs):
    if pretrained:
        raise ValueError("msat_m5 has no pretrained weights; train one with train_ann.py")
    return M5(num_classes=num_classes, in_channels=in_channels, width=width,
              act=make_activation(activation, levels, lam_init))
