"""RTS (Deng & Gu, ICLR 2021, "Optimal conversion of conventional artificial neural networks to
spiking neural networks"): every spiking layer's input is shifted by ``lam / (2T)``, which centres
the floor of the IF neuron's rate on the ReLU (their Theorem 2; with the max-norm threshold this is
their threshold-balanced conversion)."""

from __future__ import annotations

from ...spiking.simulation import check_T
from ..prepare import check_pair
from . import Correction, register_correction


@register_correction("rts")
class RTS(Correction):
    """The input shift ``lam / (2T)`` in every spiking layer; it needs no data."""

    method = "rts"
    uses_data = False

    def apply(self, ann, snn, data, T, num_batches=None) -> dict:
        T = check_T(T)
        check_pair(ann, snn)
        for n in snn.neurons:
            shift = n.lam / (2.0 * T)
            n.set_bias(shift if n.bias is None else n.bias + shift)
        return {"shift": "lam / (2T)", "T": T}
