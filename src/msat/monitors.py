"""Per-step statistics of spiking layers, gathered by monitors attached to
``IFNeuron.monitors`` (never threaded through ``forward``). Each monitor sees every time
step of its layer in order, in step-by-step and layer-major mode alike, and keeps only
T-length counters on the simulation device, so memory stays flat in T.
"""

from __future__ import annotations

from typing import Optional

import torch


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

    def state_dict(self) -> dict:
        return dict(self.state)

    def load_state_dict(self, state: dict) -> None:
        for k, v in state.items():
            self.state[k].copy_(v)


class FiringMonitor(Monitor):
    """Spikes emitted per step (paper Fig. 7 and the energy estimate)."""

    def __init__(self, T: int, device=None):
        self.T = T
        kw = dict(dtype=torch.float64, device=device)
        self.state = {"spikes": torch.zeros(T, **kw), "neurons": torch.zeros((), **kw)}
        self.step = 0

    def begin_batch(self) -> None:
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


class ThetaMonitor(Monitor):
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

    def begin_batch(self) -> None:
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

    def traces(self) -> dict[str, list[float]]:
        w = float(self.state["weight"])
        if not w:
            return {"mean": [], "p10": [], "p90": []}
        v = (self.state["sums"] / w).cpu()
        return {"mean": v[0].tolist(), "p10": v[1].tolist(), "p90": v[2].tolist()}
