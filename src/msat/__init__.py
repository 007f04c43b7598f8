"""MSAT: ANN-to-SNN conversion with a multistage adaptive threshold and spike confidence.

Python API::

    snn = msat.convert(ann, calibration_batches, method="msat", hparams=msat.TABLE2["vgg16"])
    snn = msat.convert(ann, calibration_batches, msat.METHODS["msat_sc"].for_model("vgg16"))  # a recipe
    out = msat.simulate(snn, x, T=256)          # [T, B, classes], summed over steps 1..t
    ratios = msat.measure_sin(ann, snn, x, T)   # SIN ratio per layer and step
    errors = msat.layer_errors(ann, snn, x, T)  # per-layer error split (Eq. 5) per step

The package: :mod:`msat.spiking` (the neuron, the threshold rules, LIPool, the network and its
simulators), :mod:`msat.conversion` (recipes and the pipeline that runs them), :mod:`msat.analysis`
(layer errors, energy, statistics), :mod:`msat.models` and :mod:`msat.harness` (the experiments).
"""

from .analysis.errors import layer_errors
from .conversion.corrections import CORRECTIONS, Correction, register_correction
from .conversion.lam import BALANCING, Balancing, calibrate, register_balancing
from .conversion.methods import METHODS
from .conversion.pipeline import Converter, convert
from .conversion.prepare import ConversionError, prepare_ann
from .conversion.readout import estimate_readout_start
from .conversion.recipe import Recipe
from .conversion.sin import measure_sin
from .conversion.table2 import TABLE2
from .harness.checkpoint import CheckpointError, load_model
from .models import create_model
from .models.activations import QCFS
from .spiking.early_exit import EXIT_RULES, ExitPredictor, ExitResult, record_run, replay, simulate_adaptive
from .spiking.network import SpikingNetwork
from .spiking.neuron import IFNeuron
from .spiking.pooling import LIPool
from .spiking.simulation import reset, simulate
from .spiking.thresholds import THRESHOLD_RULES, ThresholdRule, register_rule

__all__ = [
    "convert",
    "Recipe",
    "METHODS",
    "Converter",
    "reset",
    "simulate",
    "simulate_adaptive",
    "ExitResult",
    "ExitPredictor",
    "EXIT_RULES",
    "record_run",
    "replay",
    "measure_sin",
    "layer_errors",
    "estimate_readout_start",
    "create_model",
    "load_model",
    "prepare_ann",
    "calibrate",
    "SpikingNetwork",
    "IFNeuron",
    "LIPool",
    "QCFS",
    "ThresholdRule",
    "register_rule",
    "THRESHOLD_RULES",
    "Balancing",
    "register_balancing",
    "BALANCING",
    "Correction",
    "register_correction",
    "CORRECTIONS",
    "TABLE2",
    "ConversionError",
    "CheckpointError",
]
__version__ = "0.3.0"
