"""``python -m msat.search``: the fewest-steps search over the conversion levers, on a fixed ANN.

Which combination of threshold rule, percentile ``lam``, initial membrane, burst firing
and correction reaches the ANN's accuracy in the fewest steps? Every candidate is converted
from the same calibration batches (training images) and scored on *other* training images
(held out from calibration), never on test images. The ranking at T = 16, 32 and 64 names
the best candidate per T; ``python -m msat.reproduce --search <out>/search.json`` then
evaluates those on the fixed test subset beside every other method, with paired tests.

The grid (``GRID``) is the product of its lever values; ``--levers`` narrows it, e.g.
``--levers threshold=msat,const percentile=1.0``, and reaches the levers outside it: a burst cap
with the light correction (``extra=burst2_light,burst3_light``, ``OPTIONAL_EXTRAS``) and the light
correction's target T (``correction_T=8,12,16,32``; 32 by default; only candidates with a
correction take it).
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
import time
from pathlib import Path
from typing import Any, Optional

import torch

from ..conversion.methods import METHODS
from ..conversion.pipeline import Converter, convert
from ..conversion.prepare import prepare_ann
from ..conversion.recipe import Recipe
from ..spiking.simulation import simulate
from .checkpoint import load_ann_checkpoint, load_model
from .evaluation import count_correct
from .settings import OVERRIDES

GRID: dict[str, list[Any]] = {
    "threshold": ["const", "msat"],
    "percentile": [1.0, 0.999],
    "v_init": [0.0, 0.5],
    # burst: max_spikes=5, burst2 / burst3: at most 2 / 3 spikes a step; light: SNN Calibration's light corrections
    "extra": ["none", "burst", "burst2", "burst3", "light"],
    "balancing": ["max", "ltb"],  # ltb: local threshold balancing (per-channel lam); it takes no percentile
}
LTB_PASSES = 20  # as conf/config.yaml calibration.passes
CORRECTION_T = METHODS["calibration_light"].correction_T  # the target steps of the light correction
# "extra" values outside the default grid, for --levers: burst caps with the light correction
OPTIONAL_EXTRAS = ["burst2_light", "burst3_light"]
RANK_AT = (16, 32, 64)
# what each "extra" lever changes in a recipe
EXTRAS = {"none": {}, "burst": {"max_spikes": 5}, "burst2": {"max_spikes": 2}, "burst3": {"max_spikes": 3},
          "light": {"correction": "light"}, "burst2_light": {"max_spikes": 2, "correction": "light"},
          "burst3_light": {"max_spikes": 3, "correction": "light"}}


def _extras(c: dict) -> dict:
    """What the candidate's "extra" lever sets in a recipe; a correction aimed at its correction_T."""
    e = dict(EXTRAS[c["extra"]])
    if "correction" in e:
        e["correction_T"] = int(c.get("correction_T", CORRECTION_T))
    return e


def candidate_recipe(c: dict, arch: str) -> Recipe:
    """The recipe of a candidate, for the architecture's Table 2 row. A light correction measures
    on one calibration batch (``num_batches=1``), as evaluate.py's default."""
    r = METHODS[c["threshold"]].for_model(arch).replace(percentile=float(c["percentile"]), v_init=float(c["v_init"]),
                                                        **_extras(c))
    if c.get("balancing", "max") == "ltb":
        r = r.replace(balancing="ltb", passes=LTB_PASSES)
    return r.replace(num_batches=1) if r.correction else r


def candidate_overrides(c: dict) -> list[str]:
    """The evaluate.py overrides of a candidate (what msat.reproduce runs on the test images); they
    compose into :func:`candidate_recipe` (tests/test_methods.py checks)."""
    o = [f"method={c['threshold']}", f"calibration.percentile={c['percentile']}", f"method.v_init={c['v_init']}"]
    if c.get("balancing", "max") == "ltb":
        o += ["calibration.balancing=ltb", f"calibration.passes={LTB_PASSES}"]
    o += [f"{OVERRIDES[k]}={v}" for k, v in _extras(c).items()]
    return o


