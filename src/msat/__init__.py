"""MSAT: ANN-to-SNN conversion with a multistage adaptive threshold and spike confidence.

Python API::

    snn = msat.convert(ann, calibration_batches, method="msat", hparams=msat.TABLE2["vgg16"])
    out = msat.simulate(snn, x, T=256)          # [T, B, classes], summed over steps 1..t
    ratios = msat.measure_sin(ann, snn, x, T)   # SIN ratio per layer and step
    errors = msat.layer_errors(ann, snn, x, T)  # per-layer error split (Eq. 5) per step
"""

from .activations import QCFS
from .api import convert
from .balancing import estimate_readout_start
from .calibration import calibrate
from .checkpoint import CheckpointError, load_model
from .conversion import prepare_ann
from .diagnostics import layer_errors
from .fxutils import ConversionError
from .models import create_model
from .network import SpikingNetwork
from .neurons import TABLE2, IFNeuron, ThresholdRule, register_rule
from .pooling import LIPool
from .simulation import reset, simulate
from .sin import measure_sin

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
