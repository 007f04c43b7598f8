"""Preparing an ANN for conversion (spec section 1.1-1.2): trace, check, fold, mark sites.

``prepare_ann`` traces the model with torch.fx, rejects operations a rate-coded SNN cannot
represent, folds BatchNorm into the preceding Conv/Linear, and gives every ReLU *call
site* its own :class:`ReLUSite` module, in graph order. Observers see every site's
pre-activation (:class:`Observing`, :class:`PreRecorder`): the sources of ``lam``
(:mod:`msat.conversion.lam`) and the SIN statistics use them; :func:`msat.conversion.build.build_snn`
replaces the sites by spiking neurons.
"""

from __future__ import annotations

import copy
import operator
from typing import Optional

import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval, fuse_linear_bn_eval

from ..models.activations import QCFS
from ..spiking.graph import describe, input_dependent, unique_target


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


# ----------------------------------------------------------------- op tables
RELU_FUNCTIONS = {F.relu, torch.relu, torch.relu_, getattr(F, "relu_", None)} - {None}
RELU_METHODS = {"relu", "relu_"}
SITE_MODULES = (nn.ReLU, QCFS)  # trained activations that become spiking layers
MAXPOOL_FUNCTIONS = {F.max_pool2d: 2, torch.max_pool2d: 2, F.max_pool1d: 1, torch.max_pool1d: 1}
INPLACE_TO_OUTOFPLACE = {
    operator.iadd: operator.add,
    operator.isub: operator.sub,
    operator.imul: operator.mul,
    operator.itruediv: operator.truediv,
}
NONLINEAR_MODULES = (
    nn.GELU, nn.Sigmoid, nn.Tanh, nn.SiLU, nn.Hardswish, nn.Hardsigmoid, nn.LeakyReLU, nn.ReLU6,
    nn.ELU, nn.SELU, nn.CELU, nn.PReLU, nn.Softplus, nn.Mish, nn.Softmax, nn.LogSoftmax,
    nn.Hardtanh, nn.RReLU, nn.Threshold, nn.GLU, nn.Softsign, nn.Tanhshrink, nn.Softmin,
    nn.AdaptiveMaxPool1d, nn.AdaptiveMaxPool2d, nn.AdaptiveMaxPool3d, nn.MaxPool3d,
    nn.LPPool1d, nn.LPPool2d, nn.LayerNorm, nn.GroupNorm, nn.LocalResponseNorm,
    nn.InstanceNorm1d, nn.InstanceNorm2d, nn.InstanceNorm3d, nn.MultiheadAttention,
    nn.LSTM, nn.GRU, nn.RNN,
)
NONLINEAR_FUNCTIONS = {
    F.gelu, torch.sigmoid, F.sigmoid, torch.tanh, F.tanh, F.silu, F.hardswish, F.hardsigmoid,
    F.leaky_relu, F.relu6, F.elu, F.selu, F.celu, F.softplus, F.mish, F.softmax, torch.softmax,
    F.log_softmax, torch.log_softmax, F.layer_norm, F.group_norm, torch.max, torch.amax, torch.min,
    torch.amin, F.adaptive_max_pool2d, F.adaptive_max_pool1d, F.max_pool3d,
    torch.clamp, torch.clip, F.hardtanh, torch.exp, torch.log, torch.abs, torch.sqrt, torch.pow,
    F.prelu, F.glu, F.normalize, torch.erf,
}
NONLINEAR_METHODS = {
    "sigmoid", "tanh", "clamp", "clip", "softmax", "log_softmax", "max", "min", "amax", "amin",
    "relu6", "exp", "log", "abs", "sqrt", "pow", "clamp_", "sigmoid_", "tanh_", "exp_", "norm",
}
PRODUCT_OPS = {operator.mul, torch.mul, operator.truediv, torch.div, torch.matmul, operator.matmul, torch.bmm}


