"""What MSAT's fused neuron update costs per neuron update, on one CPU thread, and where it goes.

1. The compiled update (``msat.spiking.neuron``) on states captured from a real simulation of the
   thin ResNet-20 (random weights, batch 64, T=32) at two steps, every spiking layer, and on
   random states of the same size: is it compute- or memory-bound?
2. Variants of the same update written out here, with 2^20 random elements: the full update,
   the full update with a polynomial ``exp`` that inductor inlines (timing only: it rounds
   differently), no ``exp`` at all (the same memory traffic), and one ``exp`` kept.
3. The per-call overhead of the compiled call (guards, dispatch), with tiny tensors.
4. exp's argument floored at -60 (``msat.spiking.thresholds._EXP_FLOOR``) against no floor, on the
   thin ResNet at a long T (``--floor-T``), where silent membranes drift far below zero.

Each figure is the median over rounds (state cloned before each call, not timed).

    OMP_NUM_THREADS=1 python benchmarks/update_cost.py
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import time
from functools import partial
from pathlib import Path

import torch

sys.path[:0] = [str(Path(__file__).resolve().parent), str(Path(__file__).resolve().parents[1] / "src")]
import simulate as bench  # noqa: E402

from msat.conversion.lam import calibrate  # noqa: E402
from msat.conversion.prepare import prepare_ann  # noqa: E402
from msat.conversion.table2 import TABLE2  # noqa: E402
from msat.spiking import neuron as neurons  # noqa: E402
from msat.spiking import thresholds  # noqa: E402
from msat.spiking.thresholds import MSAT  # noqa: E402


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

    def record(neuron, inp, lam, inv_tm1, bias):
        if neuron.t in steps:
            captures.append((neuron.t, neuron.rule, neuron.v.clone(), neuron.s.clone(), inp.clone(), lam, inv_tm1,
                             neuron._inv_lam))
        return original(neuron, inp, lam, inv_tm1, bias)

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


_LN2_HI, _LN2_LO = 0.693359375, -2.12194440e-4  # ln 2 in two parts (Cody-Waite)
_EXP_POLY = (1.9875691500e-4, 1.3981999507e-3, 8.3334519073e-3, 4.1665795894e-2, 1.6666665459e-1, 5.0000001201e-1)


def poly_exp(z: torch.Tensor) -> torch.Tensor:
    """A float32 exp in plain tensor ops (range reduction, a degree-7 polynomial, 2^k by bits),
    which inductor inlines instead of calling SLEEF: only to time it. Valid for z in about
    [-87, 88]; it rounds differently from torch.exp."""
    z = z.clamp(min=-87.0, max=88.0)
    k = torch.round(z * 1.4426950408889634)
    r = z - k * _LN2_HI - k * _LN2_LO
    p = torch.full_like(r, _EXP_POLY[0])
    for c in _EXP_POLY[1:]:
        p = p * r + c
    return (p * (r * r) + r + 1.0) * ((k.to(torch.int32) + 127) << 23).view(torch.float32)


def variant(kind: str):
    hp = TABLE2["resnet20"]
    a, tmp, trd, C = hp["alpha"], hp["tau_mp"], hp["tau_rd"], hp["C"]
    exp = poly_exp if kind == "full, polynomial exp" else torch.exp
    every = kind.startswith("full")

    def update(v, s, inp, inv_lam, inv_tm1, lam):
        x = inp * inv_lam
        d = v - s * inv_tm1
        e = (d * a - 1.0) * (-tmp)
        ed = exp(d) if every or kind == "exp(d) only" else d
        ex = exp(x * (-1.0 / C)) if every or kind == "exp(-x/C) only" else x * (-1.0 / C)
        e = e - trd * ex
        en = exp(e) if every or kind == "exp(e) only" else e
        P = (ed + 1.0).abs().sqrt()
        theta = P / (en.abs() + P)
        v2 = v + x
        y = (v2 >= theta).to(v.dtype) * theta
        v.copy_(v2 - y)
        s.add_(v)
        return y * lam

    return torch.compile(update, dynamic=True)


def variants(n: int = 1 << 20, rounds: int = 7) -> None:
    kinds = ["full", "full, polynomial exp", "no exp", "exp(d) only", "exp(-x/C) only", "exp(e) only"]
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
        print(f"   {k:<22}{statistics.median(r):6.2f}")


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


def exp_floor(T: int, rounds: int) -> None:
    """The thin ResNet simulated for T steps with exp's argument floored (the code) and not
    (``_EXP_FLOOR = -inf``), alternating in this process: the outputs and the times."""
    model = bench.build(0.25, 10, net="resnet20_thin")
    x = torch.randn(64, 3, 32, 32)
    ann = prepare_ann(model)
    floors = {"floored at -60": thresholds._EXP_FLOOR, "no floor": -math.inf}
    with torch.no_grad():
        go = bench.run_ours(ann, calibrate(ann, [x]), "msat", x, T, 1, compiled=True, hp_row="resnet20")
        times: dict[str, list[float]] = {k: [] for k in floors}
        outs = {}
        try:
            for _ in range(rounds + 1):  # the first round compiles
                for k, floor in floors.items():
                    thresholds._EXP_FLOOR = floor
                    t0 = time.thread_time()
                    outs[k] = go()
                    times[k].append(time.thread_time() - t0)
        finally:
            thresholds._EXP_FLOOR = floors["floored at -60"]
    same = torch.equal(*outs.values())
    base = times["no floor"][1:]
    print(f"4. the thin ResNet, MSAT compiled, T={T}, {rounds} alternating rounds; outputs bit-identical: {same}")
    for k, ts in times.items():
        print(f"   {k:<16} median {statistics.median(ts[1:]):7.3f} s; per round / no floor: "
              + " ".join(f"{a / b:.3f}" for a, b in zip(ts[1:], base)))


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--floor-T", type=int, default=160, help="T of part 4 (0 skips it)")
    ap.add_argument("--floor-rounds", type=int, default=3)
    args = ap.parse_args()
    torch.set_num_threads(1)
    captured()
    variants()
    overhead()
    if args.floor_T:
        exp_floor(args.floor_T, args.floor_rounds)
