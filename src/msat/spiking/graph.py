"""torch.fx helpers shared by the converter and the spiking network's graph split."""

from __future__ import annotations

import torch.fx as fx
from torch import nn


def describe(node: fx.Node, gm: fx.GraphModule) -> str:
    if node.op == "call_module":
        return f"node {node.name!r} (module {node.target!r}: {type(gm.get_submodule(node.target)).__name__})"
    if node.op == "call_function":
        return f"node {node.name!r} (function {getattr(node.target, '__name__', node.target)})"
    return f"node {node.name!r} ({node.op} {node.target!r})"


def input_dependent(graph: fx.Graph) -> set[fx.Node]:
    """Nodes whose value depends on a placeholder (the model input)."""
    dep: set[fx.Node] = set()
    for node in graph.nodes:
        if node.op == "placeholder" or any(a in dep for a in node.all_input_nodes):
            dep.add(node)
    return dep


def unique_target(gm: fx.GraphModule, base: str) -> str:
    """A submodule name of ``gm`` that is not taken yet, starting from ``base``."""
    target, k = base, 0
    while True:
        try:
            gm.get_submodule(target)
        except AttributeError:
            return target
        k += 1
        target = f"{base}__{k}"


def modules_of(gm: fx.GraphModule, kind) -> dict[fx.Node, nn.Module]:
    """The call_module nodes of ``gm`` whose module is an instance of ``kind``, in graph order."""
    return {n: gm.get_submodule(n.target) for n in gm.graph.nodes
            if n.op == "call_module" and isinstance(gm.get_submodule(n.target), kind)}