class ReLUSite(nn.Module):
    """One ReLU call site of the folded ANN. Observers see its pre-activation.

    ``activation`` is the trained module for a QCFS net (its output is the site's output,
    and its ``lam`` becomes the spiking layer's scale); None for a plain ReLU."""

    def __init__(self, index: int, name: str, activation: Optional[nn.Module] = None):
        super().__init__()
        self.index = index
        self.name = name
        self.activation = activation
        self.observers: list = []

    @property
    def trained_lam(self) -> Optional[torch.Tensor]:
        """The scale a trained activation carries (QCFS), else None."""
        return None if self.activation is None else self.activation.lam.detach()

    def forward_activation(self, x: torch.Tensor) -> torch.Tensor:
        """The ANN activation of this site (no observers)."""
        return F.relu(x) if self.activation is None else self.activation(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for observer in self.observers:
            observer(self, x)
        return self.forward_activation(x)

    def extra_repr(self) -> str:
        return f"index={self.index}, name={self.name!r}"


def _check_ops(gm: fx.GraphModule) -> None:
    """Reject operations that a rate-coded SNN cannot represent."""
    dep = input_dependent(gm.graph)
    for node in gm.graph.nodes:
        bad = False
        if node.op == "call_module":
            bad = isinstance(gm.get_submodule(node.target), NONLINEAR_MODULES)
        elif node.op == "call_function":
            if node.target in NONLINEAR_FUNCTIONS:
                bad = True
            elif node.target in PRODUCT_OPS:
                # a product of two input-dependent tensors is not linear in the input
                bad = sum(isinstance(a, fx.Node) and a in dep for a in node.args) >= 2
        elif node.op == "call_method":
            bad = node.target in NONLINEAR_METHODS
        if bad:
            raise ConversionError(
                f"cannot convert {describe(node, gm)}: only ReLU activations (and max-pooling) have a "
                f"spiking equivalent; replace it with ReLU and retrain the ANN"
            )


def _fold_batchnorm(gm: fx.GraphModule) -> int:
    """Fold every BatchNorm that directly follows a Conv/Linear into it. Returns the count."""
    folded = 0
    for node in list(gm.graph.nodes):
        if node.op != "call_module":
            continue
        bn = gm.get_submodule(node.target)
        if not isinstance(bn, (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)):
            continue
        src = node.args[0]
        if not (isinstance(src, fx.Node) and src.op == "call_module" and len(src.users) == 1):
            continue
        layer = gm.get_submodule(src.target)
        if isinstance(layer, (nn.Conv1d, nn.Conv2d, nn.Conv3d)) and bn.track_running_stats:
            fused = fuse_conv_bn_eval(layer.eval(), bn.eval())
        elif isinstance(layer, nn.Linear) and bn.track_running_stats and isinstance(bn, nn.BatchNorm1d):
            fused = fuse_linear_bn_eval(layer.eval(), bn.eval())
        else:
            continue
        # a module called at two sites is cloned, so folding one BN does not touch the other
        uses = [n for n in gm.graph.nodes if n.op == "call_module" and n.target == src.target]
        if len(uses) > 1:
            src.target = unique_target(gm, src.target.replace(".", "_") + "_site")
        gm.add_submodule(src.target, fused)
        node.replace_all_uses_with(src)
        gm.graph.erase_node(node)
        folded += 1
    return folded


def _maxpool_module(node: fx.Node) -> nn.Module:
    """The module equivalent of a functional max-pool call, so that it can become an LIPool."""
    args = list(node.args) + [None] * 6
    kw = dict(node.kwargs)
    cls = nn.MaxPool1d if MAXPOOL_FUNCTIONS[node.target] == 1 else nn.MaxPool2d
    return cls(
        kw.get("kernel_size", args[1]),
        kw.get("stride", args[2]),
        kw.get("padding", args[3] if args[3] is not None else 0),
        kw.get("dilation", args[4] if args[4] is not None else 1),
        ceil_mode=kw.get("ceil_mode", args[5] if args[5] is not None else False),
        return_indices=kw.get("return_indices", False),
    )


def prepare_ann(model: nn.Module) -> fx.GraphModule:
    """Trace, check and BN-fold a copy of ``model``, with one :class:`ReLUSite` per ReLU call site.

    The result computes the same function as ``model`` (up to float rounding of the
    folding) and is deterministic: two calls on the same model give the same sites in
    the same (graph) order. ``gm.sites`` lists them.
    """
    model = copy.deepcopy(model).eval()
    gm = trace(model, leaves=(QCFS,))
    _check_ops(gm)
    graph = gm.graph
    for node in graph.nodes:  # in-place arithmetic would mutate cached or shared tensors
        if node.op == "call_function" and node.target in INPLACE_TO_OUTOFPLACE:
            node.target = INPLACE_TO_OUTOFPLACE[node.target]
    _fold_batchnorm(gm)

    sites: list[ReLUSite] = []
    seen_modules: dict[str, int] = {}
    for node in list(graph.nodes):
        activation, is_site, name = None, False, node.name
        if node.op == "call_module" and isinstance(gm.get_submodule(node.target), SITE_MODULES):
            is_site = True
            mod = gm.get_submodule(node.target)
            activation = None if isinstance(mod, nn.ReLU) else mod
            count = seen_modules.get(node.target, 0)
            seen_modules[node.target] = count + 1
            name = node.target if count == 0 else f"{node.target}#{count}"
        elif node.op == "call_function" and node.target in RELU_FUNCTIONS:
            is_site = True
        elif node.op == "call_method" and node.target in RELU_METHODS:
            is_site = True
        if is_site:
            site = ReLUSite(len(sites), name, activation)
            target = unique_target(gm, f"site{len(sites)}")
            gm.add_submodule(target, site)
            with graph.inserting_after(node):
                new = graph.call_module(target, (node.args[0] if node.args else node.kwargs["input"],))
            node.replace_all_uses_with(new)
            graph.erase_node(node)
            sites.append(site)
        elif node.op == "call_function" and node.target in MAXPOOL_FUNCTIONS:
            target = unique_target(gm, f"{node.name}_pool")
            gm.add_submodule(target, _maxpool_module(node))
            with graph.inserting_after(node):
                new = graph.call_module(target, (node.args[0] if node.args else node.kwargs["input"],))
            node.replace_all_uses_with(new)
            graph.erase_node(node)
    if not sites:
        raise ConversionError(f"{type(model).__name__} has no ReLU activation: nothing to convert")
    graph.eliminate_dead_code()
    graph.lint()
    gm.recompile()
    gm.delete_all_unused_submodules()  # folded BNs and replaced ReLUs
    gm.sites = sites  # graph order
    return gm


def relu_sites(ann: fx.GraphModule) -> list[ReLUSite]:
    if not hasattr(ann, "sites"):
        raise TypeError("expected the output of msat.prepare_ann (a traced, folded ANN with ReLU sites)")
    return list(ann.sites)


def is_qcfs(ann: fx.GraphModule) -> bool:
    """True when the prepared ANN's sites are trained QCFS activations."""
    return any(s.activation is not None for s in relu_sites(ann))


# ----------------------------------------------------------------- observing the sites
class Observing:
    """Attaches one observer per site for the duration of a ``with`` block."""

    def __init__(self, sites, observers):
        self.pairs = list(zip(sites, observers))

    def __enter__(self):
        for site, obs in self.pairs:
            site.observers.append(obs)
        return self

    def __exit__(self, *exc):
        for site, obs in self.pairs:
            site.observers.remove(obs)


class PreRecorder:
    """Records every site's pre-activation during one ANN forward."""

    def __init__(self, sites):
        self.sites = list(sites)
        self.pre: list[Optional[torch.Tensor]] = [None] * len(self.sites)
        self._observing = Observing(self.sites, [self] * len(self.sites))

    def __call__(self, site: ReLUSite, pre: torch.Tensor) -> None:
        self.pre[site.index] = pre.detach()

    def __enter__(self):
        self._observing.__enter__()
        return self

    def __exit__(self, *exc):
        self._observing.__exit__(*exc)


@torch.no_grad()
def ann_pre_activations(ann, x: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
    """Run the prepared ANN on ``x``; returns (pre-activation of every site, ANN logits)."""
    with PreRecorder(relu_sites(ann)) as rec:
        logits = ann(x)
    return rec.pre, logits


def check_pair(ann, snn) -> None:
    """The ANN converted into ``snn``: as many ReLU sites as spiking layers."""
    n_sites = len(relu_sites(ann))
    if n_sites != len(snn.neurons):
        raise ValueError(
            f"the ANN has {n_sites} ReLU sites but the SNN has {len(snn.neurons)} spiking layers; pass the "
            f"model that was converted into this SNN"
        )
