"""Multiple thresholds for directly trained SNNs (MT-SNN, spec ``mt.md`` section 2).

PLIF neuron with ``V_reset = 0`` and ``V_th = 1``::

    H[t]   = (1 - 1/tau) V[t-1] + (1/tau) X[t]          tau = 1 + exp(-a), one a per layer
    S[t]   = Heaviside(H[t] - V_th)                      main spike
    S_d[t] = Heaviside(H[t] - V_th - d)   for d in deltas (auxiliary spikes)
    out    = S[t] + sum_d S_d[t]
    V[t]   = H[t] (1 - S[t])                             hard reset by the main spike

Every Heaviside has the rectangular surrogate gradient ``(1/w) 1{|H - thr| <= w/2}``
(w = 1). ``deltas = []`` is the single-threshold (ST) baseline.

Layers take the T steps stacked along the batch dimension, ``[T * B, ...]``.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import nn


class RectHeaviside(torch.autograd.Function):
    """Heaviside(x) (1 at x >= 0) with the rectangular surrogate gradient of width ``w``."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, w: float) -> torch.Tensor:
        ctx.save_for_backward(x)
        ctx.w = w
        return (x >= 0).to(x.dtype)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        (x,) = ctx.saved_tensors
        w = ctx.w
        return grad * (x.abs() <= w / 2).to(grad.dtype) / w, None


def check_deltas(deltas: Sequence[float], v_th: float = 1.0) -> list[float]:
    """Auxiliary threshold offsets: every threshold distinct and above 0."""
    d = [float(x) for x in deltas]
    thresholds = [v_th] + [v_th + x for x in d]
    if len(set(thresholds)) != len(thresholds):
        raise ValueError(f"deltas {d} make two thresholds coincide ({thresholds}); use distinct non-zero deltas")
    bad = [t for t in thresholds if t <= 0]
    if bad:
        raise ValueError(f"deltas {d} put a threshold at or below 0 ({bad}); every V_th + d must be > 0")
    return d


class PLIF(nn.Module):
    """Parametric LIF with multiple thresholds, over ``steps`` stacked time steps."""

    def __init__(self, deltas: Sequence[float] = (), v_th: float = 1.0, tau_init: float = 2.0,
                 surrogate_width: float = 1.0):
        super().__init__()
        if tau_init <= 1:
            raise ValueError(f"tau_init must be > 1, got {tau_init}")
        self.deltas = check_deltas(deltas, v_th)
        self.v_th = float(v_th)
        self.w = float(surrogate_width)
        self.a = nn.Parameter(torch.tensor(-math.log(tau_init - 1.0)))  # tau = 1 + exp(-a)
        self.steps = 1

    @property
    def tau(self) -> torch.Tensor:
        return 1.0 + torch.exp(-self.a.detach())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        T = self.steps
        xs = x.view(T, x.shape[0] // T, *x.shape[1:])
        inv_tau = torch.sigmoid(self.a)  # 1/tau = 1/(1 + e^-a): stays in (0, 1), so tau > 1
        v = torch.zeros_like(xs[0])
        out = []
        for t in range(T):
            h = v * (1.0 - inv_tau) + xs[t] * inv_tau  # Eq. 8
            s = RectHeaviside.apply(h - self.v_th, self.w)
            total = s
            for d in self.deltas:  # Eq. 10-11
                total = total + RectHeaviside.apply(h - (self.v_th + d), self.w)
            v = h * (1.0 - s)  # hard reset to 0 by the main spike
            out.append(total)
        return torch.cat(out, 0)

    def extra_repr(self) -> str:
        return f"deltas={self.deltas}, v_th={self.v_th}, surrogate_width={self.w}"


class RepeatT(nn.Module):
    """The static image (after the encoder conv/BN) repeated for the ``steps`` time steps."""

    steps = 1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.unsqueeze(0).expand(self.steps, *x.shape).reshape(self.steps * x.shape[0], *x.shape[1:])


class MultiStepNet(nn.Module):
    """Base for the MT-SNN nets: runs T steps, returns the readout averaged over them."""

    T: int = 1
    neuron: str = "plif"

    def set_steps(self, T: int) -> None:
        for m in self.modules():
            if isinstance(m, (PLIF, RepeatT)):
                m.steps = T

    def forward_steps(self, x: torch.Tensor, T: int) -> torch.Tensor:
        """Per-step readouts [T, B, classes] (the last layer's input at each step)."""
        if T < 1:
            raise ValueError(f"T must be >= 1, got {T}")
        if self.neuron == "relu":  # the ANN twin has no time: the same output at every step
            y = self.body(x)
            return y.unsqueeze(0).expand(T, *y.shape)
        self.set_steps(T)
        y = self.body(x)
        return y.view(T, x.shape[0], *y.shape[1:])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_steps(x, self.T).mean(0)

    def plif_layers(self) -> list[PLIF]:
        return [m for m in self.modules() if isinstance(m, PLIF)]
