"""The one conversion pipeline: a :class:`~msat.conversion.recipe.Recipe` run in fixed stages.

:class:`Converter` owns the order (SpikingJelly 2.0's converter/recipe split): validate the
recipe, prepare the ANN (trace, check, fold BN, mark the ReLU sites), compute ``lam`` with the
recipe's balancing, build the spiking network, apply the correction, then spike confidence. The
strategies plug in by registration: a threshold rule (:mod:`msat.spiking.thresholds`), a balancing
(:mod:`msat.conversion.lam`), a correction (:mod:`msat.conversion.corrections`).
``msat.convert`` runs it, and so do ``convert.py`` (which stores :meth:`Converter.state` in its
artifact) and ``evaluate.py`` (which rebuilds the SNN with :meth:`Converter.restore`).
"""

from __future__ import annotations

from typing import Any, Iterable, Mapping, Optional, Sequence

import torch
import torch.fx as fx
from torch import nn

from ..spiking.network import SpikingNetwork
from ..util import device_of
from .build import build_snn
from .corrections import CORRECTIONS, apply_correction, correction_state, restore_correction
from .lam import BALANCING
from .prepare import prepare_ann
from .recipe import Recipe
from .sin import apply_spike_confidence, one_shot_safe


class Converter:
    """Runs one recipe. ``run`` does every stage; the stages are methods of their own, so that a
    task can store what it needs (``state``) and rebuild the network later (``restore``)."""

    def __init__(self, recipe: Recipe, progress: bool = False):
        if not isinstance(recipe, Recipe):
            raise TypeError(f"expected a msat Recipe, got {type(recipe).__name__}")
        self.recipe = recipe.validate()  # every setting is checked before any work
        self.progress = progress

    # ------------------------------------------------------------------ the stages
    def prepare(self, model: nn.Module) -> fx.GraphModule:
        ann = prepare_ann(model)
        self.recipe.validate(ann)  # what the ANN itself rules out (a QCFS net and a percentile, ...)
        return ann

    def needs_data_twice(self) -> bool:
        r = self.recipe
        return r.sc is not None or r.correction is not None or r.balancing == "ltb"

    def lam(self, ann: fx.GraphModule, data: Iterable) -> list[torch.Tensor]:
        balancing = BALANCING[self.recipe.balancing_used(ann)]()
        return balancing.compute(ann, data, self.recipe, progress=self.progress)

    def build(self, ann: fx.GraphModule, lam: Sequence[torch.Tensor | float]) -> SpikingNetwork:
        r = self.recipe
        v_init = r.initial_membrane(ann)
        snn = build_snn(ann, lam, v_init=v_init, max_spikes=r.max_spikes, rule=r.rule())
        snn.to(device_of(ann))
        snn.recipe = r
        snn.conversion = {"balancing": r.balancing_used(ann), "percentile": r.percentile, "channelwise": r.channelwise,
                          "passes": r.passes if r.balancing == "ltb" else None, "v_init": v_init,
                          "correction": r.correction, "T": r.correction_T}
        return snn

    def correct(self, ann: fx.GraphModule, snn: SpikingNetwork, data: Iterable) -> Optional[dict]:
        r = self.recipe
        if r.correction is None:
            return None
        report = apply_correction(r.correction, ann, snn, data, r.correction_T, r.num_batches,
                                  **dict(r.correction_options))
        snn.conversion["correction_report"] = report
        return report

    def spike_confidence(self, ann: fx.GraphModule, snn: SpikingNetwork, data: Iterable) -> Optional[dict]:
        if self.recipe.sc is None:
            return None
        return apply_spike_confidence(snn, ann, data, dict(self.recipe.sc))

    # ------------------------------------------------------------------ all of them
    def run(self, model: nn.Module, data: Iterable, lam: Optional[Sequence[torch.Tensor | float]] = None,
            sc: bool = True, ann: Optional[fx.GraphModule] = None) -> SpikingNetwork:
        """Every stage on ``model`` (not modified) and the calibration ``data``; ``lam`` skips the
        lam stage, ``sc=False`` the spike-confidence stage, ``ann`` the preparation."""
        ann = self.prepare(model) if ann is None else ann
        if self.needs_data_twice():
            data = one_shot_safe(data, self.recipe.num_batches)
        lam = self.lam(ann, data) if lam is None else lam
        snn = self.build(ann, lam)
        self.correct(ann, snn, data)
        if sc:
            self.spike_confidence(ann, snn, data)
        snn.reset()
        return snn

    # ------------------------------------------------------------------ storing and rebuilding
    def state(self, snn: SpikingNetwork) -> dict:
        """What rebuilds ``snn`` from the same ANN: the recipe, lam and the correction's state."""
        return {"recipe": self.recipe.to_dict(), "lam": [v.detach().cpu() for v in snn.lam],
                "correction_state": correction_state(snn, self.recipe.correction)}

    def restore(self, model: nn.Module, state: Mapping[str, Any], dtype: Optional[torch.dtype] = None,
                device=None) -> tuple[fx.GraphModule, SpikingNetwork]:
        """(prepared ANN, SNN) of ``model`` from a :meth:`state`, in ``dtype`` on ``device``."""
        if dtype is not None:
            model = model.to(dtype)
        ann = self.prepare(model)
        lam = [v if dtype is None else v.to(dtype) for v in state["lam"]]
        snn = self.build(ann, lam)
        if device is not None:
            snn.to(device)
        restore_correction(snn, state.get("correction_state"))
        return ann, snn


def convert(model: nn.Module, calibration_data: Iterable, recipe: Optional[Recipe] = None, *,
            lam: Optional[Sequence[torch.Tensor | float]] = None, **keywords) -> SpikingNetwork:
    """Convert an eval-mode ReLU (or QCFS) ANN into an SNN that runs one time step per call.

    Either a :class:`Recipe` (e.g. ``msat.METHODS["calibration_light"]``, or
    ``msat.METHODS["msat"].for_model("vgg16")``) or the keywords below, which build one:

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
        balancing: where ``lam`` comes from: ``"max"`` (the max or ``percentile`` of the ReLU
            outputs), ``"ltb"`` (local threshold balancing, per channel, over ``passes``
            passes) or ``"trained"`` (a QCFS net's; ``"max"`` on a QCFS net is the same).
        correction: ``None``, ``"light"`` / ``"advanced"`` (SNN Calibration, Li et al. 2021)
            or ``"rts"`` (Deng & Gu 2021), or any registered correction, for a target number
            of steps ``T``.
        correction_options: settings of the correction (see :mod:`msat.conversion.corrections`).
    """
    if recipe is None:
        recipe = Recipe.from_keywords(**keywords)
    elif keywords:
        raise TypeError(f"pass a recipe or keywords, not both (got {sorted(keywords)})")
    return Converter(recipe).run(model, calibration_data, lam=lam)


__all__ = ["convert", "Converter", "Recipe", "CORRECTIONS"]
