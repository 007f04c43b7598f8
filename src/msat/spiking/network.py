"""The converted SNN (spec sections 1.4-1.6): neurons in place of the ReLU sites, LIPools in
place of the max-pools, and the graph split by what changes over time.

A :class:`SpikingNetwork` holds two fx graphs cut from the converted model:

- ``static``: everything that depends only on the input. With direct coding the input is
  the same analog image at every step, so this part (the first conv and its folded BN)
  runs once per batch.
- ``dynamic``: everything downstream of a spiking layer, run for ``steps`` time steps
  per call with the steps stacked along the batch dimension (layer-major execution:
  each Conv/Linear runs once on a chunk of steps, then each neuron scans the chunk).

Calling the module runs exactly one time step, which is the documented API
(``msat.convert`` returns one of these).
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Iterator, Mapping, Optional, Sequence

import torch
import torch.fx as fx
from torch import nn

from .graph import input_dependent, modules_of
from .monitors import FiringMonitor, MonitorSet, SINMonitor, ThresholdMonitor
from .neuron import IFNeuron, StepModule
from .pooling import LIPool


class RepeatSteps(StepModule):
    """Repeats a per-batch tensor for the ``steps`` time steps of a call: [B,...] -> [K*B,...]."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.steps == 1:
            return x
        return x.unsqueeze(0).expand(self.steps, *x.shape).reshape(self.steps * x.shape[0], *x.shape[1:])


def _split(gm: fx.GraphModule, dynamic: set[fx.Node], neurons: set[fx.Node]):
    """Cut ``gm`` into (static graph module, dynamic graph module, number of static outputs)."""
    graph = gm.graph
    from_input = input_dependent(graph)
    frontier = [n for n in graph.nodes if n not in dynamic and n in from_input and any(u in dynamic for u in n.users)]

    # static part: every node that does not depend on a spiking layer
    sg = fx.Graph()
    env: dict[fx.Node, fx.Node] = {}
    for node in graph.nodes:
        if node in dynamic or node.op == "output":
            continue
        env[node] = sg.node_copy(node, lambda n: env[n])
    sg.output(tuple(env[n] for n in frontier))
    static_gm = fx.GraphModule(gm, sg)
    static_gm.graph.eliminate_dead_code()
    static_gm.recompile()

    # dynamic part: placeholders for the frontier; constants are copied in
    dg = fx.Graph()
    denv: dict[fx.Node, fx.Node] = {}
    for i, node in enumerate(frontier):
        denv[node] = dg.placeholder(f"static_{i}")
    repeat_target = "repeat_steps"
    gm.add_submodule(repeat_target, RepeatSteps())
    repeated: dict[fx.Node, fx.Node] = {}

    def arg_for(consumer: fx.Node):
        def transform(n: fx.Node) -> fx.Node:
            if n in frontier and consumer not in neurons:
                if n not in repeated:
                    repeated[n] = dg.call_module(repeat_target, (denv[n],))
                return repeated[n]
            if n not in denv:  # an input-free constant (get_attr and ops on it)
                denv[n] = dg.node_copy(n, lambda m: transform(m))
            return denv[n]

        return transform

    static_consumers: list[fx.Node] = []
    for node in graph.nodes:
        if node in dynamic or node.op == "output":
            if node in neurons and any(a in frontier for a in node.all_input_nodes):
                static_consumers.append(node)
            denv[node] = dg.node_copy(node, arg_for(node))
    dynamic_gm = fx.GraphModule(gm, dg)
    dynamic_gm.graph.eliminate_dead_code()
    dynamic_gm.recompile()
    for node in static_consumers:
        dynamic_gm.get_submodule(node.target).static_input = True
    return static_gm, dynamic_gm, len(frontier)


