"""torch.fx helpers shared by the converter and the simulator."""

from __future__ import annotations

import torch
import torch.fx as fx
from torch import nn


class ConversionError(ValueError):
    """The model cannot be converted; the message names the offending node."""


class _Tracer(fx.Tracer):
    def __init__(self, leaves: tuple):
        super().__init__()
        self.leaves = leaves

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return isinstance(m, self.leaves) or super().is_leaf_module(m, qualname)


def trace(model: nn.Module, leaves: tuple = ()) -> fx.GraphModule:
    """Symbolically trace ``model`` (modules of the ``leaves`` types stay calls); a trace
    failure becomes a :class:`ConversionError`."""
    try:
        tracer = _Tracer(tuple(leaves))
        graph = tracer.trace(model)
        return fx.GraphModule(tracer.root, graph, type(model).__name__)
    except Exception as exc:  # fx raises TraceError, TypeError, ... depending on the code
        raise ConversionError(
            f"torch.fx could not trace {type(model).__name__}: {exc}. The converter needs a graph "
            f"without data-dependent control flow."
        ) from exc


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


def device_of(module: nn.Module) -> torch.device:
    for p in module.parameters():
        return p.device
    for b in module.buffers():
        return b.device
    return torch.device("cpu")


def dtype_of(module: nn.Module) -> torch.dtype:
    for p in module.parameters():
        if p.is_floating_point():
            return p.dtype
    return torch.get_default_dtype()