def candidate_name(c: dict) -> str:
    """``<threshold>_p<percentile>_v<v_init>_<extra>[_ltb][_cT<correction_T>]``; the last only for a
    correction aimed at another T than the default 32, so the default grid's names stay as they were."""
    name = f"{c['threshold']}_p{c['percentile']}_v{c['v_init']}_{c['extra']}"
    name = name + "_ltb" if c.get("balancing", "max") == "ltb" else name
    target = _extras(c).get("correction_T", CORRECTION_T)
    return name + f"_cT{target}" if target != CORRECTION_T else name


def candidates(grid: dict) -> list[dict]:
    """The product of the grid's lever values, less the contradictory ones (LTB with a percentile)
    and the repeats (a candidate without a correction takes only the first correction_T)."""
    keys = list(GRID) + ["correction_T"]
    targets = grid.get("correction_T", [CORRECTION_T])
    combos = [dict(zip(keys, values)) for values in itertools.product(*(grid[k] for k in GRID), targets)]
    return [c for c in combos if not (c["balancing"] == "ltb" and c["percentile"] < 1.0)
            and ("correction" in EXTRAS[c["extra"]] or c["correction_T"] == targets[0])]


def parse_levers(items: list[str]) -> dict[str, list[Any]]:
    """The grid narrowed (or, for ``OPTIONAL_EXTRAS`` and ``correction_T``, widened) by ``key=v1,v2`` items."""
    grid = {k: list(v) for k, v in GRID.items()}
    grid["correction_T"] = [CORRECTION_T]
    keys = list(grid)
    for item in items:
        key, _, values = item.partition("=")
        if key not in keys or not values:
            raise SystemExit(f"--levers takes key=v1,v2 with key in {', '.join(keys)}; got {item!r}")
        cast = float if key in ("percentile", "v_init") else int if key == "correction_T" else str
        try:
            grid[key] = [cast(v) for v in values.split(",")]
        except ValueError:
            raise SystemExit(f"--levers {key}: {values!r} are not {cast.__name__} values") from None
        allowed = GRID[key] + (OPTIONAL_EXTRAS if key == "extra" else []) if key in ("threshold", "extra", "balancing") else None
        bad = [v for v in grid[key] if (allowed is not None and v not in allowed) or (key == "correction_T" and v < 1)]
        if bad:
            raise SystemExit(f"--levers {key}: unknown value(s) {bad}; "
                             + (f"choose from {allowed}" if allowed is not None else "a correction's T is >= 1"))
    return grid


def held_out_batches(splits, seed: int, batch_size: int, num_cal: int, num_val: int):
    """The seeded order of training images (as convert.py): the first ``num_cal`` batches
    calibrate, the next ``num_val`` score the candidates."""
    g = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(splits.calibration), generator=g).tolist()

    def batch(i):
        idx = order[i * batch_size:(i + 1) * batch_size]
        xs, ys = zip(*(splits.calibration[j] for j in idx))
        return torch.stack(xs), torch.tensor(ys)

    need = (num_cal + num_val) * batch_size
    if need > len(order):
        raise SystemExit(f"the search needs {need} training images (calibration + held out), the set has {len(order)}")
    return [batch(i) for i in range(num_cal)], [batch(num_cal + i) for i in range(num_val)]


def score(snn, val, T: int) -> torch.Tensor:
    """Accuracy (%) after every step 1..T on the held-out batches."""
    correct, n = torch.zeros(T, dtype=torch.float64), 0
    for x, y in val:
        out = simulate(snn, x, T)
        correct += (out.argmax(-1) == y).double().sum(1)
        n += len(y)
    return 100.0 * correct / n


def run_search(model, cal, val, grid: dict, T: int, arch: str, log=print) -> list[dict]:
    ann = prepare_ann(model)
    lams = {}  # the lam of each (balancing, percentile), shared by the candidates

    def lam_of(r: Recipe):
        key = (r.balancing, r.percentile)
        if key not in lams:
            lams[key] = Converter(Recipe(threshold="const", balancing=r.balancing, percentile=r.percentile,
                                          passes=r.passes)).lam(ann, cal)
        return lams[key]

    results = []
    combos = candidates(grid)
    for i, c in enumerate(combos):
        t0 = time.time()
        recipe = candidate_recipe(c, arch)
        snn = convert(model, cal, recipe, lam=lam_of(recipe))
        acc = score(snn, val, T)
        results.append({**c, "name": candidate_name(c), "acc": acc.tolist(), "overrides": candidate_overrides(c)})
        log(f"[search] {i + 1}/{len(combos)} {candidate_name(c):32s} "
            + " ".join(f"T={t}: {acc[t - 1]:.2f}" for t in RANK_AT if t <= T) + f"  ({time.time() - t0:.0f} s)")
    return results


