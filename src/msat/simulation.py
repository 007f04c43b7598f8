"""Running a converted SNN: reset, T time steps, cumulative outputs (spec sections 1.5-1.6, 4).

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

from typing import Any, Mapping, Optional, Sequence

import torch
import torch.fx as fx
from torch import nn

from .neurons import IFNeuron, StepModule


def _split(gm: fx.GraphModule, dynamic: set[fx.Node], neurons: set[fx.Node]):
    """Cut ``gm`` into (static graph module, dynamic graph module)."""
    from .conversion import RepeatSteps, input_dependent

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

    def __init__(
        self,
        gm: fx.GraphModule,
        dynamic: set[fx.Node],
        neurons: Sequence[IFNeuron],
        method: str,
        hparams: Mapping[str, Any],
    ):
        super().__init__()
        neuron_nodes = {n for n in gm.graph.nodes if n.op == "call_module" and isinstance(gm.get_submodule(n.target), IFNeuron)}
        self.static, self.dynamic, self.num_static_outputs = _split(gm, dynamic, neuron_nodes)
        self.method = method
        self.hparams = dict(hparams)
        object.__setattr__(self, "neurons", list(neurons))  # graph order; owned by self.dynamic
        object.__setattr__(
            self, "_step_modules", [m for m in self.dynamic.modules() if isinstance(m, StepModule)]
        )
        self.sc_config: Optional[dict] = None
        self._static_out: Optional[tuple] = None
        self._batch_size: Optional[int] = None

    # ----------------------------------------------------------- properties
    @property
    def layer_names(self) -> list[str]:
        return [n.layer_name for n in self.neurons]

    @property
    def lam(self) -> list[torch.Tensor]:
        return [n.lam for n in self.neurons]

    # ------------------------------------------------------------- running
    def reset(self, seed: Optional[int] = None, keep_running_state: bool = False) -> None:
        """Reset all state before a new batch. ``seed`` reseeds spike-confidence draws
        (per layer: ``seed + layer index``); None uses the configured seed."""
        for m in self._step_modules:
            m.reset(None, keep_running_state)
        for i, n in enumerate(self.neurons):
            base = n.sc_seed if seed is None else seed
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

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """One time step on input ``x`` (the same image is fed at every step)."""
        self.start(x)
        return self.advance(1)[0]

    def configure_sc(
        self,
        p: float | Sequence[float] | Mapping[int, float],
        early_steps: int = 16,
        layers: str | Sequence[int] = "last",
        reset: str = "fired",
        seed: int = 0,
    ) -> list[int]:
        """Apply spike confidence: in steps 1..early_steps each spike of an SC layer is kept
        with probability p[l]. Returns the indices of the SC layers."""
        L = len(self.neurons)
        if layers == "last":
            idx = [L - 1]
        elif layers == "all":
            idx = list(range(L))
        elif isinstance(layers, str):
            raise ValueError(f"sc layers must be 'last', 'all' or a list of layer indices, got {layers!r}")
        else:
            idx = [int(i) % L for i in layers]
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

    def set_compile(self, enabled: bool = True) -> None:
        """Run the neuron update as a torch.compile'd kernel (results agree with eager up to float rounding)."""
        for n in self.neurons:
            n.compiled = bool(enabled)

    def clear_sc(self) -> None:
        for n in self.neurons:
            n.configure_sc(None, 0, "fired", 0)
        self.sc_config = None


def reset(snn: SpikingNetwork, seed: Optional[int] = None) -> None:
    """Reset every membrane, counter and running mean of ``snn`` (call before each batch)."""
    if not isinstance(snn, SpikingNetwork):
        raise TypeError(f"reset expects a SpikingNetwork from msat.convert, got {type(snn).__name__}")
    snn.reset(seed)


def check_T(T: int) -> int:
    if isinstance(T, bool) or int(T) != T or T < 1:
        raise ValueError(f"T (the number of time steps) must be a positive integer, got {T!r}")
    return int(T)


@torch.no_grad()
def iterate_steps(snn: SpikingNetwork, x: torch.Tensor, T: int, chunk: int = 1, seed: Optional[int] = None,
                  keep_running_state: bool = False):
    """Reset, then yield the per-step outputs in chunks: ``(t0, out[K, B, ...])`` with t0 0-based."""
    T = check_T(T)
    if chunk < 1:
        raise ValueError(f"chunk must be >= 1, got {chunk}")
    snn.reset(seed, keep_running_state)
    snn.start(x)
    t = 0
    while t < T:
        k = min(chunk, T - t)
        yield t, snn.advance(k)
        t += k


@torch.no_grad()
def simulate(snn: SpikingNetwork, x: torch.Tensor, T: int, chunk: int = 1, seed: Optional[int] = None) -> torch.Tensor:
    """Reset ``snn`` and run T steps on the batch ``x``.

    Returns ``Tensor[T, B, num_classes]``: the output summed over steps 1..t, for every t
    (the prediction at step t is its argmax). ``chunk`` > 1 runs that many steps per call
    (layer-major); ``chunk=1`` is the step-by-step reference.
    """
    out = None
    running = None
    for t0, y in iterate_steps(snn, x, T, chunk, seed):
        if out is None:
            out = torch.empty((T, *y.shape[1:]), dtype=y.dtype, device=y.device)
            running = torch.zeros_like(y[0])
        for k in range(y.shape[0]):  # sequential sums, identical for every chunk size
            running = running + y[k]
            out[t0 + k] = running
    return out
