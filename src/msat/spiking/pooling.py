"""Lateral-inhibition pooling (Li & Zeng 2022): the spiking MaxPool (spec section 1.4)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .fused import compiled, describe_mismatch, fused_failed, rounding_tolerance, run_guarded
from .neuron import StepModule

_FUSED: dict = {}


def _pool_step(X: torch.Tensor, Y: torch.Tensor, x: torch.Tensor, kernel_size, stride, padding, ceil_mode: bool):
    """One LIPool step after the first: ``X += x``; returns ``(maxpool(X) - Y, maxpool(X))``."""
    X.add_(x)
    m = F.max_pool2d(X, kernel_size, stride, padding, 1, ceil_mode)
    return m - Y, m


def _fused_pool_step():
    """``_pool_step`` compiled: the add, the window max and the difference in one pass (max and
    subtraction round as in eager mode, so the outputs are the same bits)."""
    if "fn" not in _FUSED:
        _FUSED["fn"] = compiled(_pool_step)
    return _FUSED["fn"]


def _pool_agrees(args, res, e_args, e_res, before):
    """The guard's comparison (msat.spiking.fused): the cumulative input, the window max and the output
    within rounding of eager (in practice they are the same bits)."""
    X_e, m_e = e_args[0], e_res[1]
    tol = rounding_tolerance(X_e.dtype)
    dX, dm, dy = (args[0] - X_e).abs(), (res[1] - m_e).abs(), (res[0] - e_res[0]).abs()
    bad = torch.cat([(~(dX <= tol * X_e.abs())).flatten(), (~(dm <= tol * m_e.abs())).flatten(),
                     (~(dy <= tol * (m_e.abs() + args[1].abs()))).flatten()])
    return describe_mismatch(bad, {"X": dX, "max": dm, "out": dy})


class LIPool(StepModule):
    """Each pooling window keeps the running sum ``S`` of its inputs, outputs ``max(S)`` and
    subtracts that output from the whole window.

    With ``X`` the cumulative input and ``Y`` the window's cumulative output, ``S = X - Y``
    for every position of the window, so ``max(S) = maxpool(X) - Y``: this is computed with
    the native max-pool, for overlapping windows too (every window keeps its own ``Y``). The
    sum of the outputs up to any step equals the max-pool of the summed inputs.
    ``dims`` is 2 for ``MaxPool2d`` and 1 for ``MaxPool1d``.
    """

    def __init__(self, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False, dims: int = 2):
        super().__init__()
        if dims not in (1, 2):
            raise ValueError(f"LIPool supports 1-D and 2-D pooling, got dims={dims}")
        self.kernel_size = kernel_size
        self.stride = stride if stride is not None else kernel_size
        self.padding = padding
        self.dilation = dilation
        self.ceil_mode = bool(ceil_mode)
        self.dims = dims
        self.compiled = False  # the fused step (2-D, no dilation), as the neurons' sim.compile
        self.register_state("X", per_sample=True)  # cumulative input
        self.register_state("Y", per_sample=True)  # cumulative output per window

    @classmethod
    def from_maxpool(cls, pool: nn.Module) -> "LIPool":
        if getattr(pool, "return_indices", False):
            raise ValueError(f"{type(pool).__name__}(return_indices=True) cannot be converted: the spiking "
                             f"max-pool has no indices; use return_indices=False")
        dims = 1 if isinstance(pool, nn.MaxPool1d) else 2
        return cls(pool.kernel_size, pool.stride, pool.padding, pool.dilation, pool.ceil_mode, dims)

    def _pool(self, x: torch.Tensor) -> torch.Tensor:
        fn = F.max_pool1d if self.dims == 1 else F.max_pool2d
        return fn(x, self.kernel_size, self.stride, self.padding, self.dilation, self.ceil_mode)

    def step(self, x: torch.Tensor) -> torch.Tensor:
        if self.X is None:
            self.X = x.clone()
            self.Y = self._pool(self.X)
            return self.Y
        if self.compiled and self.dims == 2 and self.dilation in (1, (1, 1)):
            args = (self.X, self.Y, x, self.kernel_size, self.stride, self.padding, self.ceil_mode)
            res = run_guarded("LIPool step", _fused_pool_step(), _pool_step, args, (0,), _pool_agrees)
            if fused_failed():
                self.compiled = False
            if res is not None:
                y, self.Y = res
                return y
        self.X.add_(x)
        m = self._pool(self.X)  # the max of each window's cumulative input
        y = m - self.Y
        self.Y = m
        return y

    def extra_repr(self) -> str:
        return (f"kernel_size={self.kernel_size}, stride={self.stride}, padding={self.padding}, "
                f"ceil_mode={self.ceil_mode}, dims={self.dims}")
