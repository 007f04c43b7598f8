"""The Python API: one call from a trained ANN to a spiking network.

``convert`` composes the stages of :mod:`msat.conversion` (trace, fold, sites),
:mod:`msat.calibration` / :mod:`msat.balancing` (the layer scales ``lam``),
:mod:`msat.corrections` (SNN Calibration, RTS), :mod:`msat.network` (the spiking graph)
and :mod:`msat.sin` (spike confidence).
"""

from __future__ import annotations

from typing import Any, Iterable, Mapping, Optional, Sequence

import torch
from torch import nn

from ..spiking.network import SpikingNetwork
from ..spiking.thresholds import make_rule
from ..util import device_of
from .build import build_snn
from .corrections import CORRECTIONS, apply_correction, check_correction
from .lam import BALANCING, calibrate, check_passes, check_percentile, ltb_lam, trained_lam
from .prepare import ConversionError, is_qcfs, prepare_ann
from .sin import apply_spike_confidence, one_shot_safe


def convert(
    model: nn.Module,
    calibration_data: Iterable,
    *,
    method: str = "msat",
    hparams: Optional[Mapping[str, Any]] = None,
    percentile: float = 1.0,
    channelwise: bool = False,
    num_batches: Optional[int] = None,
    sc: Optional[Mapping[str, Any]] = None,
    max_spikes: int = 1,
    v_init: Optional[float] = None,
    lam: Optional[Sequence[torch.Tensor | float]] = None,
    balancing: str = "max",
    passes: int = 20,
    correction: Optional[str] = None,
    T: Optional[int] = None,
    correction_options: Optional[Mapping[str, Any]] = None,
) -> SpikingNetwork:
    """Convert an eval-mode ReLU (or QCFS) ANN into an SNN that runs one time step per call.

    Args:
        model: the trained ANN (not modified).
        calibration_data: an iterable of input tensors or ``(input, target)`` pairs
            (training images with test-time transforms).
        method: threshold rule, ``"msat"``, ``"dtt"``, ``"det"`` or ``"const"``.
        hparams: the Table 2 keys ``alpha, k_a, k_i, C, tau_mp, tau_rd`` (optional ``V_T``,
            default -1, and ``tau_rd_twice``); for ``const``, ``frac`` (default 1).
        percentile: ``lam`` is this quantile of each layer's ReLU output (1.0 = max).
        channelwise: one ``lam`` per channel instead of per layer.
        num_batches: calibrate on at most this many batches (None: all).
        sc: spike confidence, a dict with ``p`` (float, list or None to measure it on one
            calibration batch), ``early_steps`` (E, default 16, or ``"auto"``), ``layers``
            (``"last"``/``"all"``), ``reset`` (``"fired"``/``"emitted"``), ``seed``,
            ``r_definition`` (``"fired"``/``"all"``) and ``T`` (steps measured for ``"auto"``).
        max_spikes: spikes a neuron may emit per step (burst firing; 1 = plain IF).
        v_init: initial membrane in units of ``lam``; None means 0 (the paper), or 0.5 for a
            QCFS net and for LTB, as their papers prescribe.
        lam: skip calibration and use these layer scales (one per ReLU site).
        balancing: ``"max"`` (the max or ``percentile`` of the ReLU outputs) or ``"ltb"``
            (local threshold balancing, per channel, over ``passes`` passes). A QCFS net
            takes its trained ``lam`` and needs no calibration pass.
        correction: ``None``, ``"light"`` / ``"advanced"`` (SNN Calibration, Li et al. 2021)
            or ``"rts"`` (Deng & Gu 2021), for a target number of steps ``T``.
        correction_options: extra settings of the correction (see :mod:`msat.corrections`).
    """
    rule = make_rule(method, hparams)  # validates the rule before any work
    check_percentile(percentile)
    if balancing not in BALANCING:
        raise ValueError(f"unknown balancing {balancing!r}; choose one of {', '.join(BALANCING)}")
    if balancing == "ltb":
        check_passes(passes)
        if percentile < 1.0:
            raise ValueError("balancing='ltb' chooses its own thresholds; a percentile contradicts it: drop "
                             "percentile (or use balancing='max')")
    correction = check_correction(correction, T)
    ann = prepare_ann(model)
    qcfs = is_qcfs(ann)
    if qcfs and lam is None and (percentile < 1.0 or channelwise or balancing != "max"):
        raise ValueError("a QCFS net carries its trained lam; percentile, channelwise and balancing='ltb' contradict "
                         "it: drop them (or pass lam= explicitly)")
    needs_data_twice = sc is not None or correction is not None or balancing == "ltb"
    if needs_data_twice:
        calibration_data = one_shot_safe(calibration_data, num_batches)
    if lam is None:
        lam = compute_lam(ann, calibration_data, balancing, percentile, channelwise, passes, num_batches)
    if v_init is None:
        v_init = default_v_init(qcfs, balancing)
    snn = build_snn(ann, lam, v_init=v_init, max_spikes=max_spikes, rule=rule)
    snn.to(device_of(ann))
    snn.conversion = {"balancing": "trained" if qcfs else balancing, "percentile": percentile,
                      "channelwise": channelwise, "passes": passes if balancing == "ltb" else None,
                      "v_init": v_init if isinstance(v_init, float) else "per-layer", "correction": correction, "T": T}
    if correction is not None:
        snn.conversion["correction_report"] = apply_correction(correction, ann, snn, calibration_data, T, num_batches,
                                                               **dict(correction_options or {}))
    if sc is not None:
        apply_spike_confidence(snn, ann, calibration_data, sc)
    snn.reset()
    return snn


def compute_lam(ann, calibration_data: Iterable, balancing: str = "max", percentile: float = 1.0,
                channelwise: bool = False, passes: int = 20, num_batches: Optional[int] = None,
                progress: bool = False) -> list[torch.Tensor]:
    """The layer scales of a prepared ANN: trained (QCFS), LTB, or the max / percentile."""
    if is_qcfs(ann):
        return trained_lam(ann)
    if balancing == "ltb":
        return ltb_lam(ann, calibration_data, passes=passes, num_batches=num_batches, progress=progress)
    return calibrate(ann, calibration_data, percentile, channelwise, num_batches, progress=progress)


def default_v_init(qcfs: bool, balancing: str) -> float:
    """0 (the MSAT paper), or half the threshold where the method's paper prescribes it (QCFS, LTB)."""
    return 0.5 if (qcfs or balancing == "ltb") else 0.0


__all__ = ["convert", "compute_lam", "default_v_init", "ConversionError", "CORRECTIONS"]
