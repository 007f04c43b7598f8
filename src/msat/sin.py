"""Spikes of inactivated neurons (SIN) and spike confidence (spec section 3).

A neuron is *inactivated* for a sample when its ANN pre-activation (the ReLU input after
BN folding) is negative; it has *SIN by step t* when it is inactivated and has emitted at
least one spike in steps 1..t. The ANN and the SNN run side by side on the same batch.
"""

from __future__ import annotations

import itertools
from typing import Any, Iterable, Mapping, Optional

import torch
from torch import nn

from .conversion import ReLUSite, _batches, prepare_ann, relu_sites
from .monitors import Monitor
from .simulation import SpikingNetwork, check_T, iterate_steps

SC_KEYS = {"p", "early_steps", "layers", "reset", "seed", "r_definition", "T"}


class SINMonitor(Monitor):
    """Per-layer SIN statistics, summed over batches. Attach to ``neuron.monitors``.

    Counters stay on the simulation device (no host sync per step)."""

    def __init__(self, T: int, device=None):
        self.T = T
        kw = dict(dtype=torch.float64, device=device)
        self.state = {
            "sin_count": torch.zeros(T, **kw),  # neurons with SIN by step t
            "fired_count": torch.zeros(T, **kw),  # neurons that fired by step t
            "totals": torch.zeros(3, **kw),  # neurons x samples, SIN spikes, neurons with SIN
        }
        self.inactive: Optional[torch.Tensor] = None

    @property
    def sin_count(self) -> torch.Tensor:
        return self.state["sin_count"]

    @property
    def fired_count(self) -> torch.Tensor:
        return self.state["fired_count"]

    def begin_batch(self, inactive: torch.Tensor) -> None:
        self.inactive = inactive
        self.fired_any = torch.zeros_like(inactive)
        self.spikes = torch.zeros(inactive.shape, dtype=torch.float32, device=inactive.device)
        self.step = 0
        self.state["totals"][0] += inactive.numel()

    def on_step(self, neuron, t, theta, fired, emitted) -> None:
        if self.inactive is None:
            return
        self.step += 1
        if self.step > self.T:
            return
        self.fired_any |= emitted > 0
        self.spikes += emitted
        self.state["sin_count"][self.step - 1] += (self.fired_any & self.inactive).sum()
        self.state["fired_count"][self.step - 1] += self.fired_any.sum()

    def end_batch(self) -> None:
        if self.inactive is None:
            return
        sin = self.fired_any & self.inactive
        self.state["totals"][1] += (self.spikes * sin).sum()
        self.state["totals"][2] += sin.sum()
        self.inactive = None

    # -------------------------------------------------------------- results
    @property
    def neurons(self) -> float:
        return float(self.state["totals"][0])

    def ratio(self) -> torch.Tensor:
        """SIN ratio after each step: neurons with SIN / all neurons of the layer."""
        return (self.sin_count / max(self.neurons, 1.0)).cpu()

    def fired_ratio(self) -> torch.Tensor:
        return (self.fired_count / max(self.neurons, 1.0)).cpu()

    def ratio_among_fired(self) -> torch.Tensor:
        f = self.fired_count.cpu()
        return torch.where(f > 0, self.sin_count.cpu() / f.clamp(min=1), torch.zeros((), dtype=f.dtype))

    def ans(self) -> float:
        """ANS: mean number of SIN spikes per neuron with SIN (paper Table 7)."""
        n = float(self.state["totals"][2])
        return float(self.state["totals"][1]) / n if n else 0.0


class InactiveRecorder:
    """Records ``pre < 0`` at every ReLU site of a prepared ANN."""

    def __init__(self, sites):
        self.sites = sites
        self.masks: list[Optional[torch.Tensor]] = [None] * len(sites)

    def __call__(self, site: ReLUSite, pre: torch.Tensor) -> None:
        self.masks[site.index] = pre.detach() < 0

    def __enter__(self):
        for s in self.sites:
            s.observers.append(self)
        return self

    def __exit__(self, *exc):
        for s in self.sites:
            s.observers.remove(self)


