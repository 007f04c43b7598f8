"""Model zoo. Every net is registered with timm under an ``msat_`` prefix, so one
factory builds CIFAR and ImageNet nets alike: ``create_model("vgg16", num_classes=...)``."""

from __future__ import annotations

from typing import Optional

import timm
from torch import nn

from . import m5, mt_nets, resnet_cifar, resnet_imagenet, vgg  # noqa: F401  (registers the models)
from .activations import make_activation

MODEL_NAMES = ("vgg16", "resnet20", "resnet34", "m5")
MT_MODEL_NAMES = ("mt_vgg8", "mt_vgg9", "mt_resnet20")


def create_model(
    name: str,
    num_classes: int,
    in_channels: int = 3,
    width: float = 1.0,
    pretrained: bool = False,
    activation: str = "relu",
    levels: Optional[int] = None,
    lam_init: Optional[float] = None,
    **kwargs,
) -> nn.Module:
    """Build one of the zoo's nets by its short name (``vgg16``, ``resnet20``, ``resnet34``, or the
    MT-SNN nets ``mt_vgg8``, ``mt_vgg9``, ``mt_resnet20`` with ``T``, ``deltas``, ``input_size``, ``neuron``).

    ``activation="qcfs"`` with ``levels=L`` builds the net with :class:`msat.QCFS` activations
    (Bu et al. 2022) in place of every ReLU."""
    if name not in MODEL_NAMES + MT_MODEL_NAMES:
        raise ValueError(f"unknown model {name!r}; choose one of {', '.join(MODEL_NAMES + MT_MODEL_NAMES)}")
    if num_classes < 1 or in_channels < 1 or width <= 0:
        raise ValueError(
            f"invalid model shape: num_classes={num_classes}, in_channels={in_channels}, width={width}"
        )
    timm_name = name if name in MT_MODEL_NAMES else f"msat_{name}"
    if name in MT_MODEL_NAMES:
        deltas = kwargs.get("deltas")
        if deltas is not None:
            kwargs["deltas"] = list(deltas)
        if kwargs.get("T", 1) < 1:
            raise ValueError(f"T must be >= 1 for training, got {kwargs['T']}")
        if activation != "relu":
            raise ValueError(f"{name} is a directly trained SNN; activation={activation!r} applies to the ANN zoo")
    else:
        if kwargs:
            raise ValueError(f"unexpected arguments for {name}: {sorted(kwargs)}")
        make_activation(activation, levels, lam_init)  # checks the settings
        if activation != "relu":
            if pretrained:
                raise ValueError(f"pretrained weights exist for ReLU nets only, not activation={activation!r}")
            kwargs = dict(activation=activation, levels=levels, lam_init=lam_init)
    return timm.create_model(timm_name, pretrained=pretrained, num_classes=num_classes, in_channels=in_channels,
                             width=width, **kwargs)
