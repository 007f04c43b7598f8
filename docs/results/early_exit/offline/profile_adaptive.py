"""cProfile of one adaptive run (the learned rule) of an early-exit run folder, one thread, after one
warm-up run. From the repository root:

    OMP_NUM_THREADS=1 python docs/results/early_exit/offline/profile_adaptive.py [RUN_DIR] [--images N] [--batch-size B]

(defaults: outputs/early_exit/search_T32, 200 images in one batch). Prints the thread time, the
number of simulated steps (``advance`` calls over all batches), the functions with the most own
time, and the cumulative time of the simulation's and the exit rule's own functions.
"""
import argparse
import cProfile
import pstats
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, "benchmarks")
from early_exit import load_run, test_images  # noqa: E402

import msat  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("run", nargs="?", default="outputs/early_exit/search_T32")
    ap.add_argument("--images", type=int, default=200)
    ap.add_argument("--batch-size", type=int, default=None, help="default: all the images in one batch")
    args = ap.parse_args()
    torch.set_num_threads(1)
    res, snn, rule, _ = load_run(Path(args.run), "learned")
    x, y = test_images(res, None, args.images)
    bs = args.batch_size or len(y)
    T_max, k, d = int(res["exit"]["T_max"]), int(res["exit"]["min_steps"]), int(res["readout_start"])

    def run():
        return [msat.simulate_adaptive(snn, x[i:i + bs], T_max, rule=rule, min_steps=k, readout_start=d)
                for i in range(0, len(y), bs)]

    run()
    pr = cProfile.Profile()
    t0 = time.thread_time()
    pr.enable()
    parts = run()
    pr.disable()
    steps = torch.cat([p.steps for p in parts])
    print(f"thread s {time.thread_time() - t0:.2f}, images {len(y)}, batch {bs}, mean steps "
          f"{float(steps.double().mean()):.2f}, simulated steps {sum(int(p.steps.max()) for p in parts)}")
    stats = pstats.Stats(pr)
    stats.sort_stats("tottime").print_stats(12)
    stats.sort_stats("cumtime").print_stats(r"early_exit\.py|network\.py")
    return 0


if __name__ == "__main__":
    sys.exit(main())
