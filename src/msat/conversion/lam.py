"""Where ``lam`` comes from: the layer scale of every spiking layer (spec section 1.3).

Every balancing is one registered class (:func:`register_balancing`) that a recipe names in its
``balancing`` field:

- ``max`` (Algorithm 1, lines 1-7): the maximum ReLU output on calibration data, or a
  ``percentile`` of them (p-Norm), per layer or per channel (``channelwise``, Channel-Norm);
- ``ltb``: local threshold balancing (Bu, Li, Yu, CVPR 2025, arXiv 2409.03368). Every site
  keeps a per-channel ``lam``, starting at 0; each calibration batch runs the ANN once, and at
  every site, in graph order, ``lam <- max(lam + 2 * mean((a - lam)^+), eps)`` (mean over batch
  and positions) from the site's activation ``a`` in that pass, after which the site's output
  is clipped at its updated ``lam``, so later layers see clipped inputs. After ``passes``
  passes the membrane starts at half the threshold. ``lam`` never decreases and grows slowly
  once most activations are below it, so too few passes leave it far below the activations'
  upper range;
- ``trained``: a QCFS net carries its trained ``lam`` in its activations (no calibration pass).
"""

from __future__ import annotations

import math
import warnings
from typing import Iterable, Optional

import torch
import torch.fx as fx
import torch.nn.functional as F

from ..util import batches, device_of, progress_bar, registrar
from .prepare import ConversionError, Observing, ReLUSite, relu_sites


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




LTB_EPS = 1e-8


LTB_MIN_PASSES = 5  # fewer passes leave lam far too low (see the module docstring)


def check_passes(passes) -> int:
    if isinstance(passes, bool) or int(passes) != passes or int(passes) < 1:
        raise ValueError(f"LTB needs passes >= 1 (passes over the calibration batches; 20 is the usual), got {passes!r}")
    return int(passes)


class LTBSite:
    """One site's per-channel ``lam``: the update, then the clip, in the site's forward."""

    def __init__(self, eps: float = LTB_EPS):
        self.rows: Optional[torch.Tensor] = None  # lam, one row per channel
        self.eps = eps
        self.ndim = 2

    def update_and_clip(self, site: ReLUSite, pre: torch.Tensor) -> torch.Tensor:
        a = torch.relu(pre)
        self.ndim = a.dim()
        rows = channel_values(a, channelwise=a.dim() >= 2, where=site.name)  # [C, N]
        if self.rows is None:
            self.rows = torch.zeros(rows.shape[0], 1, dtype=rows.dtype, device=rows.device)
        self.rows = torch.clamp(self.rows + 2.0 * (rows - self.rows).clamp(min=0).mean(1, keepdim=True), min=self.eps)
        return torch.minimum(a, as_lam(self.rows[:, 0], a.dim() >= 2, a.dim()))

    def lam(self) -> torch.Tensor:
        return as_lam(self.rows[:, 0], self.ndim >= 2, self.ndim)


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
        if bool((st.rows <= LTB_EPS).all()):
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


# ----------------------------------------------------------------- the sources
QCFS_CONTRADICTION = ("a QCFS net carries its trained lam; percentile, channelwise and balancing='ltb' contradict it: "
                      "drop them (or pass lam= explicitly)")
BALANCING: dict[str, type["Balancing"]] = {}


register_balancing = registrar(BALANCING, "balancing",
                               "Class decorator: make a :class:`Balancing` available as a recipe's ``balancing=name``.")


class Balancing:
    """Where ``lam`` comes from. ``check`` refuses the recipe settings that contradict the source
    (and, given the prepared ANN, an ANN it cannot serve); ``compute`` returns one tensor per
    site. ``v_init`` is the membrane start (in units of lam) the source's paper prescribes,
    used when the recipe leaves ``v_init`` open."""

    name = "?"
    v_init = 0.0

    def check(self, recipe, ann: Optional[fx.GraphModule] = None) -> None:
        pass

    def compute(self, ann: fx.GraphModule, data: Iterable, recipe, progress: bool = False) -> list[torch.Tensor]:
        raise NotImplementedError


@register_balancing("max")
class MaxBalancing(Balancing):
    """The max (or the ``percentile`` quantile) of each site's ReLU output, per layer or per channel."""

    def check(self, recipe, ann=None) -> None:
        check_percentile(recipe.percentile)

    def compute(self, ann, data, recipe, progress=False):
        return calibrate(ann, data, recipe.percentile, recipe.channelwise, recipe.num_batches, progress=progress)


@register_balancing("ltb")
class LocalThresholdBalancing(Balancing):
    """Per-channel ``lam`` learnt over ``passes`` passes of the calibration batches; membrane at lam / 2."""

    v_init = 0.5

    def check(self, recipe, ann=None) -> None:
        check_passes(recipe.passes)
        if recipe.percentile < 1.0:
            raise ValueError("balancing='ltb' chooses its own thresholds; a percentile contradicts it: drop "
                             "percentile (or use balancing='max')")
        if ann is not None and any(s.trained_lam is not None for s in relu_sites(ann)):
            raise ValueError(QCFS_CONTRADICTION)

    def compute(self, ann, data, recipe, progress=False):
        return ltb_lam(ann, data, passes=recipe.passes, num_batches=recipe.num_batches, progress=progress)


@register_balancing("trained")
class TrainedBalancing(Balancing):
    """The ``lam`` a QCFS net learnt in its activations; membrane at lam / 2 (Bu et al. 2022)."""

    v_init = 0.5

    def check(self, recipe, ann=None) -> None:
        if recipe.percentile < 1.0 or recipe.channelwise:
            raise ValueError(QCFS_CONTRADICTION)
        if ann is not None and any(s.trained_lam is None for s in relu_sites(ann)):
            raise ValueError("lam='trained' reads the lam a QCFS net learnt; this net has plain ReLUs: use "
                             "balancing='max' or 'ltb'")

    def compute(self, ann, data, recipe, progress=False):
        return trained_lam(ann)
