"""Structured-config schema for the method group: a misspelt or mistyped key in a method
or experiment file is an error at composition time, not a silently ignored value."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, List, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING


@dataclass
class HParams:
    """Paper Table 2 (merged in from conf/method/hparams/<model>.yaml)."""

    alpha: float = MISSING
    k_a: float = MISSING
    k_i: float = MISSING
    C: float = MISSING
    tau_mp: float = MISSING
    tau_rd: float = MISSING
    V_T: float = -1.0  # the released code's value; the paper says "a negative constant"
    tau_rd_twice: bool = False  # paper Eq. 16 with Eq. 18 (the released code applies it once)


@dataclass
class SpikeConfidence:
    enabled: bool = False
    early_steps: Any = 16  # E, or "auto"
    layers: Any = "last"  # last | all | list of layer indices
    reset: str = "fired"  # fired (released code) | emitted (paper Eq. 20)
    p: Any = None  # null: from the conversion artifact; a float or one value per layer
    r_definition: str = "fired"  # r = SIN / fired (default) or SIN / all neurons
    seed: int = 0
    seeds: Optional[List[int]] = None  # several seeds: mean and spread per t


@dataclass
class Method:
    name: str = MISSING
    threshold: str = "msat"  # msat | dtt | det | const
    frac: float = 1.0  # const threshold, as a fraction of lam
    v_init: float = 0.0  # initial membrane in units of lam (paper: 0)
    max_spikes: int = 1  # burst firing: up to this many spikes per step
    hparams: HParams = field(default_factory=HParams)
    sc: SpikeConfidence = field(default_factory=SpikeConfidence)


def register_configs() -> None:
    ConfigStore.instance().store(group="method", name="base_method", node=Method)


register_configs()
