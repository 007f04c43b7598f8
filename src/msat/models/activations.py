"""Trainable activations whose networks convert with few steps.

``QCFS`` is the quantization-clip-floor-shift activation of Bu et al. (ICLR 2022, "Optimal
ANN-SNN conversion for high-accuracy and ultra-low-latency spiking neural networks",
Eq. 15)::

    h(x) = lam / L * clip(floor(x * L / lam + 1/2), 0, L)

with one trainable scale ``lam`` per layer and ``L`` quantisation levels. The floor has a
straight-through gradient, so ``lam`` and the weights learn through it. An IF neuron with
threshold ``lam`` that starts at ``lam / 2`` and runs ``T = L`` steps reproduces ``h``
exactly on a constant input; the converter reads ``lam`` from the module (no calibration).
"""

from __future__ import annotations

import torch
from torch import nn

QCFS_LAM_INIT = 8.0  # the initial scale of the authors' released code


def check_levels(levels) -> int:
    if isinstance(levels, bool) or levels is None or int(levels) != levels or int(levels) < 1:
        raise ValueError(f"QCFS levels must be an integer >= 1 (the paper uses 4 or 8 on CIFAR), got {levels!r}")
    return int(levels)


class QCFS(nn.Module):
    """Quantization-clip-floor-shift activation with a trainable scale ``lam`` (Bu et al. 2022)."""

    def __init__(self, levels: int = 4, lam: float = QCFS_LAM_INIT, shift: float = 0.5):
        super().__init__()
        self.levels = check_levels(levels)
        if not lam > 0:
            raise ValueError(f"QCFS lam must be > 0, got {lam}")
        self.lam = nn.Parameter(torch.tensor(float(lam)))
        self.shift = float(shift)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # clip first, then floor: the same values as Eq. 15, and the gradient flows wherever
        # 0 < x < lam (clipping the floored value would stop it wherever the output is 0)
        L = self.levels
        q = torch.clamp(x / self.lam, 0, 1) * L + self.shift
        q = q + (torch.floor(q) - q).detach()  # floor, straight-through gradient
        return q * (self.lam / L)

    def extra_repr(self) -> str:
        return f"levels={self.levels}, lam={float(self.lam):.4f}, shift={self.shift}"


ACTIVATIONS = ("relu", "qcfs")


def make_activation(activation: str = "relu", levels=None, lam_init=None):
    """A factory of activation modules for the model zoo: one new module per call site.
    ``lam_init``: QCFS's initial scale (default 8, as the authors' code)."""
    if activation == "relu":
        if levels is not None or lam_init is not None:
            raise ValueError("levels and lam_init are QCFS settings; pass activation='qcfs' with them, or drop them")
        return nn.ReLU
    if activation == "qcfs":
        L = check_levels(levels)
        lam = QCFS_LAM_INIT if lam_init is None else float(lam_init)
        return lambda: QCFS(L, lam)
    raise ValueError(f"unknown activation {activation!r}; choose one of {', '.join(ACTIVATIONS)}")
