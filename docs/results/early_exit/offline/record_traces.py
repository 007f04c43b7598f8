"""Record the held-out and test traces of an early-exit run folder's SNN (what evaluate.py's exit
evaluation records), for offline fitting: python record_traces.py RUN_DIR OUT.pt T_MAX"""
import sys
import time
from pathlib import Path

import torch

from msat.harness.artifacts import restore_run
from msat.harness.data import subset
from msat.harness.exit_eval import holdout_images, record
from msat.harness.reproduce import cifar10_splits

folder, out, T = Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3])
torch.set_num_threads(1)
res, ann, snn = restore_run(folder)
splits = cifar10_splits(Path(__file__).resolve().parents[5] / "shared/datasets/cifar10-jpeg")
test = subset(splits.test, 1000, seed=0)
held = holdout_images(splits, 128, 0, 10, 1000)
d = int(res["readout_start"])
t0 = time.time()
h = record(snn, ann, held, T, d, 200, torch.device("cpu"), torch.float32)
te = record(snn, ann, test, T, d, 200, torch.device("cpu"), torch.float32)
torch.save({"held": h, "test": te}, out)
print("saved", out, time.time() - t0)
