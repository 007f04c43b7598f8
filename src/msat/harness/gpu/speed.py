"""Stage 2 of the GPU plan: simulation speed, every contender on the same weights and images.

- ``dense``: T x one forward of the ANN (the floor a rate-coded SNN cannot beat);
- ``ours_step``: ``msat.simulate`` one step per call; ``ours_chunk``: layer-major chunks of
  ``--chunk`` steps; ``ours_compiled``: the same with the fused (torch.compile'd) neuron update;
- ``spikingjelly``: its ann2snn converter (max-norm rate coding), step by step, when installed.

Each is timed after one warm-up call (the compile, for the compiled one, is timed apart),
median of ``--speed-rounds``, and extrapolated to the full test set at T = 256:
``seconds / (batch x T) x 10,000 x 256``.
"""

from __future__ import annotations

import logging
import statistics
import time

import torch

from ...conversion.pipeline import convert
from ...models import create_model
from ...spiking.simulation import simulate
from .budget import StageContext
from .stages import EVAL_METHODS, device_of, eval_data, sync

log = logging.getLogger(__name__)
FULL = 10_000 * 256  # image-steps of the full test set at T = 256


def _timed(fn, dev, rounds: int, deadline: float) -> tuple[float, float, int]:
    """(first call's seconds, median of the later calls, rounds run), stopping at ``deadline``."""
    t0 = time.perf_counter()
    fn()
    sync(dev)
    first = time.perf_counter() - t0
    times = []
    for _ in range(rounds):
        if times and time.monotonic() + times[-1] > deadline:
            break
        t0 = time.perf_counter()
        fn()
        sync(dev)
        times.append(time.perf_counter() - t0)
    return first, statistics.median(times) if times else first, len(times)


def spikingjelly_net(model, cal, dev):
    from spikingjelly.activation_based import ann2snn, functional

    if hasattr(ann2snn, "RateCodingRecipe"):  # SpikingJelly 2.0
        conv = ann2snn.Converter(recipe=ann2snn.RateCodingRecipe(dataloader=cal, mode="Max"), device=dev)
    else:  # 0.0.0.0.14
        conv = ann2snn.Converter(mode="max", dataloader=[(c, torch.zeros(len(c))) for c in cal], device=dev)
    return conv.convert(model).eval(), functional.reset_net


def speed(ctx: StageContext) -> dict:
    a, dev = ctx.args, device_of(ctx.args)
    x_all, _, cal = eval_data(ctx)
    x = x_all[:a.speed_batch]
    torch.manual_seed(a.seed)
    model = create_model("vgg16", 10, 3, a.speed_width).to(dev).eval()  # the same (random) weights for every contender
    T, B = a.speed_T, len(x)
    const = convert(model, cal, method="const")
    msat = convert(model, cal, EVAL_METHODS["msat"], lam=[v.clone() for v in const.lam])  # the same lam

    def dense():
        with torch.no_grad():
            out = model(x)
            for _ in range(T - 1):
                out = out + model(x)
        return out

    contenders = {"dense": dense}
    for name, snn in (("const", const), ("msat", msat)):
        contenders[f"{name}_step"] = lambda s=snn: simulate(s, x, T, chunk=1)
        contenders[f"{name}_chunk"] = lambda s=snn: simulate(s, x, T, chunk=a.chunk)
    try:
        sj, reset_net = spikingjelly_net(model, cal, dev)

        def run_sj():
            with torch.no_grad():
                reset_net(sj)
                out = sj(x)
                for _ in range(T - 1):
                    out = out + sj(x)
            return out

        contenders["spikingjelly"] = run_sj
    except Exception as exc:  # not installed, or its API changed: say so and go on
        log.warning("speed: no SpikingJelly contender (%s: %s)", type(exc).__name__, exc)
    res = {"batch": B, "T": T, "width": a.speed_width, "contenders": {}}
    extra = [("msat_compiled", None)] if a.speed_compile else []
    for name, fn in list(contenders.items()) + extra:
        if ctx.left() < 5:
            res["cut_short"] = f"no time left for {name} and after"
            break
        if name == "msat_compiled":
            msat.set_compile(True)
            fn = contenders["msat_chunk"]
        first, med, n = _timed(fn, dev, a.speed_rounds, ctx.deadline)
        res["contenders"][name] = {"first_call_s": round(first, 4), "median_s": round(med, 4), "rounds": n,
                                   "full_test_T256_s": round(med / (B * T) * FULL, 2)}
        log.info("speed: %-14s %.4f s (%d rounds); full test set at T=256: %.1f s", name, med, n, med / (B * T) * FULL)
        ctx.write_json("speed.json", res)
    c = res["contenders"]
    if "dense" in c:
        for name in c:
            c[name]["vs_dense"] = round(c[name]["median_s"] / c["dense"]["median_s"], 3)
    if "spikingjelly" in c and "const_chunk" in c:
        best = min(v["median_s"] for k, v in c.items() if k.startswith("const"))
        res["vs_spikingjelly"] = round(c["spikingjelly"]["median_s"] / best, 3)
    ctx.write_json("speed.json", res)
    return res