class SpikingNetwork(nn.Module):
    """A converted SNN. ``snn(x)`` runs one time step and returns that step's output."""

    def __init__(self, gm: fx.GraphModule, dynamic: set[fx.Node], neurons: Sequence[IFNeuron]):
        super().__init__()
        neuron_nodes = set(modules_of(gm, IFNeuron))
        self.static, self.dynamic, self.num_static_outputs = _split(gm, dynamic, neuron_nodes)
        object.__setattr__(self, "neurons", list(neurons))  # graph order; owned by self.dynamic
        object.__setattr__(self, "_step_modules", [m for m in self.dynamic.modules() if isinstance(m, StepModule)])
        self.sc_config: Optional[dict] = None
        self.conversion: dict = {}  # how it was made (balancing, corrections), for the record
        self.compile_mode: bool | str = "auto"  # the fused neuron update: True, False, or decided per run
        self._static_out: Optional[tuple] = None
        self._batch_size: Optional[int] = None

    # ----------------------------------------------------------- properties
    @property
    def layer_names(self) -> list[str]:
        return [n.layer_name for n in self.neurons]

    @property
    def lam(self) -> list[torch.Tensor]:
        return [n.lam for n in self.neurons]

    @property
    def method(self) -> str:
        return self.neurons[0].method

    @property
    def hparams(self) -> dict:
        return self.neurons[0].hp

    # ------------------------------------------------------------- running
    def reset(self, seed: Optional[int] = None, keep_running_state: bool = False) -> None:
        """Reset all state before a new batch. ``seed`` reseeds spike-confidence draws
        (per layer: ``seed * 1000003 + layer index``); None uses the configured seed."""
        for m in self._step_modules:
            if not isinstance(m, IFNeuron):
                m.reset(None, keep_running_state)
        for i, n in enumerate(self.neurons):
            base = (n.sc.seed if n.sc is not None else 0) if seed is None else seed
            n.reset(base * 1000003 + i, keep_running_state)
        self._static_out = None

    def start(self, x: torch.Tensor) -> None:
        """Run the input-only part of the graph once for this batch (direct coding)."""
        out = self.static(x)
        self._static_out = tuple(out) if isinstance(out, (tuple, list)) else (out,)
        self._batch_size = x.shape[0]

    def advance(self, steps: int = 1) -> torch.Tensor:
        """Run ``steps`` time steps on the batch given to :meth:`start`; returns [steps, B, ...]."""
        if self._static_out is None:
            raise RuntimeError("call start(x) before advance()")
        if steps > 1 and any(not isinstance(v, torch.Tensor) for v in self._static_out):
            raise RuntimeError(
                "this model passes non-tensor values computed from the input (e.g. x.size(0)) into "
                "its spiking part, which breaks multi-step chunks; use chunk=1"
            )
        for m in self._step_modules:
            m.steps = steps
        y = self.dynamic(*self._static_out)
        return y.view(steps, self._batch_size, *y.shape[1:])

    def keep_rows(self, rows: torch.Tensor) -> None:
        """Only the samples ``rows`` (indices into the current batch) run on: every neuron, pool,
        spike-confidence gate and monitor state, and the input-only part's outputs, are compacted
        (early exit). Each remaining sample runs on exactly as it would have."""
        if self._static_out is None:
            raise RuntimeError("call start(x) before keep_rows()")
        if any(not isinstance(v, torch.Tensor) for v in self._static_out):
            raise RuntimeError("this model passes non-tensor values computed from the input (e.g. x.size(0)) into "
                               "its spiking part; its batch cannot shrink")
        rows = rows.to(self._static_out[0].device)
        self._static_out = tuple(v.index_select(0, rows) for v in self._static_out)
        self._batch_size = int(rows.numel())
        for m in self._step_modules:
            m.keep_rows(rows)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """One time step on input ``x`` (the same image is fed at every step)."""
        self.start(x)
        return self.advance(1)[0]

    # ----------------------------------------------------------- statistics
    @contextmanager
    def monitor(self, T: int, firing: bool = False, threshold: bool = False, sin: bool = False, device=None,
                **groups: Sequence[Any]) -> Iterator[MonitorSet]:
        """Attach monitors to every spiking layer for the ``with`` block; yields a
        :class:`~msat.spiking.monitors.MonitorSet` (``.firing``, ``.threshold``, ``.sin``, and any extra
        ``name=[one monitor per layer]`` group, None for a layer left out). The hooks are
        removed on exit."""
        L = len(self.neurons)
        built: dict[str, Sequence[Any]] = {}
        if firing:
            built["firing"] = [FiringMonitor(T, device) for _ in range(L)]
        if threshold:
            built["threshold"] = [ThresholdMonitor(T, device, seed=i) for i in range(L)]
        if sin:
            built["sin"] = [SINMonitor(T, device) for _ in range(L)]
        for name, ms in groups.items():
            if len(ms) != L:
                raise ValueError(f"monitor group {name!r} has {len(ms)} monitors for {L} spiking layers")
            built[name] = ms
        mons = MonitorSet(built)
        for ms in mons.groups.values():
            mons.handles += [n.register_step_hook(m) for n, m in zip(self.neurons, ms) if m is not None]
        try:
            yield mons
        finally:
            mons.remove()

    # ------------------------------------------------------- configuration
    def configure_sc(self, p: float | Sequence[float] | Mapping[int, float], early_steps: int = 16,
                     layers: str | Sequence[int] = "last", reset: str = "fired", seed: int = 0) -> list[int]:
        """Apply spike confidence: in steps 1..early_steps each spike of an SC layer is kept
        with probability p[l]. Returns the indices of the SC layers."""
        L = len(self.neurons)
        idx = sc_layer_indices(layers, L)
        if isinstance(p, Mapping):
            probs = {i: float(p[i]) for i in idx}
        elif isinstance(p, (int, float)):
            probs = {i: float(p) for i in idx}
        else:
            p = [float(v) for v in p]
            if len(p) == L:
                probs = {i: p[i] for i in idx}
            elif len(p) == len(idx):
                probs = dict(zip(idx, p))
            else:
                raise ValueError(f"got {len(p)} spike confidences for {len(idx)} SC layers ({L} spiking layers)")
        for i, n in enumerate(self.neurons):
            n.configure_sc(probs.get(i), early_steps if i in probs else 0, reset, seed)
        self.sc_config = dict(p=[probs[i] for i in idx], early_steps=early_steps, layers=idx, reset=reset, seed=seed)
        return idx

    def clear_sc(self) -> None:
        for n in self.neurons:
            n.configure_sc(None, 0, "fired", 0)
        self.sc_config = None

    def set_compile(self, enabled: bool | str = True) -> None:
        """Run the neuron update as one torch.compile'd kernel (the same maths; the math
        library's exp rounds differently in the last bit, see the README). ``"auto"``: decided
        for every simulation by its size (``msat.spiking.simulation.resolve_compile``)."""
        if enabled not in (True, False, "auto"):
            raise ValueError(f"compile must be True, False or 'auto', got {enabled!r}")
        self.compile_mode = enabled
        if enabled != "auto":
            self._use_compiled(bool(enabled))

    def _use_compiled(self, on: bool) -> list[tuple[nn.Module, bool]]:
        """Set the fused step on or off in every neuron and LIPool; returns their flags before."""
        before = [(m, m.compiled) for m in self.modules() if isinstance(m, (IFNeuron, LIPool))]
        for m, _ in before:
            m.compiled = on
        return before


def sc_layer_indices(layers: str | Sequence[int], L: int) -> list[int]:
    if layers == "last":
        return [L - 1]
    if layers == "all":
        return list(range(L))
    if isinstance(layers, str):
        raise ValueError(f"sc layers must be 'last', 'all' or a list of layer indices, got {layers!r}")
    return [int(i) % L for i in layers]


