"""Where the spiking net departs from its ANN: the paper's error split (Section 3.2, Eq. 5,
``e = e_QC + e_SIN``) measured per spiking layer and per step.

For spiking layer l after t steps, over all its neurons and all samples given, with ``a``
the ANN's activation of that layer (BatchNorm folded; the QCFS output for a QCFS net),
``pre`` the activation's input, and ``r_t`` the layer's emitted output summed over steps
1..t and divided by t (spike x theta x lam, in the units of ``a``)::

    rel_l2 = ||r_t - a|| / ||a||
    qc     = ||(r_t - a) * [pre >= 0]|| / ||a||   (activated neurons: quantisation, clip, delay)
    sin    = ||r_t * [pre < 0]|| / ||a||          (inactivated neurons, as in the SIN ratio)

so that ``rel_l2**2 == qc**2 + sin**2``. Over several batches the squares are summed over
all batches first and the roots taken at the end.
"""

from __future__ import annotations

from typing import Callable, Optional

import torch
from torch import nn

from ..conversion.prepare import ann_pre_activations, check_pair, prepare_ann, relu_sites
from ..spiking.monitors import Monitor
from ..spiking.network import SpikingNetwork
from ..spiking.simulation import check_T, iterate_steps
from ..util import batches, device_of

ERROR_KEYS = ("rel_l2", "qc", "sin")


class ErrorMonitor(Monitor):
    """Squared norms of the error split of one layer, per step, summed over batches."""

    needs_ann = True

    def __init__(self, T: int, activation: Callable[[torch.Tensor], torch.Tensor], device=None):
        self.T = T
        self.activation = activation
        kw = dict(dtype=torch.float64, device=device)
        self.state = {"qc_sq": torch.zeros(T, **kw), "sin_sq": torch.zeros(T, **kw), "a_sq": torch.zeros((), **kw)}
        self.a: Optional[torch.Tensor] = None

    def begin_batch(self, pre: Optional[torch.Tensor] = None) -> None:
        if pre is None:
            raise ValueError("the layer-error monitor needs the ANN's pre-activations of the batch")
        self.a = self.activation(pre).detach()
        self.active = pre >= 0
        self.total: Optional[torch.Tensor] = None
        self.step = 0
        self.state["a_sq"] += self.a.double().pow(2).sum()

    def on_step(self, neuron, t, theta, fired, emitted) -> None:
        if self.a is None or self.step >= self.T:
            return
        self.step += 1
        out = emitted * theta * neuron.lam
        self.total = out.clone() if self.total is None else self.total.add_(out)
        r = self.total / self.step
        diff = torch.where(self.active, r - self.a, torch.zeros((), dtype=r.dtype, device=r.device))
        sin = torch.where(self.active, torch.zeros((), dtype=r.dtype, device=r.device), r)
        self.state["qc_sq"][self.step - 1] += diff.double().pow(2).sum()
        self.state["sin_sq"][self.step - 1] += sin.double().pow(2).sum()

    def end_batch(self) -> None:
        self.a = self.total = None

    def norms(self) -> dict[str, torch.Tensor]:
        """rel_l2, qc and sin per step; undivided norms when ``||a|| = 0`` (no NaN)."""
        qc2, sin2 = self.state["qc_sq"].cpu(), self.state["sin_sq"].cpu()
        a_norm = float(self.state["a_sq"]) ** 0.5
        scale = 1.0 / a_norm if a_norm > 0 else 1.0
        return {"rel_l2": ((qc2 + sin2).sqrt() * scale).float(), "qc": (qc2.sqrt() * scale).float(),
                "sin": (sin2.sqrt() * scale).float(), "a_norm": a_norm}


def error_monitors(ann, T: int, device=None) -> list[ErrorMonitor]:
    """One error monitor per site of a prepared ANN, in graph order."""
    return [ErrorMonitor(T, site.forward_activation, device) for site in relu_sites(ann)]


def summarize_errors(monitors: list[ErrorMonitor], names: list[str]) -> dict:
    norms = [m.norms() for m in monitors]
    out = {"names": list(names)}
    for k in ERROR_KEYS:
        out[k] = [n[k] for n in norms]
    out["a_norm"] = [n["a_norm"] for n in norms]
    return out


@torch.no_grad()
def layer_errors(ann: nn.Module, snn: SpikingNetwork, x, T: int, chunk: int = 1) -> dict:
    """The error split of every spiking layer after each of T steps (module docstring).

    Same calling convention as :func:`msat.measure_sin`: ``ann`` is the ANN, ``snn`` what
    :func:`msat.convert` made of it, ``x`` one input batch or an iterable of batches. The
    ANN and the SNN run side by side in one simulation of T steps per batch.

    Returns ``{"names": [...], "rel_l2": [...], "qc": [...], "sin": [...]}``, each error a
    list with one float tensor of length T per spiking layer, in graph order. A layer whose
    ANN activations are all zero (``||a|| = 0``) gets the norms undivided (``"a_norm"``
    lists ``||a||`` per layer).
    """
    T = check_T(T)
    prepared = prepare_ann(ann)
    check_pair(prepared, snn)
    device = device_of(snn)
    prepared.to(device)
    monitors = error_monitors(prepared, T, device)
    data = [x] if isinstance(x, torch.Tensor) else list(batches(x, None))
    if not data:
        raise ValueError("layer_errors needs at least one input batch")
    with snn.monitor(T, errors=monitors) as mons:
        for xb in data:
            xb = xb.to(device=device, dtype=snn.neurons[0].lam.dtype)
            try:
                pre, _ = ann_pre_activations(prepared, xb)
            except RuntimeError as exc:
                raise ValueError(f"an input of shape {tuple(xb.shape)} does not fit the ANN ({exc}); pass a batch "
                                 f"of the shape the ANN was trained on, [batch, channels, ...]") from exc
            mons.begin_batch(pre)
            del pre
            for _ in iterate_steps(snn, xb, T, chunk):
                pass
            mons.end_batch()
    return summarize_errors(monitors, snn.layer_names)


def first_layer_over(errors: dict, key: str, t: int, threshold: float) -> Optional[int]:
    """Index of the first layer whose error ``key`` at step t exceeds ``threshold`` (None: none)."""
    for i, curve in enumerate(errors[key]):
        if float(curve[t - 1]) > threshold:
            return i
    return None