def rank(results: list[dict], T: int) -> dict[str, list[dict]]:
    """Per step of ``RANK_AT`` (T itself if T is shorter): the candidates by held-out accuracy,
    ties broken by name."""
    steps = [t for t in RANK_AT if t <= T] or [T]
    return {str(t): sorted(results, key=lambda r: (-r["acc"][t - 1], r["name"])) for t in steps}


def markdown(results: list[dict], ranking: dict, ann_val: float, n_val: int) -> str:
    lines = [f"Held-out training images: {n_val} (not used for calibration). ANN on them: {ann_val:.2f}%.", ""]
    for t, ranked in ranking.items():
        lines += [f"### T = {t}", "", "| rank | candidate | held-out acc (%) | ANN - acc |", "|---|---|---|---|"]
        for i, r in enumerate(ranked[:8]):
            a = r["acc"][int(t) - 1]
            lines.append(f"| {i + 1} | `{r['name']}` | {a:.2f} | {ann_val - a:.2f} |")
        lines.append("")
    return "\n".join(lines)


def main(argv: Optional[list[str]] = None) -> int:
    from .reproduce import DEFAULT_CHECKPOINT, DEFAULT_DATA, check_data, cifar10_splits

    p = argparse.ArgumentParser(prog="python -m msat.search", description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", default=DEFAULT_CHECKPOINT)
    p.add_argument("--data", default=DEFAULT_DATA)
    p.add_argument("--out", default="docs/results/cifar10")
    p.add_argument("--T", type=int, default=64)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--cal-batches", type=int, default=10, help="calibration batches (as convert.py)")
    p.add_argument("--val-batches", type=int, default=2, help="held-out training batches that score the candidates")
    p.add_argument("--levers", nargs="*", default=[], help="narrow the grid: key=v1,v2")
    p.add_argument("--quick", action="store_true", help="a tiny grid on a handful of images and steps")
    args = p.parse_args(argv)
    grid = parse_levers(args.levers)
    if args.quick:
        args.T, args.batch_size, args.cal_batches, args.val_batches = min(args.T, 8), 8, 1, 1
    if args.T < 1:
        raise SystemExit(f"--T must be >= 1, got {args.T}")
    check_data(Path(args.data))
    spec = load_ann_checkpoint(args.checkpoint, None, kind="ann")["model_spec"]
    model = load_model(args.checkpoint)
    splits = cifar10_splits(Path(args.data), test_limit=8 if args.quick else None,
                            train_limit=(args.cal_batches + args.val_batches) * args.batch_size if args.quick else None)
    cal, val = held_out_batches(splits, 0, args.batch_size, args.cal_batches, args.val_batches)
    sums = count_correct(model, val, torch.device("cpu"))
    ann_val = 100.0 * float(sums[0]) / float(sums[2])
    results = run_search(model, cal, val, grid, args.T, spec["name"])
    ranking = rank(results, args.T)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    best = {t: {"name": r[0]["name"], "overrides": r[0]["overrides"], "held_out_acc": r[0]["acc"][int(t) - 1]}
            for t, r in ranking.items()}
    n_val = sum(len(y) for _, y in val)
    (out / "search.json").write_text(json.dumps({"ann_held_out_acc": ann_val, "n_held_out": n_val, "T": args.T,
                                                 "grid": grid, "correction_T": CORRECTION_T, "best": best,
                                                 "candidates": results}, indent=1))
    (out / "search.md").write_text(markdown(results, ranking, ann_val, n_val))
    for t, b in best.items():
        print(f"[search] best at T={t}: {b['name']} ({b['held_out_acc']:.2f}% held out; ANN {ann_val:.2f}%)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
