"""MT-SNN nets (MT-SNN paper Tables 1-2): VGG-8, VGG-9 and ResNet-20 with PLIF neurons.

Every conv is followed by BN and a PLIF layer; the first conv + BN sees the static image
once and its output is repeated for the T steps (the encoder); the last Linear layer does
not fire and its output, averaged over T, is the logit. ``neuron="relu"`` builds the ANN
twin (same layers, ReLU instead of PLIF, no time dimension).
"""

from __future__ import annotations

from typing import Sequence

import torch
from timm.models import register_model
from torch import nn

from ..spiking.plif import PLIF, MultiStepNet, RepeatT
from .vgg import scaled

# config table: (convs per stage, channels) and the hidden FC width
MT_VGG_CFG = {
    "mt_vgg8": (((3, 256), (3, 256)), 2048),
    "mt_vgg9": (((2, 256), (2, 512), (3, 512)), 1024),
}
MT_RESNET20_STAGES = ((64, 3, 1), (128, 3, 2), (256, 3, 2))


def _act(neuron: str, deltas: Sequence[float]) -> nn.Module:
    if neuron == "relu":
        return nn.ReLU()
    if neuron != "plif":
        raise ValueError(f"neuron must be 'plif' or 'relu', got {neuron!r}")
    return PLIF(deltas)


class MTVGG(MultiStepNet):
    def __init__(self, stages, hidden: int, num_classes: int = 10, in_channels: int = 3, width: float = 1.0,
                 T: int = 4, deltas: Sequence[float] = (-0.5, 0.5), input_size: int = 32, neuron: str = "plif"):
        super().__init__()
        self.T, self.neuron = int(T), neuron
        layers: list[nn.Module] = []
        c_in, size, first = in_channels, input_size, True
        for n_conv, channels in stages:
            c = scaled(channels, width)
            for _ in range(n_conv):
                layers += [nn.Conv2d(c_in, c, 3, padding=1, bias=False), nn.BatchNorm2d(c)]
                if first and neuron == "plif":
                    layers.append(RepeatT())  # encoder: the static image enters once
                first = False
                layers.append(_act(neuron, deltas))
                c_in = c
            layers.append(nn.MaxPool2d(2, ceil_mode=True))
            size = -(-size // 2)
        h = scaled(hidden, width)
        # The hidden FC layer gets a BatchNorm1d too (the paper names BN after every conv and is
        # silent on the FC layers): without it, the hidden PLIF's input has a std of ~0.1-0.2 at
        # initialisation, it never reaches V_th, the rectangular surrogate is zero there, and the
        # net cannot start learning (measured: loss stays at ln 10 for ST at T=1 and T=4).
        layers += [nn.Flatten(), nn.Linear(c_in * size * size, h, bias=False), nn.BatchNorm1d(h), _act(neuron, deltas),
                   nn.Linear(h, num_classes)]
        self.body = nn.Sequential(*layers)
        self.num_classes = num_classes


class MSBlock(nn.Module):
    """Membrane-shortcut BasicBlock: spikes feed the convs, the residual adds on the membrane path."""

    def __init__(self, c_in: int, c_out: int, stride: int, neuron: str, deltas):
        super().__init__()
        self.act1 = _act(neuron, deltas)
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.act2 = _act(neuron, deltas)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.shortcut = None
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = self.act1(x)
        out = self.bn2(self.conv2(self.act2(self.bn1(self.conv1(s)))))
        return out + (x if self.shortcut is None else self.shortcut(s))


class MTResNet20(MultiStepNet):
    def __init__(self, num_classes: int = 10, in_channels: int = 3, width: float = 1.0, T: int = 4,
                 deltas: Sequence[float] = (-0.5, 0.5), input_size: int = 32, neuron: str = "plif"):
        super().__init__()
        self.T, self.neuron = int(T), neuron
        c = scaled(64, width)
        layers: list[nn.Module] = [nn.Conv2d(in_channels, c, 3, padding=1, bias=False), nn.BatchNorm2d(c)]
        if neuron == "plif":
            layers.append(RepeatT())
        for channels, n_blocks, stride in MT_RESNET20_STAGES:
            c_out = scaled(channels, width)
            for i in range(n_blocks):
                layers.append(MSBlock(c, c_out, stride if i == 0 else 1, neuron, deltas))
                c = c_out
        layers += [_act(neuron, deltas), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(c, num_classes)]
        self.body = nn.Sequential(*layers)
        self.num_classes = num_classes


def _vgg(name: str, **kw):
    stages, hidden = MT_VGG_CFG[name]
    return MTVGG(stages, hidden, **kw)


@register_model
def mt_vgg8(pretrained: bool = False, **kwargs):
    kwargs = {k: v for k, v in kwargs.items() if k not in ("pretrained_cfg", "pretrained_cfg_overlay", "cache_dir")}
    return _vgg("mt_vgg8", **kwargs)


@register_model
def mt_vgg9(pretrained: bool = False, **kwargs):
    kwargs = {k: v for k, v in kwargs.items() if k not in ("pretrained_cfg", "pretrained_cfg_overlay", "cache_dir")}
    return _vgg("mt_vgg9", **kwargs)


@register_model
def mt_resnet20(pretrained: bool = False, **kwargs):
    kwargs = {k: v for k, v in kwargs.items() if k not in ("pretrained_cfg", "pretrained_cfg_overlay", "cache_dir")}
    return MTResNet20(**kwargs)
