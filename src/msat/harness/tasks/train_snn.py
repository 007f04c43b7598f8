"""``train_snn.py``: MT-SNNs trained directly with multiple thresholds (spec ``mt.md`` section 2)."""

from __future__ import annotations

import logging

from omegaconf import DictConfig

from ...spiking.plif import check_deltas
from .train import train_stage

log = logging.getLogger(__name__)


def mt_model_spec(cfg: DictConfig) -> dict:
    """The model spec of a train_snn.py run (checked against checkpoints)."""
    neuron = cfg.neuron
    T = neuron.T
    if isinstance(T, bool) or int(T) != T or int(T) < 1:
        raise ValueError(f"neuron.T (time steps for training) must be an integer >= 1, got {T!r}")
    if neuron.kind not in ("plif", "relu"):
        raise ValueError(f"neuron.kind must be 'plif' or 'relu', got {neuron.kind!r}")
    return dict(name=str(cfg.snn.name), num_classes=int(cfg.dataset.num_classes), in_channels=int(cfg.dataset.in_channels),
                width=float(cfg.snn.width), T=int(T), deltas=check_deltas(list(neuron.deltas)),
                input_size=int(cfg.dataset.image_size), neuron=str(neuron.kind))


def run_train_snn(cfg: DictConfig) -> dict:
    """Train an MT-SNN (or its ST baseline, or the ANN twin) directly (train_snn.py)."""
    spec = mt_model_spec(cfg)
    name = f"train_snn-{cfg.dataset.name}-{cfg.snn.name}-{cfg.neuron.name}-T{cfg.neuron.T}-s{cfg.seed}"
    return train_stage(cfg, spec, kind="mt_snn", job="train_snn", name=name, script="train_snn.py")
