"""Local threshold balancing and delayed readout (Bu, Li, Yu, CVPR 2025, arXiv 2409.03368).

**LTB.** Every ReLU site keeps a per-channel threshold ``theta``, starting at 0. Each
calibration batch runs the ANN once; at every site, in graph order,

    theta <- max(theta + 2 * mean((a - theta)^+), eps)       (mean over batch and positions)

from the site's activation ``a`` in that pass, and the site's output is then clipped at
its (updated) ``theta``, so later layers see clipped inputs. After ``passes`` passes over
the calibration batches ``lam = theta`` per channel, and the membrane starts at half the
threshold. ``theta`` never decreases, and it grows slowly once most activations are below
it, so too few passes leave it far below the activations' upper range.

**Delayed readout.** The output layer's early steps carry little besides its bias, because
the last spiking layer has not fired yet. :func:`estimate_readout_start` measures on
calibration data the step at which the last spiking layer typically fires for the first
time; the prediction at step t then sums steps ``d+1..t`` only (``simulate(...,
readout_start=d)``).
"""

from __future__ import annotations

import logging
import warnings
from typing import Iterable, Optional

import torch
import torch.fx as fx

from .calibration import as_lam, batches, channel_values, progress_bar
from .conversion import ReLUSite, relu_sites
from .fxutils import device_of
from .simulation import check_T, iterate_steps

log = logging.getLogger(__name__)

BALANCING = ("max", "ltb")
LTB_EPS = 1e-8
LTB_MIN_PASSES = 5  # fewer passes leave the thresholds far too low (see the module docstring)


def check_passes(passes) -> int:
    if isinstance(passes, bool) or int(passes) != passes or int(passes) < 1:
        raise ValueError(f"LTB needs passes >= 1 (passes over the calibration batches; 20 is the usual), got {passes!r}")
    return int(passes)


class LTBSite:
    """One site's threshold: the update, then the clip, in the site's forward."""

    def __init__(self, eps: float = LTB_EPS):
        self.theta: Optional[torch.Tensor] = None  # one row per channel
        self.eps = eps
        self.ndim = 2

    def update_and_clip(self, site: ReLUSite, pre: torch.Tensor) -> torch.Tensor:
        a = torch.relu(pre)
        self.ndim = a.dim()
        rows = channel_values(a, channelwise=a.dim() >= 2, where=site.name)  # [C, N]
        if self.theta is None:
            self.theta = torch.zeros(rows.shape[0], 1, dtype=rows.dtype, device=rows.device)
        self.theta = torch.clamp(self.theta + 2.0 * (rows - self.theta).clamp(min=0).mean(1, keepdim=True), min=self.eps)
        th = as_lam(self.theta[:, 0], a.dim() >= 2, a.dim())
        return torch.minimum(a, th)

    def lam(self) -> torch.Tensor:
        return as_lam(self.theta[:, 0], self.ndim >= 2, self.ndim)


class _ClippingSite(torch.nn.Module):
    """Stands in for a ReLUSite during LTB: observers still see the pre-activation."""

    def __init__(self, site: ReLUSite, state: LTBSite):
        super().__init__()
        self.site, self.state = site, state

    def forward(self, x):
        for obs in self.site.observers:
            obs(self.site, x)
        return self.state.update_and_clip(self.site, x)


@torch.no_grad()
def ltb_lam(ann: fx.GraphModule, calibration_data: Iterable, passes: int = 20, num_batches: Optional[int] = None,
            progress: bool = False) -> list[torch.Tensor]:
    """Per-channel ``lam`` of every site by local threshold balancing (module docstring)."""
    passes = check_passes(passes)
    if passes < LTB_MIN_PASSES:
        warnings.warn(f"LTB with passes={passes}: the thresholds grow from 0 and stay far too low after few passes "
                      f"(a CIFAR-10 net is at chance after one pass); use passes >= {LTB_MIN_PASSES}, e.g. 20",
                      stacklevel=2)
    sites = relu_sites(ann)
    states = [LTBSite() for _ in sites]
    device = device_of(ann)
    data = list(batches(calibration_data, num_batches))
    if not data:
        raise ValueError("calibration data is empty")
    swapped = _swap_sites(ann, sites, states)
    try:
        for _ in progress_bar(range(passes), passes, "LTB passes", progress):
            for x in data:
                ann(x.to(device))
    finally:
        _restore_sites(ann, swapped)
    out = []
    for site, st in zip(sites, states):
        if bool((st.theta <= LTB_EPS).all()):
            warnings.warn(f"LTB: spiking layer {site.name!r} never activated on the calibration data; it stays silent",
                          stacklevel=2)
        lam = st.lam().cpu()
        out.append(torch.where(lam <= LTB_EPS, torch.zeros((), dtype=lam.dtype), lam))  # silent, never NaN
    return out


def _swap_sites(ann: fx.GraphModule, sites, states):
    swapped = []
    for node in ann.graph.nodes:
        if node.op == "call_module" and isinstance(ann.get_submodule(node.target), ReLUSite):
            site = ann.get_submodule(node.target)
            swapped.append((node.target, site))
            ann.add_submodule(node.target, _ClippingSite(site, states[site.index]))
    return swapped


def _restore_sites(ann: fx.GraphModule, swapped) -> None:
    for target, site in swapped:
        ann.add_submodule(target, site)


# ----------------------------------------------------------------- delayed readout
class _FirstSpike:
    """Records the step at which every neuron of a layer first emits a spike."""

    def __init__(self):
        self.first: Optional[torch.Tensor] = None
        self.step = 0

    def begin_batch(self, pre=None):
        self.first, self.step = None, 0

    def on_step(self, neuron, t, theta, fired, emitted):
        self.step += 1
        if self.first is None:
            self.first = torch.zeros(emitted.shape, dtype=torch.int32, device=emitted.device)
        new = (self.first == 0) & (emitted > 0)
        self.first[new] = self.step

    def end_batch(self):
        pass


@torch.no_grad()
def estimate_readout_start(snn, calibration_data: Iterable, T: int = 64, num_batches: Optional[int] = 1) -> int:
    """Delay ``d`` of the readout: the median step at which the last spiking layer's neurons
    fire for the first time (over those that fire within ``T`` steps), minus one, on the
    calibration batches. Returns 0 when the layer fires at once or not at all."""
    T = check_T(T)
    device = device_of(snn)
    firsts = []
    for x in batches(calibration_data, num_batches):
        mon = _FirstSpike()
        with snn.monitor(T, first=[None] * (len(snn.neurons) - 1) + [mon]):
            mon.begin_batch()
            for _ in iterate_steps(snn, x.to(device), T):
                pass
        f = mon.first[mon.first > 0]
        if f.numel():
            firsts.append(f.float())
    if not firsts:
        return 0
    d = int(torch.cat(firsts).median().item()) - 1
    log.info("delayed readout: the last spiking layer first fires at step %d (median); readout_start=%d", d + 1, d)
    return max(0, min(d, T - 1))


__all__ = ["ltb_lam", "estimate_readout_start", "check_passes", "BALANCING"]
