"""``python -m msat.harness.gpu.cli``: the GPU plan's stages under one time limit (``scripts/gpu/run.sh``).

    python -m msat.harness.gpu.cli pack --data ../shared/datasets/cifar10-jpeg --packed carry/packed
    python -m msat.harness.gpu.cli --out $OUT --packed carry/packed --time-limit 540            # every stage
    python -m msat.harness.gpu.cli evaluate --out $OUT --packed carry/packed --time-limit 300   # a rerun of one stage
    python -m msat.harness.gpu.cli --dry-run --device cpu --out /tmp/gpu-dry --packed /tmp/packed   # the CPU dry run

Stages, in order, with their budgets (seconds) and the least time worth starting them with;
see scripts/gpu/README.md for the expected times and what is shrunk first.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Optional

from .budget import Runner, Stage
from .early_exit import early_exit
from .packed import PackedDataError, pack_cifar10
from .speed import speed
from .stages import EVAL_METHODS, evaluate, gpu_tests, setup, train

log = logging.getLogger("msat.harness.gpu")

STAGES = [
    Stage("setup", 30, 5, setup, "versions, the device, the packed test and calibration images decoded once"),
    Stage("tests", 45, 20, gpu_tests, "pytest -m gpu"),
    Stage("speed", 90, 20, speed, "dense vs ours (step, chunk, compiled) vs SpikingJelly, extrapolated to 10k x T=256"),
    Stage("train", 240, 60, train, "full-width VGG16, epochs fitted to the budget, fp16 checkpoint in shards"),
    Stage("evaluate", 600, 30, evaluate, "the whole test set to T=256, method by method in priority order"),
    Stage("exit", 240, 60, early_exit, "early exit: the learned rule fitted on held-out training images, adaptive vs "
          "fixed-T wall time on the test set (a command of its own: evaluate takes the rest of a full run)"),
]
DRY_RUN = dict(width=0.0625, speed_width=0.0625, max_test=16, max_train=64, train_batch=16, max_epochs=2, T=8,
               speed_T=4, speed_batch=4, speed_rounds=1, eval_batch=8, cal_batches=1, cal_batch_size=8,
               methods="const,msat,msat_sc", chunk=4, speed_compile=False, exit_T=8, exit_batch=8, exit_holdout=16,
               exit_rounds=1)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m msat.harness.gpu.cli", description=__doc__.split("\n\n")[0])
    p.add_argument("stages", nargs="*", help=f"'pack', or stages to run (default: all): {', '.join(s.name for s in STAGES)}")
    p.add_argument("--out", default="outputs/gpu", help="results, logs and checkpoint shards")
    p.add_argument("--packed", default="carry/packed", help="the packed CIFAR-10 parts")
    p.add_argument("--data", default="../shared/datasets/cifar10-jpeg", help="pack: the JPEG tree")
    p.add_argument("--time-limit", type=float, default=540.0, help="seconds for all stages together")
    p.add_argument("--device", default="auto")
    p.add_argument("--dry-run", action="store_true", help="tiny sizes everywhere (the CPU check of the whole plan)")
    p.add_argument("--checkpoint", default="docs/results/cifar10/vgg16_w0.25.pt",
                   help="evaluate this train_ann.py checkpoint when the train stage did not run")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--width", type=float, default=1.0, help="train: VGG16 width")
    p.add_argument("--max-train", type=int, default=None, help="train: at most this many images")
    p.add_argument("--train-batch", type=int, default=512)
    p.add_argument("--lr", type=float, default=0.2)
    p.add_argument("--max-epochs", type=int, default=60, help="train: the most epochs (fewer when time is short)")
    p.add_argument("--T", type=int, default=256, help="evaluate: time steps")
    p.add_argument("--methods", default="", help=f"evaluate: labels in order (default: {','.join(EVAL_METHODS)})")
    p.add_argument("--max-test", type=int, default=None, help="evaluate: at most this many test images")
    p.add_argument("--eval-batch", type=int, default=500)
    p.add_argument("--chunk", type=int, default=32, help="time steps per layer-major call")
    p.add_argument("--cal-batches", type=int, default=10)
    p.add_argument("--cal-batch-size", type=int, default=128)
    p.add_argument("--speed-width", type=float, default=1.0)
    p.add_argument("--speed-batch", type=int, default=1000)
    p.add_argument("--speed-T", type=int, default=32)
    p.add_argument("--speed-rounds", type=int, default=3)
    p.add_argument("--exit-T", type=int, default=128, help="exit: T_max")
    p.add_argument("--exit-batch", type=int, default=1000, help="exit: images per batch, for both runs")
    p.add_argument("--exit-holdout", type=int, default=2000, help="exit: held-out training images to fit the rule on")
    p.add_argument("--exit-rounds", type=int, default=3, help="exit: alternating timing rounds (fewer when time is short)")
    p.add_argument("--no-speed-compile", dest="speed_compile", action="store_false",
                   help="speed: leave out the compiled contender (its compile takes tens of seconds)")
    return p


def main(argv: Optional[list[str]] = None) -> int:
    p = parser()
    args = p.parse_args(argv)
    if args.dry_run:  # tiny sizes, except where the command line says otherwise
        for k, v in DRY_RUN.items():
            if getattr(args, k) == p.get_default(k):
                setattr(args, k, v)
    logging.basicConfig(level=logging.INFO, format="[%(asctime)s][%(name)s] %(message)s", stream=sys.stdout)
    if args.stages[:1] == ["pack"]:
        try:
            parts = pack_cifar10(Path(args.data), Path(args.packed), calibration=args.cal_batches * args.cal_batch_size,
                                 seed=args.seed, limit=args.max_test if args.dry_run else None)
        except PackedDataError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        for name, prefix in parts.items():
            log.info("packed %s: %s.bin (%.1f MiB)", name, prefix, prefix.with_suffix(".bin").stat().st_size / 2**20)
        return 0
    unknown = [m for m in args.methods.split(",") if m and m not in EVAL_METHODS]
    if unknown:
        print(f"error: unknown method label(s) {unknown}; choose from {', '.join(EVAL_METHODS)}", file=sys.stderr)
        return 2
    try:
        status = Runner(Path(args.out), args.time_limit).run(STAGES, args.stages, args)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    states = {k: v["status"] for k, v in status["stages"].items()}
    log.info("stages: %s (%.0f s)", ", ".join(f"{k} {v}" for k, v in states.items()), status["elapsed_s"])
    return 0 if all(v != "failed" for v in states.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
