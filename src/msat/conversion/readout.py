"""Delayed readout (Bu, Li, Yu, CVPR 2025): the step from which the output layer is read."""

from __future__ import annotations

import logging
from typing import Iterable, Optional

import torch

from ..spiking.simulation import check_T, iterate_steps
from ..util import batches, device_of

log = logging.getLogger(__name__)


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
