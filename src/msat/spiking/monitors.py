"""Per-step statistics of spiking layers, gathered by monitors (never threaded through
``forward``). ``SpikingNetwork.monitor(...)`` attaches one monitor per layer and group and
removes them on exit. Each monitor sees every time step of its layer in order, in
step-by-step and layer-major mode alike, and keeps only T-length counters on the
simulation device, so memory stays flat in T.

The protocol: ``begin_batch(pre)`` before a batch (``pre``: the layer's ANN
pre-activation on that batch, for the monitors with ``needs_ann``), ``on_step(neuron, t,
theta, fired, emitted)`` after every step, ``end_batch()``; counters live in ``state``
(tensors summed over batches, so that they can be all-reduced and checkpointed).
"""

from __future__ import annotations

from typing import Mapping, Optional, Sequence

import torch


def running_sum(chunk: torch.Tensor, running: Optional[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Cumulative sums of the steps of ``chunk`` ([K, ...]) continuing from ``running``, added
    one step at a time, so that the result is the same for every chunk size."""
    cum = torch.empty_like(chunk)
    for k in range(chunk.shape[0]):
        running = chunk[k].clone() if running is None else running + chunk[k]
        cum[k] = running
    return cum, running


def _percentiles(x: torch.Tensor) -> torch.Tensor:
    """10th and 90th percentiles with torch.quantile's linear interpolation, from one sort
    (torch.quantile's own overhead dominated the evaluation)."""
    v = x.reshape(-1).sort().values
    n = v.numel()
    out = []
    for q in (0.1, 0.9):
        pos = q * (n - 1)
        lo = int(pos)
        hi = min(lo + 1, n - 1)
        out.append(v[lo] + (pos - lo) * (v[hi] - v[lo]))
    return torch.stack(out)


class Monitor:
    """Base: counters live in ``self.state`` (a dict of tensors summed over batches)."""

    state: dict
    needs_ann = False

    def begin_batch(self, pre: Optional[torch.Tensor] = None) -> None:
        pass

    def on_step(self, neuron, t, theta, fired, emitted) -> None:
        raise NotImplementedError

    def end_batch(self) -> None:
        pass

    def state_dict(self) -> dict:
        return dict(self.state)

    def load_state_dict(self, state: Mapping[str, torch.Tensor]) -> None:
        for k, v in state.items():
            self.state[k].copy_(v)


class FiringMonitor(Monitor):
    """Spikes emitted per step (paper Fig. 7 and the energy estimate)."""

    def __init__(self, T: int, device=None):
        self.T = T
        kw = dict(dtype=torch.float64, device=device)
        self.state = {"spikes": torch.zeros(T, **kw), "neurons": torch.zeros((), **kw)}
        self.step = 0

    def begin_batch(self, pre=None) -> None:
        self.step = 0

    def on_step(self, neuron, t, theta, fired, emitted) -> None:
        if self.step == 0:
            self.state["neurons"] += emitted.numel()
        if self.step < self.T:
            self.state["spikes"][self.step] += emitted.sum()
        self.step += 1

    def rate(self) -> float:
        """Spikes per neuron per step over the run."""
        n = float(self.state["neurons"])
        return float(self.state["spikes"].sum()) / (n * self.T) if n else 0.0

    def spikes_per_neuron(self) -> float:
        """Mean number of spikes per neuron over the T steps (n[l] of the energy estimate)."""
        return self.rate() * self.T

    def neurons_per_sample(self, samples: float) -> float:
        return float(self.state["neurons"]) / samples if samples else 0.0

    def keep_rows(self, rows: torch.Tensor) -> None:
        """Early exit: the counts go on over the samples that remain (nothing per sample is kept)."""


class ThresholdMonitor(Monitor):
    """Trace of the firing threshold ``theta_t * lam``: its mean over all neurons, and its
    10th/90th percentiles over a fixed random sample of ``n_sample`` neuron entries per
    batch (exact percentiles of millions of entries at every step would cost more than
    the simulation). Batch values are averaged, weighted by batch size."""

    def __init__(self, T: int, device=None, n_sample: int = 1024, seed: int = 0):
        self.T, self.n_sample, self.seed = T, n_sample, seed
        kw = dict(dtype=torch.float64, device=device)
        self.state = {"sums": torch.zeros(3, T, **kw), "weight": torch.zeros((), **kw)}
        self.step = 0
        self._idx: Optional[torch.Tensor] = None

    def begin_batch(self, pre=None) -> None:
        self.step = 0
        self._idx = None

    def on_step(self, neuron, t, theta, fired, emitted) -> None:
        if self.step >= self.T:
            return
        shape = fired.shape
        B = shape[0]
        if self._idx is None:
            g = torch.Generator().manual_seed(self.seed)
            self._idx = torch.randperm(fired.numel(), generator=g)[: self.n_sample].to(fired.device)
            self.state["weight"] += B
        lam = neuron.lam
        if isinstance(theta, torch.Tensor) and lam.dim() == 0:
            mean = theta.mean() * lam  # gather, then scale: no full-size product
            sample = theta.reshape(-1)[self._idx] * lam
        elif isinstance(theta, torch.Tensor):
            thl = theta * lam
            mean = thl.mean()
            sample = thl.reshape(-1)[self._idx]
        elif lam.dim() == 0:
            mean = lam * theta
            sample = mean.reshape(1)
        else:  # per-channel lam: flat entry i belongs to channel (i // inner) % C
            inner = 1
            for d in shape[2:]:
                inner *= d
            chan = (self._idx // inner) % lam.shape[0]
            mean = lam.mean() * theta
            sample = lam.reshape(-1)[chan] * theta
        q = _percentiles(sample.float())
        sums = self.state["sums"]
        sums[0, self.step] += mean.double() * B
        sums[1:, self.step] += q.double() * B
        self.step += 1

    def keep_rows(self, rows: torch.Tensor) -> None:
        raise RuntimeError("threshold traces follow a fixed sample of neuron entries and are not recorded when images "
                           "leave the batch early; set eval.theta_traces=false (or drop the monitor)")

    def traces(self) -> dict[str, list[float]]:
        w = float(self.state["weight"])
        if not w:
            return {"mean": [], "p10": [], "p90": []}
        v = (self.state["sums"] / w).cpu()
        return {"mean": v[0].tolist(), "p10": v[1].tolist(), "p90": v[2].tolist()}


class SINMonitor(Monitor):
    """Spikes of inactivated neurons (spec section 3), summed over batches.

    A neuron is inactivated for a sample when its ANN pre-activation is negative; it has
    SIN by step t when it is inactivated and has emitted a spike in steps 1..t."""

    needs_ann = True

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

    def begin_batch(self, pre: Optional[torch.Tensor] = None) -> None:
        if pre is None:
            raise ValueError("the SIN monitor needs the ANN's pre-activations of the batch")
        self.inactive = pre < 0
        self.fired_any = torch.zeros_like(self.inactive)
        self.spikes = torch.zeros(self.inactive.shape, dtype=torch.float32, device=pre.device)
        self.step = 0
        self.state["totals"][0] += self.inactive.numel()

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

    def keep_rows(self, rows: torch.Tensor) -> None:
        """Early exit: the per-sample records of the samples that leave are counted, then dropped."""
        if self.inactive is None:
            return
        gone = torch.ones(self.inactive.shape[0], dtype=torch.bool, device=self.inactive.device)
        gone[rows] = False
        sin = self.fired_any[gone] & self.inactive[gone]
        self.state["totals"][1] += (self.spikes[gone] * sin).sum()
        self.state["totals"][2] += sin.sum()
        self.inactive, self.fired_any, self.spikes = (v.index_select(0, rows) for v in (self.inactive, self.fired_any,
                                                                                        self.spikes))

    def end_batch(self) -> None:
        if self.inactive is None:
            return
        sin = self.fired_any & self.inactive
        self.state["totals"][1] += (self.spikes * sin).sum()
        self.state["totals"][2] += sin.sum()
        self.inactive = None

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


class MonitorSet:
    """Named groups of monitors, one monitor per spiking layer in each group."""

    def __init__(self, groups: Mapping[str, Sequence[Monitor]]):
        self.groups = {k: list(v) for k, v in groups.items()}
        self.handles: list = []

    def __getitem__(self, name: str) -> list[Monitor]:
        return self.groups.get(name, [])

    def __getattr__(self, name: str) -> list[Monitor]:
        if name.startswith("_") or name in ("groups", "handles"):
            raise AttributeError(name)
        return self.groups.get(name, [])

    def all(self):
        return [(name, i, m) for name, ms in self.groups.items() for i, m in enumerate(ms) if m is not None]

    @property
    def needs_ann(self) -> bool:
        return any(getattr(m, "needs_ann", False) for _, _, m in self.all())

    def begin_batch(self, pre: Optional[Sequence[torch.Tensor]] = None) -> None:
        """Start a batch on every monitor (only ``on_step`` is required of a monitor)."""
        for _, i, m in self.all():
            if hasattr(m, "begin_batch"):
                m.begin_batch(None if pre is None else pre[i])

    def end_batch(self) -> None:
        for _, _, m in self.all():
            if hasattr(m, "end_batch"):
                m.end_batch()

    def remove(self) -> None:
        for h in self.handles:
            h.remove()
        self.handles = []

    def state(self) -> dict[str, torch.Tensor]:
        return {f"{name}.{i}.{k}": v for name, i, m in self.all() if hasattr(m, "state_dict")
                for k, v in m.state_dict().items()}

    def load(self, state: Mapping[str, torch.Tensor]) -> None:
        for name, i, m in self.all():
            if hasattr(m, "load_state_dict"):
                m.load_state_dict({k.split(".", 2)[2]: v for k, v in state.items() if k.startswith(f"{name}.{i}.")})
