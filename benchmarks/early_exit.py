"""Wall time of early exit against the fixed-T run that reaches the same accuracy, one thread, in one
process, alternating (issue 31's goal: at least 3x less time).

    OMP_NUM_THREADS=1 python benchmarks/early_exit.py outputs/early_exit/search_T32 --rule learned --images 1000

Takes an ``evaluate.py eval.exit.rule=...`` run folder (its results.json names the ANN checkpoint,
the conversion artifact, the fitted rule, the dtype and the dataset), rebuilds that SNN and rule, and
on the first ``--images`` images of the run's test subset (any dataset; CIFAR-10 runs from before
results.json recorded the dataset config read the JPEG tree of ``--data``): (1) records one fixed run
to T_max (not timed) to find T*, the fewest steps whose fixed-T accuracy on these images is at least
the adaptive run's; (2) times, alternating,
``msat.simulate`` for T* steps and ``msat.simulate_adaptive`` (``time.thread_time``), ``--rounds``
times each; prints the medians and their ratio. Both runs go through the images in batches of
``--batch-size`` (default: the run's ``eval.batch_size``, 200 for runs that did not record it, as for
every CIFAR-10 run in docs/results/early_exit). The
batch size matters: on a CPU a batch of 1,000 CIFAR-10 images costs a fixed run about 1.8x more per
image-step than batches of 200 (its activations leave the cache), while the adaptive run's batch
shrinks out of that regime, so one large batch flatters the ratio. ``--adaptive-batch-size`` times the
adaptive run in other batches than the fixed one (each at its own best batch size).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Optional

import torch

import msat
from msat.analysis.exits import fixed_steps_for
from msat.harness.artifacts import restore_run, run_test_images
from msat.harness.data import subset
from msat.harness.reproduce import cifar10_splits
from msat.spiking.early_exit import ExitPredictor, make_exit_rule

CIFAR_JPEG = "../shared/datasets/cifar10-jpeg"


def load_run(folder: Path, rule: str):
    """The run's results, its SNN in the run's dtype (spike confidence as the run had it) and the rule."""
    path = folder / "results.json"
    if not path.is_file():
        raise SystemExit(f"no results.json in {folder}: give an evaluate.py run folder")
    res = json.loads(path.read_text())
    if "exit" not in res:
        raise SystemExit(f"{folder} was evaluated without early exit: rerun evaluate.py with eval.exit.rule=...")
    dtype = getattr(torch, res.get("dtype", "float32"))
    res, _, snn = restore_run(folder, dtype)
    if res.get("sc"):
        sc = res["sc"]
        snn.configure_sc(sc["p"], sc["early_steps"], sc["layers"], sc["reset"], sc["seeds"][0])
    rules = res["exit"]["rules"]
    if rule not in rules:
        raise SystemExit(f"{folder} has no fitted rule {rule!r}; it has {', '.join(sorted(rules))}")
    r = rules[rule]
    predictor = ExitPredictor.from_dict(r["predictor"]) if "predictor" in r else None
    return res, snn, make_exit_rule(rule, r["threshold"], predictor), dtype


def test_images(res: dict, data: Optional[str], n: int):
    """The first ``n`` images of the run's test subset: rebuilt from its recorded dataset config, or,
    for CIFAR-10 runs from before it was recorded, from the JPEG tree as evaluate.py read it."""
    if "dataset_config" in res:
        return run_test_images(res, n, root=data)
    test = subset(cifar10_splits(Path(data or CIFAR_JPEG), train_limit=16).test, res["n_samples"],
                  seed=res["subset_seed"])
    xs, ys = zip(*(test[i] for i in range(min(n, len(test)))))
    return torch.stack(xs), torch.tensor(ys)


def measure(folder: str | Path, rule: str = "learned", images: int = 200, rounds: int = 3,
            batch_size: Optional[int] = None, data: Optional[str] = None,
            adaptive_batch_size: Optional[int] = None) -> dict:
    """The figures main() prints, and the adaptive run's per-image ``pred`` and ``steps``
    (``batch_size`` None: the run's own; ``adaptive_batch_size`` None: the same)."""
    res, snn, exit_rule, dtype = load_run(Path(folder), rule)
    ex = res["exit"]
    x, y = test_images(res, data, images)
    x = x.to(dtype)
    d, T_max, k = int(res["readout_start"]), int(ex["T_max"]), int(ex["min_steps"])
    bs = min(batch_size or int(res.get("batch_size", 200)), len(y))
    abatch = min(adaptive_batch_size or bs, len(y))
    batches = [x[i:i + bs] for i in range(0, len(y), bs)]
    adaptive_batches = [x[i:i + abatch] for i in range(0, len(y), abatch)]

    def run():
        parts = [msat.simulate_adaptive(snn, b, T_max, rule=exit_rule, min_steps=k, readout_start=d)
                 for b in adaptive_batches]
        return msat.ExitResult(torch.cat([p.pred for p in parts]), torch.cat([p.steps for p in parts]))

    def run_fixed(T):
        return torch.cat([msat.simulate(snn, b, T, readout_start=min(d, T - 1)) for b in batches], 1)

    adaptive = run()
    acc = float((adaptive.pred == y).double().mean())
    fixed = run_fixed(T_max).argmax(-1) == y
    T_star = fixed_steps_for(fixed.double().mean(1).tolist(), acc) or T_max
    times = {"fixed": [], "adaptive": []}
    for _ in range(rounds):
        for name, fn in (("fixed", lambda: run_fixed(T_star)), ("adaptive", run)):
            t0 = time.thread_time()
            fn()
            times[name].append(time.thread_time() - t0)
    med = {k: statistics.median(v) for k, v in times.items()}
    return {"run": Path(folder).name, "rule": rule, "images": len(y), "adaptive_acc": 100 * acc,
            "mean_steps": float(adaptive.steps.double().mean()), "fixed_T": T_star,
            "fixed_acc": 100 * float(fixed[T_star - 1].double().mean()), "fixed_s": med["fixed"],
            "adaptive_s": med["adaptive"], "ratio": med["fixed"] / med["adaptive"], "rounds": rounds, "batch": bs,
            "adaptive_batch": abatch,
            "pred": adaptive.pred, "steps": adaptive.steps}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("run", help="an evaluate.py eval.exit.rule=... run folder")
    ap.add_argument("--rule", default="learned")
    ap.add_argument("--data", default=None, help="the dataset root, if not the one the run recorded")
    ap.add_argument("--images", type=int, default=200)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--batch-size", type=int, default=None,
                    help="images per simulate call, for both runs (default: the run's eval.batch_size, else 200)")
    ap.add_argument("--adaptive-batch-size", type=int, default=None,
                    help="images per simulate_adaptive call, if not --batch-size (each run at its own best batch)")
    args = ap.parse_args(argv)
    for name in ("images", "rounds", "batch_size", "adaptive_batch_size"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            ap.error(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    torch.set_num_threads(1)
    m = measure(args.run, args.rule, args.images, args.rounds, args.batch_size, args.data, args.adaptive_batch_size)
    print(f"run={m['run']} rule={m['rule']} images={m['images']} adaptive_acc={m['adaptive_acc']:.2f} "
          f"mean_steps={m['mean_steps']:.2f} fixed_T={m['fixed_T']} fixed_acc={m['fixed_acc']:.2f} "
          f"fixed_s={m['fixed_s']:.2f} adaptive_s={m['adaptive_s']:.2f} ratio={m['ratio']:.2f} "
          f"rounds={m['rounds']} batch={m['batch']}"
          + (f" adaptive_batch={m['adaptive_batch']}" if m["adaptive_batch"] != m["batch"] else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
