"""The GPU plan's early-exit stage (issue 31's second goal on a GPU).

The conversion aimed at early exit (LTB, at most 2 spikes a step, SNN Calibration light for
T = 12); its learned exit rule fitted, and its threshold chosen, on training images that
calibration did not use (never on test images); then the wall time of the adaptive run against
the fixed run of the same accuracy on the test images, alternating, with the device synchronised
around each timing (``time.perf_counter``: GPU work does not show in thread time). The fixed run
goes in layer-major chunks of ``--chunk`` steps, its fastest mode on a GPU; the adaptive run
steps one at a time, as it must to decide after every step. Writes ``exit.json``.
"""

from __future__ import annotations

import logging
import statistics
import time
from pathlib import Path

import torch

from ...analysis.exits import fixed_steps_for
from ...conversion.methods import METHODS
from ...conversion.pipeline import convert
from ...conversion.prepare import prepare_ann
from ...spiking.early_exit import simulate_adaptive
from ...spiking.simulation import simulate
from ..exit_eval import ExitSettings, fit_rules, record
from .budget import StageContext
from .packed import PARTS, decode
from .stages import accuracy, device_of, eval_data, normalize, stage_model, sync

log = logging.getLogger(__name__)
EXIT_RECIPE = METHODS["ltb"].replace(max_spikes=2, correction="light", correction_T=12)


def _held_out(ctx: StageContext, dev) -> torch.utils.data.TensorDataset:
    """The first ``--exit-holdout`` images of the training pack (the calibration images are packed
    apart, so none of these calibrated the net)."""
    a = ctx.args
    x, y = decode(Path(a.packed) / PARTS["train"], "train", dev)
    return torch.utils.data.TensorDataset(normalize(x[:a.exit_holdout]), y[:a.exit_holdout])


def _timed(fn, dev) -> float:
    sync(dev)
    t0 = time.perf_counter()
    fn()
    sync(dev)
    return time.perf_counter() - t0


def early_exit(ctx: StageContext) -> dict:
    a, dev = ctx.args, device_of(ctx.args)
    model, source = stage_model(ctx, dev)
    x, y, cal = eval_data(ctx)
    T, bs = a.exit_T, a.exit_batch
    snn, ann = convert(model, cal, EXIT_RECIPE), prepare_ann(model)
    held = record(snn, ann, _held_out(ctx, dev), T, 0, bs, dev, torch.float32)
    settings = ExitSettings(rules=("learned",), threshold=None, max_drop=1.0, min_steps=1, T_max=T,
                            holdout=int(held["y"].shape[0]))
    fitted = fit_rules(held, settings)["learned"]
    rule = fitted["rule"]
    batches = [(x[i:i + bs], y[i:i + bs]) for i in range(0, len(y), bs)]
    # the fixed run at its best: layer-major chunks of --chunk steps (the same results up to float rounding)
    fixed_right = torch.cat([simulate(snn, xb, T, chunk=min(a.chunk, T)).argmax(-1) == yb for xb, yb in batches], 1)
    fixed_curve = (100.0 * fixed_right.double().mean(1)).tolist()

    def adaptive():
        return [simulate_adaptive(snn, xb, T, rule=rule) for xb, _ in batches]

    parts = adaptive()
    pred, steps = torch.cat([p.pred for p in parts]), torch.cat([p.steps for p in parts])
    acc = 100.0 * float((pred == y).double().mean())
    T_star = fixed_steps_for(fixed_curve, acc) or T
    times = {"fixed": [], "adaptive": []}
    for _ in range(a.exit_rounds):
        if ctx.left() < 2.5 * (sum(times["fixed"][-1:]) + sum(times["adaptive"][-1:])):
            break
        times["fixed"].append(_timed(lambda: [simulate(snn, xb, T_star, chunk=min(a.chunk, T_star)) for xb, _ in batches],
                                     dev))
        times["adaptive"].append(_timed(adaptive, dev))
    med = {k: statistics.median(v) if v else None for k, v in times.items()}
    out = {"checkpoint": source, "recipe": EXIT_RECIPE.to_dict(), "n_images": len(y),
           "fixed_chunk": a.chunk,
           "held_out_images": settings.holdout, "T_max": T, "batch": bs, "ann_acc": accuracy(model, x, y),
           "threshold": fitted["chosen"]["threshold"], "chosen_on_held_out": fitted["chosen"],
           "adaptive_acc": acc, "mean_steps": float(steps.double().mean()), "fixed_T_same_acc": T_star,
           "fixed_acc": fixed_curve[T_star - 1], "fixed_curve": fixed_curve, "seconds": times,
           "fixed_s": med["fixed"], "adaptive_s": med["adaptive"],
           "ratio": med["fixed"] / med["adaptive"] if med["adaptive"] else None,
           "steps_ratio": T_star / float(steps.double().mean())}  # every image runs at least one step
    ctx.write_json("exit.json", out)
    log.info("exit: %.2f%% at %.2f mean steps, fixed T=%d for the same accuracy; fixed %s s, adaptive %s s",
             acc, out["mean_steps"], T_star, med["fixed"], med["adaptive"])
    return {k: out[k] for k in ("adaptive_acc", "mean_steps", "fixed_T_same_acc", "fixed_s", "adaptive_s", "ratio")}
