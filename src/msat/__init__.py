"""MSAT: ANN-to-SNN conversion with a multistage adaptive threshold and spike confidence.

Python API::

    snn = msat.convert(ann, calibration_batches, method="msat", hparams=msat.TABLE2["vgg16"])
    out = msat.simulate(snn, x, T=256)          # [T, B, classes], summed over steps 1..t
    ratios = msat.measure_sin(ann, snn, x, T)   # SIN ratio per layer and step
"""

from .conversion import ConversionError, calibrate, convert, prepare_ann
from .models import create_model
from .neurons import TABLE2, IFNeuron, LIPool
from .simulation import SpikingNetwork, reset, simulate
from .sin import measure_sin

__all__ = [
    "convert",
    "reset",
    "simulate",
    "measure_sin",
    "create_model",
    "prepare_ann",
    "calibrate",
    "SpikingNetwork",
    "IFNeuron",
    "LIPool",
    "TABLE2",
    "ConversionError",
]
__version__ = "0.1.0"
