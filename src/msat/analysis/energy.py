"""Operation counts and the SNN/ANN energy ratio (paper Eqs. 21-23, spec section 4).

``OP_ANN[l]`` is ``k_h*k_w*c_in*c_out*h_out*w_out`` for a conv (``c_in`` per group) and
``f_in*f_out`` for a linear layer. Layers fed by the analog image (the first layer with
direct coding) cost ``OP_ANN`` MACs at 4.6 pJ in the SNN too; every other layer costs
``n * OP_ANN`` accumulates at 0.9 pJ, ``n`` being the mean number of spikes per neuron
(over the T steps) of the spiking layer that feeds it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import torch
import torch.fx as fx
from torch import nn
from torch.fx.passes.shape_prop import ShapeProp

from ..conversion.prepare import ReLUSite

E_MAC_PJ = 4.6  # 32-bit float MAC, 45 nm (Horowitz 2014)
E_AC_PJ = 0.9  # 32-bit float accumulate


@dataclass
class LayerOps:
    name: str
    ops: float  # OP_ANN
    sources: Optional[list[int]]  # indices of the spiking layers feeding it; None = the analog input


def _sources(node: fx.Node, gm: fx.GraphModule) -> Optional[list[int]]:
    sites: set[int] = set()
    analog = False
    stack, seen = [node.args[0]], set()
    while stack:
        n = stack.pop()
        if not isinstance(n, fx.Node) or n in seen:
            continue
        seen.add(n)
        if n.op == "placeholder":
            analog = True
        elif n.op == "call_module" and isinstance(gm.get_submodule(n.target), ReLUSite):
            sites.add(gm.get_submodule(n.target).index)
        else:
            stack.extend(n.all_input_nodes)
    if not sites:
        return None if analog else []
    return sorted(sites)


@torch.no_grad()
def layer_ops(ann: fx.GraphModule, example: torch.Tensor) -> list[LayerOps]:
    """OP_ANN of every Conv/Linear of a prepared ANN, for one input of ``example``'s shape."""
    ShapeProp(ann).propagate(example[:1])
    out = []
    for node in ann.graph.nodes:
        if node.op != "call_module":
            continue
        mod = ann.get_submodule(node.target)
        shape = node.meta["tensor_meta"].shape
        if isinstance(mod, (nn.Conv1d, nn.Conv2d, nn.Conv3d)):
            k = 1
            for s in mod.kernel_size:
                k *= s
            spatial = 1
            for s in shape[2:]:
                spatial *= s
            ops = k * (mod.in_channels // mod.groups) * mod.out_channels * spatial
        elif isinstance(mod, nn.Linear):
            rows = 1
            for s in shape[1:-1]:
                rows *= s
            ops = mod.in_features * mod.out_features * rows
        else:
            continue
        out.append(LayerOps(node.target, float(ops), _sources(node, ann)))
    return out


def energy_ratio(layers: Sequence[LayerOps], spikes_per_neuron: Sequence[float],
                 neurons_per_layer: Optional[Sequence[float]] = None) -> dict:
    """Eq. 23. ``spikes_per_neuron[i]``: mean spikes per neuron of spiking layer i over T."""
    ann_total, snn_analog, snn_ac, ops_rest = 0.0, 0.0, 0.0, 0.0
    for layer in layers:
        ann_total += layer.ops
        if layer.sources is None:
            snn_analog += layer.ops
            continue
        ops_rest += layer.ops
        if not layer.sources:
            continue
        if neurons_per_layer is None or len(layer.sources) == 1:
            n = sum(spikes_per_neuron[i] for i in layer.sources) / len(layer.sources)
        else:  # several spiking layers feed it (e.g. a residual sum): weight by their sizes
            w = [neurons_per_layer[i] for i in layer.sources]
            n = sum(spikes_per_neuron[i] * wi for i, wi in zip(layer.sources, w)) / max(sum(w), 1.0)
        snn_ac += n * layer.ops
    ratio = (E_MAC_PJ * snn_analog + E_AC_PJ * snn_ac) / (E_MAC_PJ * ann_total) if ann_total else float("nan")
    return {
        "op_ann_first": snn_analog,
        "op_ann_rest": ops_rest,
        "op_snn_rest": snn_ac,
        "energy_ratio": ratio,
    }


def energy_ratio_from_totals(op_first: float, op_ann_rest: float, op_snn_rest: float) -> float:
    """Eq. 23 from the totals the paper's Table 8 reports."""
    return (E_MAC_PJ * op_first + E_AC_PJ * op_snn_rest) / (E_MAC_PJ * (op_first + op_ann_rest))
