"""ANN -> SNN conversion as a pipeline of named stages (spec section 1).

1. ``prepare_ann``: trace with torch.fx, check every op, fold BN into the preceding
   Conv/Linear, and give every ReLU *call site* its own :class:`ReLUSite` module.
2. ``calibrate``: observe each site's output on calibration data and compute ``lam``
   (max, a percentile, per layer or per channel).
3. ``build_snn``: replace each site by an :class:`~msat.neurons.IFNeuron` and each
   dynamic MaxPool2d by :class:`~msat.neurons.LIPool`, then split the graph into the
   part that depends only on the (constant, direct-coded) input and the part that runs
   every time step.
"""

from __future__ import annotations

import copy
import math
import operator
from typing import Any, Iterable, Mapping, Optional, Sequence

import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval, fuse_linear_bn_eval

from .neurons import IFNeuron, LIPool, StepModule, check_threshold_args

# ----------------------------------------------------------------- op tables
RELU_FUNCTIONS = {F.relu, torch.relu, torch.relu_, getattr(F, "relu_", None)} - {None}
RELU_METHODS = {"relu", "relu_"}
MAXPOOL_FUNCTIONS = {F.max_pool2d, torch.max_pool2d}
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
    nn.AdaptiveMaxPool1d, nn.AdaptiveMaxPool2d, nn.AdaptiveMaxPool3d, nn.MaxPool1d, nn.MaxPool3d,
    nn.LPPool1d, nn.LPPool2d, nn.LayerNorm, nn.GroupNorm, nn.LocalResponseNorm,
    nn.InstanceNorm1d, nn.InstanceNorm2d, nn.InstanceNorm3d, nn.MultiheadAttention,
)
NONLINEAR_FUNCTIONS = {
    F.gelu, torch.sigmoid, F.sigmoid, torch.tanh, F.tanh, F.silu, F.hardswish, F.hardsigmoid,
    F.leaky_relu, F.relu6, F.elu, F.selu, F.celu, F.softplus, F.mish, F.softmax, torch.softmax,
    F.log_softmax, torch.log_softmax, F.layer_norm, F.group_norm, torch.max, torch.amax, torch.min,
    torch.amin, F.adaptive_max_pool2d, F.adaptive_max_pool1d, F.max_pool1d, F.max_pool3d,
    torch.clamp, torch.clip, F.hardtanh, torch.exp, torch.log, torch.abs, torch.sqrt, torch.pow,
    F.prelu, F.glu, F.normalize, torch.erf,
}
NONLINEAR_METHODS = {
    "sigmoid", "tanh", "clamp", "clip", "softmax", "log_softmax", "max", "min", "amax", "amin",
    "relu6", "exp", "log", "abs", "sqrt", "pow", "clamp_", "sigmoid_", "tanh_", "exp_", "norm",
}
PRODUCT_OPS = {operator.mul, torch.mul, operator.truediv, torch.div, torch.matmul, operator.matmul, torch.bmm}


class ConversionError(ValueError):
    """The model cannot be converted; the message names the offending node."""


class ReLUSite(nn.Module):
    """One ReLU call site of the folded ANN. Observers see its pre-activation."""

    def __init__(self, index: int, name: str):
        super().__init__()
        self.index = index
        self.name = name
        self.observers: list = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for observer in self.observers:
            observer(self, x)
        return F.relu(x)

    def extra_repr(self) -> str:
        return f"index={self.index}, name={self.name!r}"


class RepeatSteps(StepModule):
    """Repeats a per-batch tensor for the ``steps`` time steps of a call: [B,...] -> [K*B,...]."""

    def reset(self, seed=None, keep_running_state=False) -> None:
        pass

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.steps == 1:
            return x
        return x.unsqueeze(0).expand(self.steps, *x.shape).reshape(self.steps * x.shape[0], *x.shape[1:])


# ----------------------------------------------------------------- helpers
def _describe(node: fx.Node, gm: fx.GraphModule) -> str:
    if node.op == "call_module":
        return f"node {node.name!r} (module {node.target!r}: {type(gm.get_submodule(node.target)).__name__})"
    if node.op == "call_function":
        return f"node {node.name!r} (function {getattr(node.target, '__name__', node.target)})"
    return f"node {node.name!r} ({node.op} {node.target!r})"


