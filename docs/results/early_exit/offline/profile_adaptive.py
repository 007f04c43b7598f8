"""cProfile of one adaptive run (the learned rule) of an early-exit run folder on 200 test images,
one thread, after one warm-up run: OMP_NUM_THREADS=1 python profile_adaptive.py (from the repo root)"""
import cProfile
import pstats
import sys

import torch

sys.path.insert(0, "benchmarks")
from pathlib import Path

from early_exit import load_run, test_images

import msat

torch.set_num_threads(1)
res, snn, rule = load_run(Path("outputs/early_exit/search_T32"), "learned")
x, y = test_images(res, "../shared/datasets/cifar10-jpeg", 200)


def run():
    return msat.simulate_adaptive(snn, x, 128, rule=rule, min_steps=1, readout_start=0)


run()
pr = cProfile.Profile()
pr.enable()
r = run()
pr.disable()
print("mean steps", r.steps.double().mean())
pstats.Stats(pr).sort_stats("tottime").print_stats(18)
