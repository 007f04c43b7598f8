"""SNN Calibration (Li, Deng, Dong, Gong, Gu, ICML 2021, "A free lunch from ANN: towards efficient,
accurate spiking neural networks calibration"), its two pipelines:

- ``light``, layer by layer in graph order: run the ANN and the SNN (T steps) on the calibration
  batch and take the per-channel mean error ``e = E[a_ANN] - E[rate_SNN]``. *Bias correction*
  adds ``e`` to the layer's input; then, measured again, *potential correction* adds
  ``T * e / lam`` to the initial membrane (in units of ``lam``), which moves the T-step spike
  count by the same amount.
- ``advanced``: light, preceded in every layer by *weight calibration*: the Conv/Linear that
  feeds the layer is optimised (Adam) so that the IF rate it would produce from the SNN's
  time-averaged inputs, ``lam * clip(floor(T z / lam + v0), 0, T) / T`` with a straight-through
  floor, matches the ANN's activation (MSE). Needs at least ``ADVANCED_MIN_SAMPLES`` calibration
  images. The rate model is exact for the constant threshold only.
"""

from __future__ import annotations

import copy
import logging
import operator
from typing import Optional

import torch
import torch.fx as fx
from torch import nn

from ...spiking.network import SpikingNetwork
from ...spiking.neuron import IFNeuron
from ...spiking.simulation import check_T, iterate_steps
from ..prepare import ann_pre_activations, check_pair
from . import Correction, calibration_input, channel_mean, layer_rates, register_correction

log = logging.getLogger(__name__)

ADVANCED_MIN_SAMPLES = 128
ADD_OPS = {operator.add, torch.add}


def _ann_means(ann, x: torch.Tensor) -> list[torch.Tensor]:
    pre, _ = ann_pre_activations(ann, x)
    return [channel_mean(site.forward_activation(p)) for site, p in zip(ann.sites, pre)]


def _add_v_init(neuron: IFNeuron, delta: torch.Tensor) -> None:
    base = torch.as_tensor(neuron.v_init, dtype=delta.dtype, device=delta.device)
    neuron.set_v_init((base + delta).detach())


def _correct_layer(snn, ann_means, x, T: int, i: int) -> dict:
    """Bias, then potential correction of layer i (each from a fresh measurement)."""
    n = snn.neurons[i]
    e = ann_means[i] - layer_rates(snn, x, T)[i]
    n.set_bias(e if n.bias is None else n.bias + e)
    e2 = ann_means[i] - layer_rates(snn, x, T)[i]
    lam = torch.where(n.lam == 0, torch.ones_like(n.lam), n.lam)
    _add_v_init(n, (T * e2 / lam).to(n.lam.dtype))
    return {"layer": n.layer_name, "bias_mean_abs": float(e.abs().mean()), "residual_mean_abs": float(e2.abs().mean())}


@register_correction("light")
class Light(Correction):
    """Bias and potential correction, layer by layer (module docstring)."""

    method = "calibration_light"
    options = {"batches_used": 1}
    weights = False

    def apply(self, ann, snn, data, T, num_batches=None, batches_used: int = 1, iterations: int = 300,
              lr: float = 1e-4) -> dict:
        T = check_T(T)
        check_pair(ann, snn)
        x = calibration_input(snn, data, batches_used, num_batches)
        if self.weights and x.shape[0] < ADVANCED_MIN_SAMPLES:
            raise ValueError(f"correction='advanced' needs at least {ADVANCED_MIN_SAMPLES} calibration images for its "
                             f"weight calibration, got {x.shape[0]}: use a larger calibration batch (or "
                             "correction='light')")
        ann_means = _ann_means(ann, x)
        report = []
        for i in range(len(snn.neurons)):
            entry = calibrate_weights(ann, snn, x, T, i, iterations=iterations, lr=lr) if self.weights else {}
            entry.update(_correct_layer(snn, ann_means, x, T, i))
            report.append(entry)
            log.debug("correction %s, layer %d: %s", self.name, i, entry)
        snn.reset()
        return {"T": T, "samples": int(x.shape[0]), "layers": report}


@register_correction("advanced")
class Advanced(Light):
    """Weight calibration of the Conv/Linear that feeds each layer, then light (module docstring).
    The state holds the calibrated weights too."""

    method = "calibration_advanced"
    options = {"batches_used": 1, "iterations": 300, "lr": 1e-4}
    weights = True

    def state(self, snn: SpikingNetwork) -> dict:
        state = super().state(snn)
        state["weights"] = {f"{part}.{k}": v.detach().cpu() for part in ("static", "dynamic")
                            for k, v in getattr(snn, part).named_parameters()}
        return state

    def restore(self, snn: SpikingNetwork, state: dict) -> None:
        super().restore(snn, state)
        with torch.no_grad():
            for part in ("static", "dynamic"):
                for k, p in getattr(snn, part).named_parameters():
                    p.copy_(state["weights"][f"{part}.{k}"].to(p))


