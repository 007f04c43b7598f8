"""What MSAT's fused neuron update costs per neuron update, on one CPU thread, and where it goes.

1. The compiled update (``msat.neurons``) on states captured from a real simulation of the
   thin ResNet-20 (random weights, batch 64, T=32) at two steps, every spiking layer, and on
   random states of the same size: is it compute- or memory-bound?
2. Variants of the same update written out here, with 2^20 random elements: the full update,
   no ``exp`` at all (the same memory traffic), and one ``exp`` kept.
3. The per-call overhead of the compiled call (guards, dispatch), with tiny tensors.

Each figure is the median over rounds (state cloned before each call, not timed).

    OMP_NUM_THREADS=1 python benchmarks/update_cost.py
"""

from __future__ import annotations

import statistics
import sys
import time
from functools import partial
from pathlib import Path

import torch

sys.path[:0] = [str(Path(__file__).resolve().parent), str(Path(__file__).resolve().parents[1] / "src")]
import simulate as bench  # noqa: E402

from msat import neurons  # noqa: E402
from msat.calibration import calibrate  # noqa: E402
from msat.conversion import prepare_ann  # noqa: E402
from msat.thresholds import MSAT, TABLE2  # noqa: E402


def per_update(call, make_state, n: int, rounds: int = 5) -> float:
    """Median ns per element of ``call(*state)`` over ``rounds`` fresh states."""
    ts = []
    for _ in range(rounds):
        state = make_state()
        t0 = time.thread_time()
        call(*state)
        ts.append(time.thread_time() - t0)
    return statistics.median(ts) * 1e9 / n


def _fused_call(fused, rule, inp, lam, inv_tm1, inv_lam, v, s):
    return fused(rule, 1, v, s, inp, lam, inv_tm1, None, None, inv_lam)


def _clones(*tensors):
    return tuple(t.clone() for t in tensors)


def captured(steps=(8, 24)) -> None:
    captures = []
    original = neurons._run_compiled

    def record(neuron, inp, lam, inv_tm1):
        if neuron.t in steps:
            captures.append((neuron.t, neuron.rule, neuron.v.clone(), neuron.s.clone(), inp.clone(), lam, inv_tm1,
                             neuron._inv_lam))
        return original(neuron, inp, lam, inv_tm1)

    model = bench.build(0.25, 10, net="resnet20_thin")
    x = torch.randn(64, 3, 32, 32)
    ann = prepare_ann(model)
    neurons._run_compiled = record
    try:
        with torch.no_grad():
            bench.run_ours(ann, calibrate(ann, [x]), "msat", x, 32, 1, compiled=True, hp_row="resnet20")()
    finally:
        neurons._run_compiled = original
    fused = neurons._compiled_step(False)
    print("1. the compiled update, ns per neuron update (captured state | random state of the same size)")
    for t, rule, v, s, inp, lam, inv_tm1, inv_lam in captures:
        real = per_update(partial(_fused_call, fused, rule, inp, lam, inv_tm1, inv_lam), partial(_clones, v, s),
                          v.numel())
        rv, rs, ri = torch.randn_like(v), torch.randn_like(v) * 3, torch.randn_like(v)
        rand = per_update(partial(_fused_call, fused, rule, ri, lam, inv_tm1, inv_lam), partial(_clones, rv, rs),
                          v.numel())
        print(f"   t={t:2d} elements {v.numel():8d}: {real:5.2f} | {rand:5.2f}")


def variant(kind: str):
    hp = TABLE2["resnet20"]
    a, tmp, trd, C = hp["alpha"], hp["tau_mp"], hp["tau_rd"], hp["C"]

    def update(v, s, inp, inv_lam, inv_tm1, lam):
        x = inp * inv_lam
        d = v - s * inv_tm1
        e = (d * a - 1.0) * (-tmp)
        ed = d.exp() if kind in ("full", "exp(d) only") else d
        ex = (x * (-1.0 / C)).exp() if kind in ("full", "exp(-x/C) only") else x * (-1.0 / C)
        e = e - trd * ex
        en = e.exp() if kind in ("full", "exp(e) only") else e
        P = (ed + 1.0).abs().sqrt()
        theta = P / (en.abs() + P)
        v2 = v + x
        y = (v2 >= theta).to(v.dtype) * theta
        v.copy_(v2 - y)
        s.add_(v)
        return y * lam

    return torch.compile(update, dynamic=True)


def variants(n: int = 1 << 20, rounds: int = 7) -> None:
    kinds = ["full", "no exp", "exp(d) only", "exp(-x/C) only", "exp(e) only"]
    fns = {k: variant(k) for k in kinds}
    g = torch.Generator().manual_seed(0)
    v, s, inp = torch.randn(n, generator=g), torch.randn(n, generator=g) * 3, torch.randn(n, generator=g)
    one, inv_tm1 = torch.tensor(1.0), torch.tensor(1 / 3)
    for f in fns.values():
        f(v.clone(), s.clone(), inp, one, inv_tm1, one)
    res: dict[str, list[float]] = {k: [] for k in kinds}
    for _ in range(rounds):  # interleaved
        for k, f in fns.items():
            call = partial(lambda fn, a, b: fn(a, b, inp, one, inv_tm1, one), f)
            res[k].append(per_update(call, partial(_clones, v, s), n, 3))
    print(f"2. variants of the update, {n} random elements, ns per update (median of {rounds} interleaved rounds)")
    for k, r in res.items():
        print(f"   {k:<16}{statistics.median(r):6.2f}")


def overhead(calls: int = 300) -> None:
    rule = MSAT(**TABLE2["resnet20"])
    fused = neurons._compiled_step(False)
    v, s, inp = torch.zeros(2, 2, 2, 2), torch.zeros(2, 2, 2, 2), torch.randn(2, 2, 2, 2)
    one, half = torch.tensor(1.0), torch.tensor(0.5)
    fns = {"compiled": lambda: fused(rule, 1, v, s, inp, one, half, None, None, one),
           "eager": lambda: neurons.if_step(rule, 1, v, s, inp, one, half, inv_lam=one)}
    res: dict[str, list[float]] = {k: [] for k in fns}
    for f in fns.values():
        f()
    for _ in range(5):
        for k, f in fns.items():
            t0 = time.thread_time()
            for _ in range(calls):
                f()
            res[k].append((time.thread_time() - t0) / calls * 1e6)
    print("3. one call on 16 elements (the fixed cost per call), us: "
          + ", ".join(f"{k} {statistics.median(r):.1f}" for k, r in res.items()))


if __name__ == "__main__":
    torch.set_num_threads(1)
    captured()
    variants()
    overhead()