def trace(model: nn.Module) -> fx.GraphModule:
    """Symbolically trace ``model``; a trace failure becomes a :class:`ConversionError`."""
    try:
        return fx.symbolic_trace(model)
    except Exception as exc:  # fx raises TraceError, TypeError, ... depending on the code
        raise ConversionError(
            f"torch.fx could not trace {type(model).__name__}: {exc}. The converter needs a graph "
            f"without data-dependent control flow."
        ) from exc


def input_dependent(graph: fx.Graph) -> set[fx.Node]:
    """Nodes whose value depends on a placeholder (the model input)."""
    dep: set[fx.Node] = set()
    for node in graph.nodes:
        if node.op == "placeholder" or any(a in dep for a in node.all_input_nodes):
            dep.add(node)
    return dep


def _unique_module_target(gm: fx.GraphModule, base: str) -> str:
    target, k = base, 0
    while True:
        try:
            gm.get_submodule(target)
        except AttributeError:
            return target
        k += 1
        target = f"{base}__{k}"


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
                f"cannot convert {_describe(node, gm)}: only ReLU activations (and MaxPool2d) have a "
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
            src.target = _unique_module_target(gm, src.target.replace(".", "_") + "_site")
        gm.add_submodule(src.target, fused)
        node.replace_all_uses_with(src)
        gm.graph.erase_node(node)
        folded += 1
    return folded


def prepare_ann(model: nn.Module) -> fx.GraphModule:
    """Trace, check and BN-fold a copy of ``model``, with one :class:`ReLUSite` per ReLU call site.

    The result computes the same function as ``model`` (up to float rounding of the
    folding) and is deterministic: two calls on the same model give the same sites in
    the same (graph) order.
    """
    model = copy.deepcopy(model).eval()
    gm = trace(model)
    _check_ops(gm)
    graph = gm.graph
    for node in graph.nodes:  # in-place arithmetic would mutate cached or shared tensors
        if node.op == "call_function" and node.target in INPLACE_TO_OUTOFPLACE:
            node.target = INPLACE_TO_OUTOFPLACE[node.target]
    _fold_batchnorm(gm)

    sites: list[ReLUSite] = []
    seen_modules: dict[str, int] = {}
    for node in list(graph.nodes):
        is_site = False
        name = node.name
        if node.op == "call_module" and isinstance(gm.get_submodule(node.target), nn.ReLU):
            is_site = True
            count = seen_modules.get(node.target, 0)
            seen_modules[node.target] = count + 1
            name = node.target if count == 0 else f"{node.target}#{count}"
        elif node.op == "call_function" and node.target in RELU_FUNCTIONS:
            is_site = True
        elif node.op == "call_method" and node.target in RELU_METHODS:
            is_site = True
        if is_site:
            site = ReLUSite(len(sites), name)
            target = _unique_module_target(gm, f"site{len(sites)}")
            gm.add_submodule(target, site)
            with graph.inserting_after(node):
                new = graph.call_module(target, (node.args[0],))
            node.replace_all_uses_with(new)
            graph.erase_node(node)
            sites.append(site)
        elif node.op == "call_function" and node.target in MAXPOOL_FUNCTIONS:
            # functional max-pool becomes a module so that it can be swapped for LIPool
            args = list(node.args) + [None] * 6
            kw = dict(node.kwargs)
            pool = nn.MaxPool2d(
                kw.get("kernel_size", args[1]),
                kw.get("stride", args[2]),
                kw.get("padding", args[3] if args[3] is not None else 0),
                kw.get("dilation", args[4] if args[4] is not None else 1),
                ceil_mode=kw.get("ceil_mode", args[5] if args[5] is not None else False),
                return_indices=kw.get("return_indices", False),
            )
            target = _unique_module_target(gm, f"{node.name}_pool")
            gm.add_submodule(target, pool)
            with graph.inserting_after(node):
                new = graph.call_module(target, (node.args[0] if node.args else kw["input"],))
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
    return list(ann.sites)


# ----------------------------------------------------------------- calibration
def _batches(data: Iterable, num_batches: Optional[int]):
    for i, item in enumerate(data):
        if num_batches is not None and i >= num_batches:
            return
        if isinstance(item, (tuple, list)):
            item = item[0]
        if not isinstance(item, torch.Tensor):
            raise TypeError(f"calibration data must yield tensors or (input, target) pairs, got {type(item)}")
        yield item


