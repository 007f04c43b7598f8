"""Running a converted SNN: reset, T time steps, cumulative outputs (spec sections 1.5, 4).

The output layer does not spike: its outputs are summed over time and the prediction at
step t is the argmax of the sum over steps 1..t, or over steps ``readout_start+1..t`` with
delayed readout (Bu, Li, Yu 2025). Accuracy after t steps always counts all t steps.
"""

from __future__ import annotations

import os
from typing import Iterator, Optional

import torch

from .monitors import running_sum
from .network import SpikingNetwork

SIM_DTYPES = {"float32": torch.float32, "float64": torch.float64}
# neuron updates (neurons x samples x steps) from which compiling the fused update pays off:
# it saves ~10 ns per update on CPU (benchmarks/simulate.py) against a compilation of ~3-25 s
COMPILE_MIN_UPDATES = 1e8


def sim_dtype(name: str) -> torch.dtype:
    if str(name) not in SIM_DTYPES:
        raise ValueError(f"sim.dtype must be float32 or float64, got {name!r}")
    return SIM_DTYPES[str(name)]


def resolve_chunk(chunk, device: torch.device) -> int:
    """Steps per layer-major call. ``auto``: 1 on CPU, where a chunk of stacked steps
    outgrows the caches (benchmarks/simulate.py), 32 on GPU, where launches dominate."""
    if chunk == "auto":
        return 32 if device.type == "cuda" else 1
    if isinstance(chunk, bool) or not isinstance(chunk, (int, float)) or int(chunk) != chunk or int(chunk) < 1:
        raise ValueError(f"sim.chunk must be a positive integer or 'auto', got {chunk!r}")
    return int(chunk)


def compile_available(device: torch.device) -> bool:
    """Whether torch.compile can build the fused neuron here (a C++ compiler on CPU, Triton on GPU)."""
    import shutil

    if device.type == "cuda":
        try:
            import triton  # noqa: F401
        except ImportError:
            return False
        return True
    return any(shutil.which(c) for c in ("g++", "c++", "clang++"))


def resolve_compile(flag, device: torch.device, updates: float) -> bool:
    """``sim.compile``: true, false, or ``auto`` = compile when a compiler is there and the job
    (``updates`` = neurons x samples x steps) is large enough to repay the one-off compilation."""
    if flag in (True, False):
        return bool(flag)
    if flag != "auto":
        raise ValueError(f"sim.compile must be true, false or auto, got {flag!r}")
    if os.environ.get("MSAT_COMPILE", "").lower() in ("0", "false", "no"):  # a global opt-out (the test suite)
        return False
    return updates >= COMPILE_MIN_UPDATES and compile_available(device)


def reset(snn: SpikingNetwork, seed: Optional[int] = None) -> None:
    """Reset every membrane, counter and running mean of ``snn`` (call before each batch)."""
    if not isinstance(snn, SpikingNetwork):
        raise TypeError(f"reset expects a SpikingNetwork from msat.convert, got {type(snn).__name__}")
    snn.reset(seed)


def check_T(T: int) -> int:
    if isinstance(T, bool) or not isinstance(T, (int, float)) or int(T) != T or T < 1:
        raise ValueError(f"T (the number of time steps) must be a positive integer, got {T!r}")
    return int(T)


def check_readout_start(readout_start: int, T: int) -> int:
    d = readout_start
    if isinstance(d, bool) or int(d) != d or not 0 <= int(d) < T:
        raise ValueError(f"readout_start must be an integer in 0..T-1 = 0..{T - 1} (steps whose output is not "
                         f"read out), got {readout_start!r}")
    return int(d)


