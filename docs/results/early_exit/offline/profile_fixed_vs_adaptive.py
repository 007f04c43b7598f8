"""cProfile of a fixed run and an adaptive run (the learned rule) of the same images, side by side,
one thread: the fixed run at T = the adaptive run's mean steps rounded, so both do about the same
image-steps. From the repository root:

    OMP_NUM_THREADS=1 python docs/results/early_exit/offline/profile_fixed_vs_adaptive.py RUN_DIR [IMAGES]
"""
import cProfile
import pstats
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, "benchmarks")
from early_exit import load_run, test_images  # noqa: E402

import msat  # noqa: E402

torch.set_num_threads(1)
folder, n = Path(sys.argv[1]), int(sys.argv[2]) if len(sys.argv) > 2 else 500
res, snn, rule, _ = load_run(folder, "learned")
x, y = test_images(res, "../shared/datasets/cifar10-jpeg", n)
T_max, d = int(res["exit"]["T_max"]), int(res["readout_start"])


def adaptive():
    return msat.simulate_adaptive(snn, x, T_max, rule=rule, min_steps=int(res["exit"]["min_steps"]), readout_start=d)


T = int(round(float(adaptive().steps.double().mean())))  # also the warm-up


def fixed():
    return msat.simulate(snn, x, T, readout_start=min(d, T - 1))


fixed()
for name, fn in (("fixed", fixed), ("adaptive", adaptive)):
    pr = cProfile.Profile()
    t0 = time.thread_time()
    pr.enable()
    fn()
    pr.disable()
    dt = time.thread_time() - t0
    print(f"{name}: T {T}, {len(y)} images, thread s {dt:.2f}, ms per image-step {1e3 * dt / (len(y) * T):.3f}")
    pstats.Stats(pr).sort_stats("tottime").print_stats(6)