class LamObserver:
    """Max or exact quantile of a site's ReLU output, per layer or per channel.

    The quantile follows ``torch.quantile`` (linear interpolation) over every value seen.
    With the total count N known in advance (``total_samples``), only the top
    ``N - floor(p (N - 1))`` values are kept, so memory is ~(1-p) N.
    """

    def __init__(self, percentile: float = 1.0, channelwise: bool = False, total_samples: Optional[int] = None):
        self.percentile = float(percentile)
        self.channelwise = channelwise
        self.total_samples = total_samples
        self.count = 0
        self.k: Optional[int] = None
        self.top: Optional[torch.Tensor] = None  # [R, k]
        self.ndim: Optional[int] = None

    def __call__(self, site: ReLUSite, pre: torch.Tensor) -> None:
        a = F.relu(pre.detach()).float()
        self.ndim = a.dim()
        if self.channelwise:
            if a.dim() < 2:
                raise ConversionError(f"per-channel calibration needs a channel dimension at site {site.name!r}")
            vals = a.transpose(0, 1).reshape(a.shape[1], -1)
        else:
            vals = a.reshape(1, -1)
        self.count += vals.shape[1]
        if self.percentile == 1.0:
            m = vals.amax(dim=1, keepdim=True)
            self.top = m if self.top is None else torch.maximum(self.top, m)
            return
        if self.k is None:
            if self.total_samples is None:
                raise ValueError("a percentile needs total_samples (the number of calibration samples)")
            n = vals.shape[1] // a.shape[0] * self.total_samples
            self.k = n - math.floor(self.percentile * (n - 1))
        merged = vals if self.top is None else torch.cat([self.top, vals], dim=1)
        self.top = merged.topk(min(self.k, merged.shape[1]), dim=1, sorted=False).values

    def lam(self) -> torch.Tensor:
        if self.top is None:
            raise ConversionError("a ReLU site was never reached during calibration")
        if self.percentile == 1.0:
            q = self.top[:, 0]
        else:
            n = self.count
            pos = self.percentile * (n - 1)
            lo, frac = math.floor(pos), pos - math.floor(pos)
            hi = min(lo + 1, n - 1)
            desc = self.top.sort(dim=1, descending=True).values
            a_lo, a_hi = desc[:, n - 1 - lo], desc[:, n - 1 - hi]
            q = a_lo + frac * (a_hi - a_lo)
        if not self.channelwise:
            return q.reshape(())
        return q.reshape(-1, *([1] * (self.ndim - 2)))


@torch.no_grad()
def calibrate(
    ann: fx.GraphModule,
    calibration_data: Iterable,
    percentile: float = 1.0,
    channelwise: bool = False,
    num_batches: Optional[int] = None,
    progress: bool = False,
) -> list[torch.Tensor]:
    """Compute ``lam`` for every site of a :func:`prepare_ann` graph (Algorithm 1, lines 1-7)."""
    if not 0.0 < percentile <= 1.0:
        raise ValueError(f"percentile must lie in (0, 1], got {percentile} (0.999 means the 99.9th percentile)")
    if num_batches is not None and num_batches < 1:
        raise ValueError(f"num_batches must be >= 1 or None, got {num_batches}")
    sites = relu_sites(ann)
    total = None
    if percentile < 1.0:  # an exact quantile needs the sample count first (no model run)
        if iter(calibration_data) is calibration_data:
            calibration_data = list(_batches(calibration_data, num_batches))
        total = sum(x.shape[0] for x in _batches(calibration_data, num_batches))
    observers = [LamObserver(percentile, channelwise, total) for _ in sites]
    for site, obs in zip(sites, observers):
        site.observers.append(obs)
    device = _device_of(ann)
    seen = 0
    try:
        batches = _batches(calibration_data, num_batches)
        if progress:
            from tqdm.auto import tqdm

            batches = tqdm(batches, total=num_batches, desc="calibrate", leave=False, disable=None)
        for x in batches:
            ann(x.to(device))
            seen += 1
    finally:
        for site, obs in zip(sites, observers):
            site.observers.remove(obs)
    if seen == 0:
        raise ValueError("calibration data is empty")
    return [obs.lam().cpu() for obs in observers]


def _device_of(module: nn.Module) -> torch.device:
    for p in module.parameters():
        return p.device
    for b in module.buffers():
        return b.device
    return torch.device("cpu")