# ----------------------------------------------------------------- weight calibration
def _feeding_module(ann: fx.GraphModule, index: int) -> tuple[Optional[str], bool]:
    """The Conv/Linear whose output feeds site ``index`` (through at most one addition, the
    residual sum), and whether another branch is added to it."""
    for node in ann.graph.nodes:
        if node.op == "call_module" and getattr(ann.get_submodule(node.target), "index", None) == index:
            src = node.args[0]
            cands = [src]
            if src.op == "call_function" and src.target in ADD_OPS:
                cands = [a for a in src.args if isinstance(a, fx.Node)]
            for c in cands:
                if c.op == "call_module" and isinstance(ann.get_submodule(c.target), (nn.Conv1d, nn.Conv2d, nn.Linear)):
                    return c.target, len(cands) > 1
    return None, False


class _Averager:
    """Forward hook: the time average of a module's input and output over a simulation."""

    def __init__(self, module: nn.Module, steps_of):
        self.inp = self.out = None
        self.count = 0
        self.steps_of = steps_of
        self.handle = module.register_forward_hook(self)

    def __call__(self, module, args, output):
        K = self.steps_of(args[0], output)
        i = args[0].reshape(K, -1, *args[0].shape[1:]).sum(0) if K > 1 else args[0]
        o = output.reshape(K, -1, *output.shape[1:]).sum(0) if K > 1 else output
        self.inp = i.clone() if self.inp is None else self.inp + i
        self.out = o.clone() if self.out is None else self.out + o
        self.count += K


def _site_input_average(snn: SpikingNetwork, i: int, x: torch.Tensor, T: int, target: str):
    """Time-averaged input and output of module ``target`` and input of neuron i over T steps."""
    modules = [gm.get_submodule(target) for gm in (snn.static, snn.dynamic) if _has(gm, target)]
    avgs = [_Averager(m, lambda a, o: 1) for m in modules]
    neuron_in = _Averager(snn.neurons[i], lambda a, o: 1)
    try:
        with torch.no_grad():
            for _ in iterate_steps(snn, x, T):
                pass
    finally:
        for a in avgs + [neuron_in]:
            a.handle.remove()
    used = next(a for a in avgs if a.count)
    static = used.count == 1  # the module saw the constant input once (the input-only part)
    scale = 1.0 if static else 1.0 / T
    return used.inp * scale, used.out * scale, neuron_in.inp / T, modules


def _has(gm: fx.GraphModule, target: str) -> bool:
    try:
        gm.get_submodule(target)
        return True
    except AttributeError:
        return False


def calibrate_weights(ann, snn: SpikingNetwork, x: torch.Tensor, T: int, i: int, iterations: int = 300,
                      lr: float = 1e-4, minibatch: int = 64) -> dict:
    """Weight calibration of the Conv/Linear feeding spiking layer i (module docstring)."""
    target, residual = _feeding_module(ann, i)
    if target is None:
        return {"weights": "not calibrated (no Conv/Linear feeds this layer directly)"}
    r_in, m_out, z_snn, modules = _site_input_average(snn, i, x, T, target)
    other = z_snn - m_out if residual else None  # the residual branch, as it is in the SNN
    neuron = snn.neurons[i]
    pre, _ = ann_pre_activations(ann, x)
    target_a = ann.sites[i].forward_activation(pre[i]).detach()
    layer = copy.deepcopy(modules[0]).train()
    for p in layer.parameters():
        p.requires_grad_(True)
    lam = torch.where(neuron.lam == 0, torch.ones_like(neuron.lam), neuron.lam).detach()
    v0 = torch.as_tensor(neuron.v_init, dtype=lam.dtype)
    bias = 0 if neuron.bias is None else neuron.bias.detach()

    def rate(z):
        q = T * (z + bias) / lam + v0
        q = q + (torch.floor(q) - q).detach()  # straight-through floor
        return torch.clamp(q, 0, T) * lam / T

    opt = torch.optim.Adam(layer.parameters(), lr=lr)
    g = torch.Generator().manual_seed(i)
    n = r_in.shape[0]
    with torch.enable_grad():
        first = last = None
        for _ in range(int(iterations)):
            idx = torch.randperm(n, generator=g)[:minibatch].to(r_in.device)
            z = layer(r_in[idx]) + (0 if other is None else other[idx])
            loss = torch.mean((rate(z) - target_a[idx]) ** 2)
            opt.zero_grad()
            loss.backward()
            opt.step()
            last = float(loss.detach())
            first = last if first is None else first
    with torch.no_grad():
        for m in modules:
            for p_dst, p_src in zip(m.parameters(), layer.parameters()):
                p_dst.copy_(p_src)
    return {"weights": target, "mse_first": first, "mse_last": last}
