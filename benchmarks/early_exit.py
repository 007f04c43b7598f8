"""Wall time of early exit against the fixed-T run that reaches the same accuracy, one thread, in one
process, alternating (issue 31's goal: at least 3x less time).

    OMP_NUM_THREADS=1 python benchmarks/early_exit.py outputs/early_exit/search_T32 --rule learned --images 1000

Takes an ``evaluate.py eval.exit.rule=...`` run folder (its results.json names the ANN checkpoint,
the conversion artifact and the fitted rule), rebuilds that SNN and rule, and on the first ``--images``
images of the run's test subset: (1) records one fixed run to T_max (not timed) to find T*, the fewest
steps whose fixed-T accuracy on these images is at least the adaptive run's; (2) times, alternating,
``msat.simulate`` for T* steps and ``msat.simulate_adaptive`` (``time.thread_time``), ``--rounds``
times each; prints the medians and their ratio. Both runs go through the images in batches of
``--batch-size`` (default 200, the ``eval.batch_size`` of every run in docs/results/early_exit). The
batch size matters: on a CPU a batch of 1,000 CIFAR-10 images costs a fixed run about 1.8x more per
image-step than batches of 200 (its activations leave the cache), while the adaptive run's batch
shrinks out of that regime, so one large batch flatters the ratio.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

import msat
from msat.analysis.exits import fixed_steps_for
from msat.harness.artifacts import restore_run
from msat.harness.data import subset
from msat.harness.reproduce import cifar10_splits
from msat.spiking.early_exit import ExitPredictor, make_exit_rule


def load_run(folder: Path, rule: str):
    res, _, snn = restore_run(folder)
    if res.get("sc"):
        sc = res["sc"]
        snn.configure_sc(sc["p"], sc["early_steps"], sc["layers"], sc["reset"], sc["seeds"][0])
    r = res["exit"]["rules"][rule]
    predictor = ExitPredictor.from_dict(r["predictor"]) if "predictor" in r else None
    return res, snn, make_exit_rule(rule, r["threshold"], predictor)


def test_images(res: dict, data: str, n: int):
    """The first ``n`` images of the run's test subset (the JPEG tree as evaluate.py reads it)."""
    test = subset(cifar10_splits(Path(data), train_limit=16).test, res["n_samples"], seed=res["subset_seed"])
    xs, ys = zip(*(test[i] for i in range(min(n, len(test)))))
    return torch.stack(xs), torch.tensor(ys)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("run", help="an evaluate.py eval.exit.rule=... run folder")
    ap.add_argument("--rule", default="learned")
    ap.add_argument("--data", default="../shared/datasets/cifar10-jpeg")
    ap.add_argument("--images", type=int, default=200)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--batch-size", type=int, default=200, help="images per simulate call, for both runs")
    args = ap.parse_args(argv)
    if args.batch_size < 1:
        ap.error(f"--batch-size must be >= 1, got {args.batch_size}")
    torch.set_num_threads(1)
    res, snn, rule = load_run(Path(args.run), args.rule)
    ex = res["exit"]
    x, y = test_images(res, args.data, args.images)
    d, T_max, k = int(res["readout_start"]), int(ex["T_max"]), int(ex["min_steps"])
    bs = min(args.batch_size, len(y))
    batches = [x[i:i + bs] for i in range(0, len(y), bs)]

    def run():
        parts = [msat.simulate_adaptive(snn, b, T_max, rule=rule, min_steps=k, readout_start=d) for b in batches]
        return msat.ExitResult(torch.cat([p.pred for p in parts]), torch.cat([p.steps for p in parts]))

    def run_fixed(T):
        return torch.cat([msat.simulate(snn, b, T, readout_start=min(d, T - 1)) for b in batches], 1)

    adaptive = run()
    acc = float((adaptive.pred == y).double().mean())
    fixed = run_fixed(T_max).argmax(-1) == y
    T_star = fixed_steps_for(fixed.double().mean(1).tolist(), acc) or T_max
    times = {"fixed": [], "adaptive": []}
    for _ in range(args.rounds):
        for name, fn in (("fixed", lambda: run_fixed(T_star)), ("adaptive", run)):
            t0 = time.thread_time()
            fn()
            times[name].append(time.thread_time() - t0)
    med = {k: statistics.median(v) for k, v in times.items()}
    print(f"run={Path(args.run).name} rule={args.rule} images={len(y)} adaptive_acc={100 * acc:.2f} "
          f"mean_steps={float(adaptive.steps.double().mean()):.2f} fixed_T={T_star} "
          f"fixed_acc={100 * float(fixed[T_star - 1].double().mean()):.2f} fixed_s={med['fixed']:.2f} "
          f"adaptive_s={med['adaptive']:.2f} ratio={med['fixed'] / med['adaptive']:.2f} rounds={args.rounds} batch={bs}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