# ----------------------------------------------------------------- SNN
def build_snn(
    ann: fx.GraphModule,
    lam: Sequence[torch.Tensor | float],
    method: str = "msat",
    hparams: Optional[Mapping[str, Any]] = None,
    v_init: float = 0.0,
    max_spikes: int = 1,
):
    """Replace the sites of a prepared ANN by neurons with the given ``lam``."""
    from .simulation import SpikingNetwork

    sites = relu_sites(ann)
    if len(lam) != len(sites):
        raise ValueError(f"got {len(lam)} lam values for {len(sites)} spiking layers")
    hp = check_threshold_args(method, hparams)
    gm = fx.GraphModule(ann, copy.deepcopy(ann.graph))  # shares the folded weights
    graph = gm.graph
    site_targets = {}
    for node in graph.nodes:
        if node.op == "call_module" and isinstance(gm.get_submodule(node.target), ReLUSite):
            site_targets[node] = gm.get_submodule(node.target)

    neurons: list[IFNeuron] = [None] * len(sites)  # type: ignore[list-item]
    for node, site in site_targets.items():
        neuron = IFNeuron(torch.as_tensor(lam[site.index], dtype=torch.float32), method, hp, v_init, max_spikes)
        neuron.layer_name = site.name
        gm.add_submodule(node.target, neuron)
        neurons[site.index] = neuron

    # nodes downstream of a neuron run every step; the rest depends only on the input
    dynamic: set[fx.Node] = set()
    for node in graph.nodes:
        if node in site_targets or any(a in dynamic for a in node.all_input_nodes):
            dynamic.add(node)
    for node in graph.nodes:
        if node.op == "call_module" and node in dynamic:
            mod = gm.get_submodule(node.target)
            if isinstance(mod, nn.MaxPool2d):
                gm.add_submodule(node.target, LIPool.from_maxpool(mod))
    output = next(n for n in graph.nodes if n.op == "output")
    if output not in dynamic:
        raise ConversionError("the output does not depend on any spiking layer")
    gm.recompile()
    return SpikingNetwork(gm, dynamic, neurons, method=method, hparams=hp)


# ----------------------------------------------------------------- public API
def convert(
    model: nn.Module,
    calibration_data: Iterable,
    *,
    method: str = "msat",
    hparams: Optional[Mapping[str, Any]] = None,
    percentile: float = 1.0,
    channelwise: bool = False,
    num_batches: Optional[int] = None,
    sc: Optional[Mapping[str, Any]] = None,
    max_spikes: int = 1,
    v_init: float = 0.0,
    lam: Optional[Sequence[torch.Tensor | float]] = None,
):
    """Convert an eval-mode ReLU ANN into an SNN that runs one time step per call.

    Args:
        model: the trained ANN (not modified).
        calibration_data: an iterable of input tensors or ``(input, target)`` pairs
            (training images with test-time transforms).
        method: threshold rule, ``"msat"``, ``"dtt"``, ``"det"`` or ``"const"``.
        hparams: the Table 2 keys ``alpha, k_a, k_i, C, tau_mp, tau_rd`` (optional ``V_T``,
            default -1, and ``tau_rd_twice``); for ``const``, ``frac`` (default 1).
        percentile: ``lam`` is this quantile of each layer's ReLU output (1.0 = max).
        channelwise: one ``lam`` per channel instead of per layer.
        num_batches: calibrate on at most this many batches (None: all).
        sc: spike confidence, a dict with ``p`` (float, list or None to measure it on one
            calibration batch), ``early_steps`` (E, default 16, or ``"auto"``), ``layers``
            (``"last"``/``"all"``), ``reset`` (``"fired"``/``"emitted"``), ``seed``,
            ``r_definition`` (``"fired"``/``"all"``) and ``T`` (steps measured for ``"auto"``).
        max_spikes: spikes a neuron may emit per step (burst firing; 1 = plain IF).
        v_init: initial membrane in units of ``lam`` (paper: 0).
        lam: skip calibration and use these layer scales (one per ReLU site).
    """
    check_threshold_args(method, hparams)
    if not 0.0 < percentile <= 1.0:
        raise ValueError(f"percentile must lie in (0, 1], got {percentile}")
    ann = prepare_ann(model)
    if sc is not None:
        from .sin import one_shot_safe

        calibration_data = one_shot_safe(calibration_data, num_batches)
    if lam is None:
        lam = calibrate(ann, calibration_data, percentile, channelwise, num_batches)
    snn = build_snn(ann, lam, method, hparams, v_init=v_init, max_spikes=max_spikes)
    snn.to(_device_of(ann))
    if sc is not None:
        from .sin import apply_spike_confidence

        apply_spike_confidence(snn, ann, calibration_data, sc)
    snn.reset()
    return snn
