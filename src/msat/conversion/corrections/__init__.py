"""Corrections of a converted SNN for a target number of steps ``T``: one registered class each.

A correction edits the spiking network after ``lam`` is set: the input bias of its neurons
(a constant per channel, or a schedule per step), their initial membranes, or the network's
own copy of the weights; the ANN is not touched. Every correction works with every threshold
rule (it measures the SNN as it is).

A new correction is one module of this package: a subclass of :class:`Correction` decorated
with :func:`register_correction`. The package imports its modules itself, and a correction
that names a ``method`` becomes a named method of ``msat.METHODS`` (max-norm IF neurons, the
correction for ``default_T`` steps); its ``conf/method/<name>.yaml`` makes it a
``method=<name>`` on the command line.
"""

from __future__ import annotations

import importlib
import pkgutil
from typing import Any, Iterable, Optional

import torch

from ...spiking.network import SpikingNetwork
from ...spiking.simulation import iterate_steps
from ...util import batches, device_of, registrar

CORRECTIONS: dict[str, type["Correction"]] = {}


register_correction = registrar(
    CORRECTIONS, "correction", "Class decorator: make a :class:`Correction` available as a recipe's ``correction=name``.")


class Correction:
    """One correction. ``apply`` edits the SNN in place and returns a short report; ``state``
    and ``restore`` store and reload what it changed (a conversion artifact holds the state).
    ``options`` are its settings with their defaults (a recipe's ``correction_options``)."""

    name = "?"
    method: Optional[str] = None  # the named method that runs it on max-norm IF neurons
    default_T = 32
    options: dict[str, Any] = {}
    uses_data = True

    def apply(self, ann, snn: SpikingNetwork, data: Iterable, T: int, num_batches: Optional[int] = None,
              **options) -> dict:
        raise NotImplementedError

    def state(self, snn: SpikingNetwork) -> dict:
        """The neurons' biases and initial membranes."""
        return {"correction": self.name,
                "bias": [None if n.bias is None else n.bias.detach().cpu() for n in snn.neurons],
                "bias_per_step": [bool(n.bias_per_step) for n in snn.neurons],
                "v_init": [n.v_init if isinstance(n.v_init, float) else n.v_init.detach().cpu() for n in snn.neurons]}

    def restore(self, snn: SpikingNetwork, state: dict) -> None:
        per_step = state.get("bias_per_step") or [False] * len(snn.neurons)
        for n, b, step, v0 in zip(snn.neurons, state["bias"], per_step, state["v_init"]):
            n.set_bias(None if b is None else b.to(n.lam.device), per_step=step)
            n.set_v_init(v0 if isinstance(v0, float) else v0.to(device=n.lam.device, dtype=n.lam.dtype))


def check_correction(correction: Optional[str], T) -> Optional[str]:
    """A registered correction and its target T (a positive integer), or None."""
    if correction is None:
        return None
    if correction not in CORRECTIONS:
        raise ValueError(f"unknown correction {correction!r}; choose one of {', '.join(CORRECTIONS)} (or None)")
    if T is None:
        raise ValueError(f"correction={correction!r} is made for a target number of steps: pass T=<steps>, e.g. T=32")
    if isinstance(T, bool) or not isinstance(T, (int, float)) or int(T) != T or T < 1:
        raise ValueError(f"correction={correction!r} needs a target T >= 1 (an integer number of steps), got T={T!r}")
    return correction


def check_options(correction: Optional[str], options: dict) -> dict:
    """The correction's options, with unknown keys refused."""
    if not options:
        return {}
    known = CORRECTIONS[correction].options if correction in CORRECTIONS else {}
    unknown = sorted(set(options) - set(known))
    if unknown:
        raise ValueError(f"correction {correction!r} has no options {unknown}; it takes {sorted(known) or 'none'}")
    return dict(options)


def apply_correction(correction: str, ann, snn: SpikingNetwork, calibration_data: Iterable, T: int,
                     num_batches: Optional[int] = None, **options) -> dict:
    """Apply ``correction`` to ``snn`` in place for a target of T steps; returns its report."""
    check_correction(correction, T)
    return CORRECTIONS[correction]().apply(ann, snn, calibration_data, int(T), num_batches,
                                           **check_options(correction, options))


def correction_state(snn: SpikingNetwork, correction: Optional[str]) -> Optional[dict]:
    """What ``correction`` changed, for a conversion artifact (None: no correction)."""
    return None if correction is None else CORRECTIONS[correction]().state(snn)


def restore_correction(snn: SpikingNetwork, state: Optional[dict]) -> None:
    if state:
        CORRECTIONS[state["correction"]]().restore(snn, state)


# ----------------------------------------------------------------- what several corrections measure
def calibration_input(snn: SpikingNetwork, data: Iterable, batches_used: int, num_batches: Optional[int]):
    """The calibration images a correction measures on: the first ``batches_used`` batches (at
    most ``num_batches``), on the SNN's device, as one tensor."""
    xs = [x.to(device_of(snn)) for x in batches(data, min(batches_used, num_batches or batches_used))]
    if not xs:
        raise ValueError("the correction needs calibration data")
    return torch.cat(xs)


def channel_mean(a: torch.Tensor) -> torch.Tensor:
    """Mean over every dimension but the channel (dim 1): [C] broadcast like lam ([C, 1, 1])."""
    dims = [0] + list(range(2, a.dim()))
    m = a.mean(dims)
    return m.reshape(-1, *([1] * (a.dim() - 2)))


class RateMonitor:
    """Per-channel sum of a layer's output (spike * theta * lam) over the steps of a batch."""

    def __init__(self):
        self.sum: Optional[torch.Tensor] = None
        self.steps = 0

    def begin_batch(self, pre=None):
        self.sum, self.steps = None, 0

    def on_step(self, neuron, t, theta, fired, emitted):
        out = emitted * theta * neuron.lam
        m = channel_mean(out if isinstance(out, torch.Tensor) else torch.as_tensor(out))
        self.sum = m if self.sum is None else self.sum + m
        self.steps += 1

    def end_batch(self):
        pass

    def rate(self) -> torch.Tensor:
        return self.sum / self.steps


@torch.no_grad()
def layer_rates(snn: SpikingNetwork, x: torch.Tensor, T: int) -> list[torch.Tensor]:
    """Per-channel mean output rate of every spiking layer over T steps on the batch ``x``."""
    mons = [RateMonitor() for _ in snn.neurons]
    with snn.monitor(T, rate=mons) as ms:
        ms.begin_batch()
        for _ in iterate_steps(snn, x, T):
            pass
    return [m.rate() for m in mons]


for _module in pkgutil.iter_modules(__path__):  # every correction of the package registers itself
    importlib.import_module(f"{__name__}.{_module.name}")