@torch.no_grad()
def inactive_masks(ann, x: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
    """Run the prepared ANN on ``x``; returns (inactivated masks per site, ANN logits)."""
    with InactiveRecorder(relu_sites(ann)) as rec:
        logits = ann(x)
    return rec.masks, logits


def _check_pair(ann, snn: SpikingNetwork) -> None:
    if len(relu_sites(ann)) != len(snn.neurons):
        raise ValueError(
            f"the ANN has {len(relu_sites(ann))} ReLU sites but the SNN has {len(snn.neurons)} spiking "
            f"layers; pass the model that was converted"
        )


@torch.no_grad()
def sin_statistics(ann, snn: SpikingNetwork, x: torch.Tensor, T: int, chunk: int = 1) -> list[SINMonitor]:
    """Run a prepared ANN and the SNN side by side on one batch; one monitor per layer."""
    T = check_T(T)
    _check_pair(ann, snn)
    masks, _ = inactive_masks(ann, x)
    monitors = [SINMonitor(T, x.device) for _ in snn.neurons]
    for n, m, mask in zip(snn.neurons, monitors, masks):
        m.begin_batch(mask)
        n.monitors.append(m)
    try:
        for _ in iterate_steps(snn, x, T, chunk):
            pass
    finally:
        for n, m in zip(snn.neurons, monitors):
            n.monitors.remove(m)
            m.end_batch()
    return monitors


def measure_sin(model: nn.Module, snn: SpikingNetwork, x: torch.Tensor, T: int) -> list[torch.Tensor]:
    """SIN ratio of every spiking layer after each of T steps, for one input batch.

    ``model`` is the ANN and ``snn`` the result of :func:`msat.convert` on it. Returns one
    float tensor of length T per spiking layer, in graph order.
    """
    ann = prepare_ann(model)
    device = next(iter(snn.buffers())).device
    ann.to(device)
    monitors = sin_statistics(ann, snn, x.to(device), T)
    return [m.ratio().float() for m in monitors]


def auto_early_steps(ratio: torch.Tensor, fraction: float = 0.9) -> int:
    """Smallest t (1-based) at which the SIN ratio reaches ``fraction`` of its final value."""
    final = float(ratio[-1])
    hit = (ratio >= fraction * final).nonzero()
    return int(hit[0]) + 1 if len(hit) else len(ratio)


def spike_confidence(monitors: list[SINMonitor], early_steps: int, r_definition: str = "fired") -> list[float]:
    """p[l] = 1 - r[l], with r[l] = neurons with SIN by step E / neurons that fired by E
    (``r_definition="fired"``, the default) or / all neurons (``"all"``)."""
    if r_definition not in ("fired", "all"):
        raise ValueError(f"r_definition must be 'fired' or 'all', got {r_definition!r}")
    p = []
    for m in monitors:
        if early_steps > m.T:
            raise ValueError(f"E={early_steps} is beyond the {m.T} measured steps")
        sin = float(m.sin_count[early_steps - 1])
        denom = float(m.fired_count[early_steps - 1]) if r_definition == "fired" else m.neurons
        p.append(1.0 - (sin / denom if denom else 0.0))
    return p


def check_sc(sc: Mapping[str, Any]) -> dict:
    unknown = set(sc) - SC_KEYS
    if unknown:
        raise ValueError(f"unknown spike-confidence keys {sorted(unknown)}; allowed: {sorted(SC_KEYS)}")
    out = dict(p=None, early_steps=16, layers="last", reset="fired", seed=0, r_definition="fired", T=256)
    out.update({k: v for k, v in sc.items() if v is not None or k == "p"})
    E = out["early_steps"]
    if E != "auto" and (isinstance(E, bool) or int(E) != E or int(E) < 1):
        raise ValueError(f"sc early_steps must be a positive integer or 'auto', got {E!r}")
    p = out["p"]
    values = [] if p is None else ([p] if isinstance(p, (int, float)) else list(p.values()) if isinstance(p, Mapping) else list(p))
    for v in values:
        if not 0.0 <= float(v) <= 1.0:
            raise ValueError(f"spike confidence p must lie in [0, 1], got {v}")
    return out


def apply_spike_confidence(snn: SpikingNetwork, ann, calibration_data: Iterable, sc: Mapping[str, Any]) -> dict:
    """Configure SC on ``snn``; p (and E='auto') are measured on the first calibration batch
    when not given. Returns the resolved settings."""
    sc = check_sc(sc)
    E = sc["early_steps"]
    if sc["p"] is None or E == "auto":
        x = next(iter(_batches(calibration_data, 1)), None)
        if x is None:
            raise ValueError("spike confidence needs one calibration batch to measure p")
        device = next(iter(snn.buffers())).device
        snn.clear_sc()
        T_meas = int(sc["T"]) if E == "auto" else int(E)
        monitors = sin_statistics(ann, snn, x.to(device), T_meas)
        L = len(monitors)
        layers = [L - 1] if sc["layers"] == "last" else list(range(L)) if sc["layers"] == "all" else sc["layers"]
        if E == "auto":
            E = auto_early_steps(monitors[layers[-1]].ratio())
        if sc["p"] is None:
            sc["p"] = spike_confidence(monitors, E, sc["r_definition"])
    sc["early_steps"] = int(E)
    snn.configure_sc(sc["p"], sc["early_steps"], sc["layers"], sc["reset"], int(sc["seed"]))
    return sc


def one_shot_safe(data: Iterable, num_batches: Optional[int]) -> Iterable:
    """Materialise a one-shot iterator so that it can be read twice (calibration, then SC)."""
    if iter(data) is data:
        return list(itertools.islice(data, num_batches))
    return data