def neuron_count(snn: SpikingNetwork, x: torch.Tensor) -> int:
    """Neurons of the batch ``x`` (all layers), from one step's layer shapes on a single sample."""
    cache = snn.__dict__.setdefault("_neurons_per_sample", {})
    key = tuple(x.shape[1:])
    if key not in cache:
        counts = []
        hooks = [n._hooks for n in snn.neurons]  # the statistics monitors must not see this probe
        for n in snn.neurons:
            n._hooks = type(n._hooks)()
        handles = [n.register_forward_hook(lambda m, a, o: counts.append(o[0].numel())) for n in snn.neurons]
        try:
            with torch.no_grad():
                snn.reset()
                was = snn._use_compiled(False)
                snn(x[:1])
                for m, c in was:
                    m.compiled = c
        finally:
            for h in handles:
                h.remove()
            for n, h in zip(snn.neurons, hooks):
                n._hooks = h
            snn.reset()
        cache[key] = sum(counts)
    return cache[key] * x.shape[0]


def start_run(snn: SpikingNetwork, x: torch.Tensor, T: int, seed: Optional[int] = None,
              keep_running_state: bool = False) -> None:
    """Decide the compiled update (``"auto"``: by the run's size, up to T steps), reset, and run the
    input-only part on ``x``: what every simulation does before its first step."""
    if snn.compile_mode == "auto" and not keep_running_state:  # the fused update, where it pays off
        off = os.environ.get("MSAT_COMPILE", "").lower() in ("0", "false", "no")
        snn._use_compiled(False if off else resolve_compile("auto", x.device, neuron_count(snn, x) * T))
    snn.reset(seed, keep_running_state)
    snn.start(x)


@torch.no_grad()
def iterate_steps(snn: SpikingNetwork, x: torch.Tensor, T: int, chunk: int = 1, seed: Optional[int] = None,
                  keep_running_state: bool = False) -> Iterator[tuple[int, torch.Tensor]]:
    """Reset, then yield the per-step outputs in chunks: ``(t0, out[K, B, ...])`` with t0 0-based."""
    T = check_T(T)
    if isinstance(chunk, bool) or int(chunk) != chunk or chunk < 1:
        raise ValueError(f"chunk must be a positive integer, got {chunk!r}")
    start_run(snn, x, T, seed, keep_running_state)
    t = 0
    while t < T:
        k = min(int(chunk), T - t)
        yield t, snn.advance(k)
        t += k


def readout_chunks(snn: SpikingNetwork, x: torch.Tensor, T: int, chunk: int = 1, seed: Optional[int] = None,
                   keep_running_state: bool = False, readout_start: int = 0):
    """Like :func:`iterate_steps`, but yields ``(t0, cum[K, B, ...])``: the output summed over
    steps ``readout_start+1..t`` for each step t of the chunk (zero before the readout starts)."""
    d = check_readout_start(readout_start, check_T(T))
    running = None
    for t0, out in iterate_steps(snn, x, T, chunk, seed, keep_running_state):
        if t0 + out.shape[0] <= d:  # all steps of the chunk are before the readout
            yield t0, torch.zeros_like(out)
            continue
        if t0 < d:
            out = out.clone()
            out[: d - t0] = 0
        cum, running = running_sum(out, running)
        yield t0, cum


@torch.no_grad()
def simulate(snn: SpikingNetwork, x: torch.Tensor, T: int, chunk: int = 1, seed: Optional[int] = None,
             readout_start: int = 0) -> torch.Tensor:
    """Reset ``snn`` and run T steps on the batch ``x``.

    Returns ``Tensor[T, B, num_classes]``: the output summed over steps 1..t, for every t
    (the prediction at step t is its argmax). ``chunk`` > 1 runs that many steps per call
    (layer-major); ``chunk=1`` is the step-by-step reference. ``readout_start=d`` sums only
    steps d+1..t (delayed readout; the first d rows are zero).
    """
    out = None
    for t0, cum in readout_chunks(snn, x, T, chunk, seed, readout_start=readout_start):
        if out is None:
            out = torch.empty((T, *cum.shape[1:]), dtype=cum.dtype, device=cum.device)
        out[t0 : t0 + cum.shape[0]] = cum
    return out
