"""Building the spiking network of a prepared ANN: neurons in place of the ReLU sites, LIPools in
place of the max-pools."""

from __future__ import annotations

import copy
from typing import Any, Mapping, Optional, Sequence

import torch
import torch.fx as fx
from torch import nn

from ..spiking.graph import modules_of
from ..spiking.network import SpikingNetwork
from ..spiking.neuron import IFNeuron
from ..spiking.pooling import LIPool
from ..spiking.thresholds import ThresholdRule, make_rule
from ..util import dtype_of
from .prepare import ConversionError, ReLUSite, relu_sites


def build_snn(ann: fx.GraphModule, lam: Sequence[torch.Tensor | float], method: str = "msat",
              hparams: Optional[Mapping[str, Any]] = None, v_init: float | Sequence = 0.0, max_spikes: int = 1,
              rule: Optional[ThresholdRule] = None) -> SpikingNetwork:
    """Replace the sites of a prepared ANN by neurons with the given ``lam`` (kept in the ANN's
    dtype). ``v_init``: one value for all layers, or one per layer (floats or tensors)."""
    sites = relu_sites(ann)
    if len(lam) != len(sites):
        raise ValueError(f"got {len(lam)} lam values for {len(sites)} spiking layers")
    rule = rule if rule is not None else make_rule(method, hparams)
    v_inits = list(v_init) if isinstance(v_init, (list, tuple)) else [v_init] * len(sites)
    if len(v_inits) != len(sites):
        raise ValueError(f"got {len(v_inits)} v_init values for {len(sites)} spiking layers")
    dtype = dtype_of(ann)
    gm = fx.GraphModule(copy.deepcopy(ann), copy.deepcopy(ann.graph))  # its own weights: corrections edit them
    gm.requires_grad_(False)  # an SNN is simulated, not trained
    site_nodes = modules_of(gm, ReLUSite)
    neurons: list[IFNeuron] = [None] * len(sites)  # type: ignore[list-item]
    for node, site in site_nodes.items():
        neuron = IFNeuron(torch.as_tensor(lam[site.index]).to(dtype), v_init=v_inits[site.index],
                          max_spikes=max_spikes, rule=rule)
        neuron.layer_name = site.name
        gm.add_submodule(node.target, neuron)
        neurons[site.index] = neuron

    # nodes downstream of a neuron run every step; the rest depends only on the input
    dynamic: set[fx.Node] = set()
    for node in gm.graph.nodes:
        if node in site_nodes or any(a in dynamic for a in node.all_input_nodes):
            dynamic.add(node)
    for node, pool in modules_of(gm, (nn.MaxPool1d, nn.MaxPool2d)).items():
        if node in dynamic:
            gm.add_submodule(node.target, LIPool.from_maxpool(pool))
    output = next(n for n in gm.graph.nodes if n.op == "output")
    if output not in dynamic:
        raise ConversionError("the output does not depend on any spiking layer")
    gm.recompile()
    return SpikingNetwork(gm, dynamic, neurons)
