"""MSAT: ANN-to-SNN conversion with a multistage adaptive threshold and spike confidence.

Python API::

    snn = msat.convert(ann, calibration_batches, method="msat", hparams=msat.TABLE2["vgg16"])
    out = msat.simulate(snn, x, T=256)          # [T, B, classes], summed over steps 1..t
    ratios = msat.measure_sin(ann, snn, x, T)   # SIN ratio per layer and step
    errors = msat.layer_errors(ann, snn, x, T)  # per-layer error split (Eq. 5) per step
"""

from .analysis.errors import layer_errors
from .conversion.lam import calibrate
from .conversion.methods import TABLE2
from .conversion.pipeline import convert
from .conversion.prepare import ConversionError, prepare_ann
from .conversion.readout import estimate_readout_start
from .conversion.sin import measure_sin
from .harness.checkpoint import CheckpointError, load_model
from .models import create_model
from .models.activations import QCFS
from .spiking.network import SpikingNetwork
from .spiking.neuron import IFNeuron
from .spiking.pooling import LIPool
from .spiking.simulation import reset, simulate
from .spiking.thresholds import ThresholdRule, register_rule

__all__ = [
    "convert",
    "reset",
    "simulate",
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
    "TABLE2",
    "ConversionError",
    "CheckpointError",
]
__version__ = "0.2.0"
