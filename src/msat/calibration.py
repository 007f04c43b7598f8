"""Threshold balancing: the layer scale ``lam`` of every spiking layer (spec section 1.3).

Each balancing rule observes the prepared ANN's ReLU sites on calibration data:

- ``max`` (Algorithm 1, lines 1-7): the maximum ReLU output, or a percentile of them, per
  layer or per channel;
- ``ltb``: local threshold balancing (Bu, Li, Yu, CVPR 2025), see :mod:`msat.balancing`;
- a QCFS net carries its trained ``lam`` in its activations (no calibration pass).
"""

from __future__ import annotations

import math
from typing import Iterable, Optional

import torch
import torch.fx as fx
import torch.nn.functional as F

from .conversion import ReLUSite, relu_sites
from .fxutils import ConversionError, device_of


def batches(data: Iterable, num_batches: Optional[int]):
    """The input tensors of at most ``num_batches`` items of ``data`` (tensors or (x, y) pairs)."""
    for i, item in enumerate(data):
        if num_batches is not None and i >= num_batches:
            return
        if isinstance(item, (tuple, list)):
            item = item[0]
        if not isinstance(item, torch.Tensor):
            raise TypeError(f"calibration data must yield tensors or (input, target) pairs, got {type(item)}")
        yield item


def check_percentile(percentile: float) -> float:
    if not 0.0 < float(percentile) <= 1.0:
        raise ValueError(f"percentile must lie in (0, 1], got {percentile} (0.999 means the 99.9th percentile)")
    return float(percentile)


def channel_values(a: torch.Tensor, channelwise: bool, where: str) -> torch.Tensor:
    """A site's activations as rows: one row per channel, or one row in all."""
    if not channelwise:
        return a.reshape(1, -1)
    if a.dim() < 2:
        raise ConversionError(f"per-channel calibration needs a channel dimension at site {where!r}")
    return a.transpose(0, 1).reshape(a.shape[1], -1)


def as_lam(rows: torch.Tensor, channelwise: bool, ndim: int) -> torch.Tensor:
    """One value per row -> a scalar, or ``[C, 1, ...]`` broadcasting over a map of ``ndim`` dims."""
    if not channelwise:
        return rows.reshape(())
    return rows.reshape(-1, *([1] * (ndim - 2)))


class LamObserver:
    """Max or exact quantile of a site's ReLU output, per layer or per channel.

    The quantile follows ``torch.quantile`` (linear interpolation) over every value seen.
    With the total count N known in advance (``total_samples``), only the top
    ``N - floor(p (N - 1))`` values are kept, so memory is ~(1-p) N.
    """

    def __init__(self, percentile: float = 1.0, channelwise: bool = False, total_samples: Optional[int] = None):
        self.percentile = float(percentile)
        self.channelwise = channelwise
        self.total_samples = total_samples
        self.count = 0
        self.k: Optional[int] = None
        self.top: Optional[torch.Tensor] = None  # [R, k]
        self.ndim: Optional[int] = None

    def __call__(self, site: ReLUSite, pre: torch.Tensor) -> None:
        a = F.relu(pre.detach())
        if a.dtype not in (torch.float32, torch.float64):
            a = a.float()
        self.ndim = a.dim()
        vals = channel_values(a, self.channelwise, getattr(site, "name", "?"))
        self.count += vals.shape[1]
        if self.percentile == 1.0:
            m = vals.amax(dim=1, keepdim=True)
            self.top = m if self.top is None else torch.maximum(self.top, m)
            return
        if self.k is None:
            if self.total_samples is None:
                raise ValueError("a percentile needs total_samples (the number of calibration samples)")
            n = vals.shape[1] // a.shape[0] * self.total_samples
            self.k = n - math.floor(self.percentile * (n - 1))
        merged = vals if self.top is None else torch.cat([self.top, vals], dim=1)
        self.top = merged.topk(min(self.k, merged.shape[1]), dim=1, sorted=False).values

    def lam(self) -> torch.Tensor:
        if self.top is None:
            raise ConversionError("a ReLU site was never reached during calibration")
        if self.percentile == 1.0:
            q = self.top[:, 0]
        else:
            n = self.count
            pos = self.percentile * (n - 1)
            lo, frac = math.floor(pos), pos - math.floor(pos)
            hi = min(lo + 1, n - 1)
            desc = self.top.sort(dim=1, descending=True).values
            a_lo, a_hi = desc[:, n - 1 - lo], desc[:, n - 1 - hi]
            q = a_lo + frac * (a_hi - a_lo)
        return as_lam(q, self.channelwise, self.ndim)


class Observing:
    """Attaches one observer per site for the duration of a ``with`` block."""

    def __init__(self, sites, observers):
        self.pairs = list(zip(sites, observers))

    def __enter__(self):
        for site, obs in self.pairs:
            site.observers.append(obs)
        return self

    def __exit__(self, *exc):
        for site, obs in self.pairs:
            site.observers.remove(obs)


def progress_bar(it, total, desc: str, enabled: bool):
    if not enabled:
        return it
    from tqdm.auto import tqdm

    return tqdm(it, total=total, desc=desc, leave=False, disable=None)


@torch.no_grad()
def calibrate(
    ann: fx.GraphModule,
    calibration_data: Iterable,
    percentile: float = 1.0,
    channelwise: bool = False,
    num_batches: Optional[int] = None,
    progress: bool = False,
) -> list[torch.Tensor]:
    """``lam`` for every site of a :func:`prepare_ann` graph (Algorithm 1, lines 1-7): the max,
    or the ``percentile`` quantile, of each site's ReLU output, per layer or per channel."""
    check_percentile(percentile)
    if num_batches is not None and num_batches < 1:
        raise ValueError(f"num_batches must be >= 1 or None, got {num_batches}")
    sites = relu_sites(ann)
    total = None
    if percentile < 1.0:  # an exact quantile needs the sample count first (no model run)
        if iter(calibration_data) is calibration_data:
            calibration_data = list(batches(calibration_data, num_batches))
        total = sum(x.shape[0] for x in batches(calibration_data, num_batches))
    observers = [LamObserver(percentile, channelwise, total) for _ in sites]
    device = device_of(ann)
    seen = 0
    with Observing(sites, observers):
        for x in progress_bar(batches(calibration_data, num_batches), num_batches, "calibrate", progress):
            ann(x.to(device))
            seen += 1
    if seen == 0:
        raise ValueError("calibration data is empty")
    return [obs.lam().cpu() for obs in observers]


def trained_lam(ann: fx.GraphModule) -> list[torch.Tensor]:
    """The scales of a QCFS net, read from its trained activations (no calibration pass)."""
    sites = relu_sites(ann)
    missing = [s.name for s in sites if s.trained_lam is None]
    if missing:
        raise ConversionError(f"sites {missing} are plain ReLUs: only a QCFS net carries trained scales")
    return [s.trained_lam.clone().cpu() for s in sites]
