"""Structured-config schemas of the method group and of the ``calibration``, ``sim`` and
``eval`` nodes: a misspelt or mistyped key in a config, an experiment file or on the
command line is an error at composition time, not a silently ignored value."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, OmegaConf

from .evaluation import REPORT_STEPS


@dataclass
class HParamsConf:
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
class SpikeConfidenceConf:
    enabled: bool = False
    early_steps: Any = 16  # E, or "auto"
    layers: Any = "last"  # last | all | list of layer indices
    reset: str = "fired"  # fired (released code) | emitted (paper Eq. 20)
    p: Any = None  # null: from the conversion artifact; a float or one value per layer
    r_definition: str = "fired"  # r = SIN / fired (default) or SIN / all neurons
    seed: int = 0
    seeds: Optional[List[int]] = None  # several seeds: mean and spread per t


@dataclass
class MethodConf:
    name: str = MISSING
    threshold: str = "msat"  # a registered threshold rule: msat | dtt | det | const
    frac: float = 1.0  # const threshold, as a fraction of lam
    v_init: Optional[float] = None  # initial membrane in units of lam; null: 0 (paper), 0.5 for QCFS and LTB
    max_spikes: int = 1  # burst firing: up to this many spikes per step
    balancing: Optional[str] = None  # a lam source, max | ltb | trained; null: calibration.balancing
    correction: Optional[str] = None  # null | a registered correction: light | advanced (SNN Calibration) | rts | ...
    correction_T: Optional[int] = None  # the target number of steps of the correction
    correction_options: Dict[str, Any] = field(default_factory=dict)  # the correction's own settings
    hparams: HParamsConf = field(default_factory=HParamsConf)
    sc: SpikeConfidenceConf = field(default_factory=SpikeConfidenceConf)


@dataclass
class CalibrationConf:
    checkpoint: str = "last.pt"  # file in ${paths.ckpt_dir} (or a path)
    balancing: str = "max"  # where lam comes from: max (the max / percentile of the ReLU outputs), ltb, trained (QCFS)
    percentile: float = 1.0  # lam = this quantile of the ReLU outputs (1.0 = max)
    channelwise: bool = False
    passes: int = 20  # LTB: passes over the calibration batches
    num_batches: Optional[int] = 10
    batch_size: int = 128
    correction_batches: int = 1  # calibration batches the corrections measure their errors on
    artifact: Optional[str] = None  # null: ${paths.ckpt_dir}/conversion/<method>_<settings hash>.pt


@dataclass
class SimConf:
    chunk: Any = "auto"  # time steps per layer-major call; auto = 1 on CPU (cache-bound), 32 on GPU
    dtype: str = "float32"  # float32 | float64
    compile: Any = "auto"  # auto | true | false: the fused (torch.compile'd) neuron update
    channels_last: bool = False  # NHWC tensors for the simulation (for GPUs)


@dataclass
class ExitConf:
    rule: Any = None  # null: a fixed T; confidence | margin | schedule | learned, a list of them, or all
    threshold: Any = None  # a fixed threshold (confidence, margin); null: chosen on held-out training images
    max_drop: float = 1.0  # the operating point: the fewest mean steps within max_drop points of the ANN
    min_steps: int = 1  # the first step an image may exit at
    T_max: Optional[int] = None  # the longest run (null: eval.T)
    holdout: int = 1000  # training images held out from calibration, to fit and choose on
    target: str = "settled"  # the learned rule predicts: settled (already the answer at T_max) | right (and stays right)
    hidden: int = 0  # the learned rule's model: 0 = logistic regression, n = one tanh layer of n units
    rates: bool = True  # the learned rule also reads each layer's firing rate (false: the output alone, no spike counting)


@dataclass
class EvalConf:
    T: int = 256
    checkpoints: List[int] = field(default_factory=lambda: list(REPORT_STEPS))  # the report steps, clipped to T
    tol: float = 0.1  # "Step" = first t within tol points of the ANN
    batch_size: int = 128
    max_samples: Optional[int] = None  # evaluate on a fixed subset of the test set
    subset_seed: int = 0  # which subset
    convert_if_missing: bool = True
    sin: bool = False  # SIN ratio / ANS of the evaluated SNN over the test set (Table 7)
    theta_traces: bool = True  # traces of the threshold theta_t * lam (threshold.png)
    firing_rates: bool = True
    diagnostics: bool = False  # per-layer error split (rel_l2 = qc + sin, paper Eq. 5) per step
    readout_start: Any = 0  # delayed readout: an integer d, or auto (estimated on calibration data)
    quirk_no_reset: bool = False  # released code's quirk: keep step counter and running means across batches
    resume: bool = True  # continue a partial evaluation found under the checkpoint folder
    plots: bool = True
    save_predictions: bool = True  # per-image correctness at the report's checkpoints (for paired tests)
    exit: ExitConf = field(default_factory=ExitConf)  # early exit (harness/exit_eval.py)


def model_variant(activation: Optional[str], levels: Any) -> str:
    """Checkpoint-folder suffix of a non-ReLU net, so that a QCFS net never overwrites the ReLU one."""
    if activation in (None, "relu"):
        return ""
    return f"_{activation}{'' if levels is None else levels}"


def register_configs() -> None:
    cs = ConfigStore.instance()
    cs.store(group="method", name="base_method", node=MethodConf)
    cs.store(name="base_calibration", node=CalibrationConf, package="calibration")
    cs.store(name="base_sim", node=SimConf, package="sim")
    cs.store(name="base_eval", node=EvalConf, package="eval")
    if not OmegaConf.has_resolver("msat_variant"):
        OmegaConf.register_new_resolver("msat_variant", model_variant)


register_configs()
