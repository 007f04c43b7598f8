"""FTBC (Wu, Bojkovic, Gu, Suo, Zou, ECCV 2024, "FTBC: Forward Temporal Bias Correction for
Optimizing ANN-SNN Conversion"): training-free, a bias for every spiking layer, channel and time
step t = 1..T, found in forward passes on calibration images so that each step's mean output of a
layer matches the ANN's mean activation.

For each calibration batch, layer by layer in graph order, the SNN runs T steps from rest. At step
t the layer's mean output per channel ``r_t`` is compared with the ANN's ``a``; the step's bias
moves by ``-alpha (r_t - a)`` and the layer's step t is run again with it (the authors' forward
heuristic), so that the next step starts from the corrected membrane. Later batches refine the
biases of earlier ones (``alpha`` weighs the newest estimate). The T biases are added to the
layer's input at steps 1..T; from step T on, the last one holds (the paper simulates T steps only).
Options (``method.correction_options``): ``batches`` (4) and ``alpha`` (0.5).
"""

from __future__ import annotations

from typing import Optional

import torch

from ...spiking.simulation import check_T
from ...util import batches as calibration_batches
from ...util import device_of
from ..prepare import ann_pre_activations, check_pair
from . import Correction, channel_mean, register_correction


@register_correction("ftbc")
class FTBC(Correction):
    """Per-step, per-channel input biases of every spiking layer (module docstring)."""

    method = "ftbc"
    default_T = 32
    options = {"batches": 4, "alpha": 0.5}  # calibration batches it runs over, the weight of each new estimate

    def apply(self, ann, snn, data, T, num_batches=None, batches: int = 4, alpha: float = 0.5) -> dict:
        T = check_T(T)
        check_pair(ann, snn)
        if not 0.0 < float(alpha) <= 1.0:
            raise ValueError(f"FTBC's alpha (the weight of each new estimate) must lie in (0, 1], got {alpha}")
        xs = [x.to(device_of(snn)) for x in calibration_batches(data, min(batches, num_batches or batches))]
        if not xs:
            raise ValueError("correction='ftbc' needs calibration data")
        schedules: list[Optional[torch.Tensor]] = [None] * len(snn.neurons)
        errors = []  # per batch, per layer: the mean |r_t - a| over the steps, before each step's update
        for x in xs:
            pre, _ = ann_pre_activations(ann, x)
            for i, (site, neuron) in enumerate(zip(ann.sites, snn.neurons)):
                target = channel_mean(site.forward_activation(pre[i]))
                if schedules[i] is None:
                    base = torch.zeros_like(target) if neuron.bias is None else neuron.bias
                    schedules[i] = base.expand(T, *target.shape).clone()
                errors.append(_correct_layer(snn, i, x, target, schedules[i], T, float(alpha)))
        snn.reset()
        L = len(snn.neurons)
        return {"T": T, "samples": sum(int(x.shape[0]) for x in xs), "batches": len(xs), "alpha": float(alpha),
                "error_first_batch": errors[:L], "error_last_batch": errors[-L:]}


@torch.no_grad()
def _correct_layer(snn, i: int, x: torch.Tensor, target: torch.Tensor, schedule: torch.Tensor, T: int,
                   alpha: float) -> float:
    """One batch's pass over layer i: update its bias of every step (``schedule``, in place), each
    step run again with the update. Returns the layer's mean |r_t - a| over the steps, before."""
    neuron = snn.neurons[i]
    neuron.set_bias(schedule, per_step=True)
    seen = {}

    def before(module, args):  # the layer's input of the step, and its state before it
        seen["inp"] = args[0]
        seen["state"] = (module.v if module.v is None else module.v.clone(),
                         module.s if module.s is None else module.s.clone(), module.t)

    def after(module, args, out):
        seen["out"] = out

    handles = [neuron.register_forward_pre_hook(before), neuron.register_forward_hook(after)]
    errors = []
    try:
        snn.reset()
        snn.start(x)
        for t in range(T):
            snn.advance(1)
            e = channel_mean(seen["out"]) - target
            errors.append(float(e.abs().mean()))
            schedule[t] -= alpha * e
            neuron.set_bias(schedule, per_step=True)
            neuron.v, neuron.s, neuron.t = seen["state"]  # (at step 1: None, and step() sets it up again)
            neuron.step(seen["inp"])  # step t again, with its new bias
    finally:
        for h in handles:
            h.remove()
    return sum(errors) / len(errors)
