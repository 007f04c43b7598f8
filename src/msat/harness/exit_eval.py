"""``evaluate.py eval.exit.rule=...``: early exit over the test set, with its rules fitted and their
operating points chosen on training images held out from calibration (never on test images).

1. The held-out images (the calibration order's images after the calibration batches) run the
   fixed simulation once to ``T_max``; every rule is fitted there (the schedule and the learned
   predictor on one half, their settings chosen on the other) and gets its operating point: the
   fewest mean steps within ``max_drop`` points of the ANN on those images, or a fixed threshold.
2. The test images run the fixed simulation once (the fixed-T curve, the oracle, every rule's
   curve) and the adaptive simulation once per rule (images leave the batch when they exit), whose
   decisions are checked against the fixed run's.
3. ``results.json`` gets ``exit``: per rule, the accuracy and the exit-step distribution at the
   chosen point, its curve, the oracle, and McNemar's test against the fixed run at the step
   nearest the mean exit step.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any, Optional

import torch

from ..analysis import exits
from ..analysis.stats import mcnemar
from ..spiking.early_exit import EXIT_RULES, check_exit, make_exit_rule, record_run, replay, simulate_adaptive
from .distributed import DistInfo, all_reduce_sum
from .evaluation import batch_seed, rank_batches, stream


@dataclasses.dataclass(frozen=True)
class ExitSettings:
    """``eval.exit``: the rules, a fixed threshold or the drop the operating point may cost, the
    first step an image may leave at, the longest run, and the held-out images."""

    rules: tuple
    threshold: Any
    max_drop: float
    min_steps: int
    T_max: int
    holdout: int
    target: str = "settled"
    hidden: int = 0
    rates: bool = True


def exit_settings(ev, T: int, readout_start) -> Optional[ExitSettings]:
    """``eval.exit`` checked (before any work), or None when early exit is off."""
    ex = ev.get("exit")
    if ex is None or ex.rule is None:
        return None
    names = list(EXIT_RULES) if ex.rule == "all" else ([ex.rule] if isinstance(ex.rule, str) else list(ex.rule))
    unknown = [r for r in names if r not in EXIT_RULES]
    if unknown or not names:
        raise ValueError(f"unknown exit rule {unknown or names}; eval.exit.rule is one of {', '.join(EXIT_RULES)}, "
                         "a list of them, or all")
    T_max = T if ex.T_max is None else ex.T_max
    if isinstance(T_max, bool) or int(T_max) != T_max or not 1 <= int(T_max) <= T:
        raise ValueError(f"eval.exit.T_max must be an integer in 1..eval.T={T}, got {T_max!r}")
    if readout_start != "auto" and int(readout_start) >= int(T_max):
        raise ValueError(f"eval.readout_start={readout_start} leaves no step to exit at before T_max={T_max}")
    if ex.threshold is not None:
        if len(names) > 1 or names[0] in ("schedule", "learned"):
            raise ValueError("eval.exit.threshold fixes the threshold of one simple rule (confidence or margin); the "
                             "schedule and the learned rule are fitted: use eval.exit.max_drop")
        make_exit_rule(names[0], ex.threshold)  # its range
    if not float(ex.max_drop) >= 0:
        raise ValueError(f"eval.exit.max_drop (points of accuracy) must be >= 0, got {ex.max_drop}")
    if isinstance(ex.holdout, bool) or int(ex.holdout) < 2:
        raise ValueError(f"eval.exit.holdout (held-out training images) must be >= 2, got {ex.holdout}")
    target, hidden = ex.get("target", "settled"), ex.get("hidden", 0)
    if target not in exits.TARGETS:
        raise ValueError(f"eval.exit.target must be one of {', '.join(exits.TARGETS)}, got {target!r}")
    if isinstance(hidden, bool) or not isinstance(hidden, int) or hidden < 0:
        raise ValueError(f"eval.exit.hidden (hidden units of the learned rule; 0 = logistic) must be an integer >= 0, "
                         f"got {hidden!r}")
    rates = ex.get("rates", True)
    if not isinstance(rates, bool):
        raise ValueError(f"eval.exit.rates (whether the learned rule reads the firing rates) is true or false, got {rates!r}")
    check_exit(int(T_max), ex.min_steps, 0)
    return ExitSettings(tuple(names), ex.threshold, float(ex.max_drop), int(ex.min_steps), int(T_max), int(ex.holdout),
                        target, hidden, rates)


def holdout_images(splits, batch_size: int, seed: int, num_batches: Optional[int], n: int):
    """The training images after the calibration batches in the calibration order (test transforms)."""
    g = torch.Generator().manual_seed(int(seed))
    order = torch.randperm(len(splits.calibration), generator=g).tolist()
    first = int(num_batches or 0) * batch_size
    if first >= len(order):
        raise ValueError(f"no training images are left after the {num_batches} calibration batches of {batch_size} to fit "
                         "the exit rules on: lower calibration.num_batches")
    return torch.utils.data.Subset(splits.calibration, order[first:first + n])


@torch.no_grad()
def record(snn, ann, dataset, T: int, d: int, batch_size: int, device, dtype, info: DistInfo = DistInfo(),
           num_workers: int = 0, seed: int = 0, saved: Optional[dict] = None, save=None) -> dict:
    """A fixed run of every image to T (``S`` [T, n, C] in the simulation's dtype, firing rates
    [T, n, L]), the labels and the ANN's per-image correctness; sharded over ranks, all-reduced.
    ``saved``/``save``: resume from, and save after every batch, the partial record."""
    n = len(dataset)
    rec = dict(saved or {})
    for b, first, x, y in stream(dataset, rank_batches(n, batch_size, info, rec.get("done", [])), batch_size, device,
                                 dtype, num_workers):
        tr = record_run(snn, x, T, d, layers=True, seed=batch_seed(seed, b))
        if "S" not in rec:
            rec.update(S=torch.zeros(T, n, tr["S"].shape[-1], dtype=tr["S"].dtype, device=device),
                       rates=torch.zeros(T, n, tr["rates"].shape[-1], dtype=torch.float64, device=device),
                       y=torch.zeros(n, dtype=torch.long, device=device),
                       ann_right=torch.zeros(n, dtype=torch.float64, device=device), done=[])
        rec["S"][:, first:first + len(y)], rec["rates"][:, first:first + len(y)] = tr["S"], tr["rates"]
        rec["y"][first:first + len(y)] = y
        rec["ann_right"][first:first + len(y)] = (ann(x).argmax(1) == y).double()
        rec["done"] = rec["done"] + [b]
        if save is not None:
            save(rec)
    for k in ("S", "rates", "y", "ann_right"):
        all_reduce_sum(rec[k], info)
    return {"S": rec["S"], "rates": rec["rates"], "readout_start": d, "y": rec["y"], "ann_right": rec["ann_right"].bool()}


def _halves(trace: dict) -> tuple[dict, dict]:
    n = trace["y"].shape[0]
    cut = lambda sl: {"S": trace["S"][:, sl], "rates": trace["rates"][:, sl], "readout_start": trace["readout_start"],  # noqa: E731
                      "y": trace["y"][sl], "ann_right": trace["ann_right"][sl]}
    return cut(slice(0, n // 2)), cut(slice(n // 2, n))


def fit_rules(held: dict, s: ExitSettings) -> dict:
    """Every rule fitted and its operating point chosen on the held-out run (module docstring)."""
    y, ann_acc = held["y"], 100.0 * float(held["ann_right"].double().mean())
    fit, select = _halves(held)
    out = {}
    for name in s.rules:
        predictor = exits.fit_predictor(fit, fit["y"], s.min_steps, s.T_max, hidden=s.hidden, target=s.target,
                                         rates=s.rates) if name == "learned" else None
        if s.threshold is not None:
            on, points = held, exits.curve(held, y, name, [s.threshold], s.min_steps, s.T_max)
        elif name == "confidence":
            on, points = held, exits.curve(held, y, name, exits.CONFIDENCE_GRID, s.min_steps, s.T_max)
        elif name == "margin":
            on, points = held, exits.curve(held, y, name, exits.margin_grid(held, s.T_max), s.min_steps, s.T_max)
        elif name == "schedule":
            on, points = select, exits.curve(select, select["y"], name, exits.PRECISION_GRID, s.min_steps, s.T_max,
                                             fit_on=(fit, fit["y"]))
        else:
            on, points = select, exits.curve(select, select["y"], name, exits.PROBABILITY_GRID, s.min_steps, s.T_max,
                                             predictor=predictor)
        on_ann = 100.0 * float(on["ann_right"].double().mean())
        chosen = exits.choose(points, on_ann, s.max_drop) if s.threshold is None else {**points[0], "within_drop": None}
        out[name] = {"rule": make_exit_rule(name, chosen["threshold"], predictor), "chosen": chosen,
                     "heldout_curve": points, "heldout_n": int(on["y"].shape[0]), "heldout_ann_acc": on_ann,
                     "predictor": predictor, "setting": chosen["setting"]}
    out["_ann_acc"] = ann_acc
    return out


def run_adaptive(snn, dataset, rule, s: ExitSettings, d: int, batch_size: int, device, dtype,
                 info: DistInfo = DistInfo(), num_workers: int = 0, seed: int = 0, saved: Optional[dict] = None,
                 save=None) -> dict:
    """The compacted run of one rule over every image: per-image prediction and exit step, and its
    thread time (``saved``/``save`` as in :func:`record`)."""
    n = len(dataset)
    rec = dict(saved or {}) or {"pred": torch.zeros(n, dtype=torch.long, device=device),
                                "steps": torch.zeros(n, dtype=torch.long, device=device), "thread_seconds": 0.0,
                                "done": []}
    for b, first, x, _ in stream(dataset, rank_batches(n, batch_size, info, rec["done"]), batch_size, device, dtype,
                                 num_workers):
        t0 = time.thread_time()
        res = simulate_adaptive(snn, x, s.T_max, rule=rule, min_steps=s.min_steps, readout_start=d,
                                seed=batch_seed(seed, b))
        rec["thread_seconds"] += time.thread_time() - t0
        rec["pred"][first:first + len(x)], rec["steps"][first:first + len(x)] = res.pred, res.steps
        rec["done"] = rec["done"] + [b]
        if save is not None:
            save(rec)
    for k in ("pred", "steps"):
        all_reduce_sum(rec[k], info)
    return rec


def summarize_rule(name: str, fitted: dict, test: dict, live: dict, s: ExitSettings) -> dict:
    """One rule's record: the chosen point on the test images, the decisions checked against the
    fixed run's, its test curve, and McNemar against the fixed run at the step nearest its mean."""
    y = test["y"]
    res = exits.ExitResult(live["pred"], live["steps"])
    st = exits.stats(res, y)
    replayed = replay(test, fitted["rule"], min_steps=s.min_steps, T_max=s.T_max)
    mismatch = int(((replayed.steps != res.steps) | (replayed.pred != res.pred)).sum())
    t_near = min(max(int(round(st["mean_steps"])), 1), s.T_max)
    right = res.pred == y
    fixed_right = exits.fixed(test, y, t_near)
    grid = [p["setting"] for p in fitted["heldout_curve"]]
    curve = exits.curve(test, y, name, grid, s.min_steps, s.T_max, predictor=fitted["predictor"],
                        fit_on=None) if name != "schedule" else \
        [{**p, **exits.stats(replay(test, "schedule", p["threshold"], s.min_steps, s.T_max), y)}
         for p in fitted["heldout_curve"]]
    rec = {**st, "setting": fitted["setting"], "threshold": fitted["chosen"]["threshold"],
           "chosen_on": {"images": "training images held out from calibration", "n": fitted["heldout_n"],
                         "ann_acc": fitted["heldout_ann_acc"], "accuracy": fitted["chosen"]["accuracy"],
                         "mean_steps": fitted["chosen"]["mean_steps"], "within_drop": fitted["chosen"]["within_drop"],
                         "max_drop": s.max_drop},
           "decisions_differ_from_fixed_run": mismatch, "thread_seconds": live["thread_seconds"],
           "vs_fixed": {"T": t_near, "fixed_acc": 100.0 * float(fixed_right.double().mean()),
                        **mcnemar(right.cpu(), fixed_right.cpu())},
           "curve": [{k: p[k] for k in ("setting", "accuracy", "mean_steps")} for p in curve],
           "heldout_curve": [{k: p[k] for k in ("setting", "accuracy", "mean_steps")} for p in fitted["heldout_curve"]]}
    if fitted["predictor"] is not None:
        rec["predictor"] = fitted["predictor"].to_dict()
    return rec


def exit_record(test: dict, per_rule: dict, s: ExitSettings, fixed_seconds: float) -> dict:
    """``results.json["exit"]``: the settings, the oracle, the fixed run's thread time, every rule."""
    y = test["y"]
    return {"T_max": s.T_max, "min_steps": s.min_steps, "max_drop": s.max_drop, "holdout": s.holdout,
            "n": int(y.shape[0]), "ann_acc": 100.0 * float(test["ann_right"].double().mean()),
            "oracle": exits.stats(exits.oracle(test, y, s.min_steps, s.T_max), y),
            "fixed_curve": (100.0 * (test["S"][: s.T_max].argmax(-1) == y).double().sum(1).cpu() / len(y)).tolist(),
            "fixed_thread_seconds": fixed_seconds, "rules": per_rule}
