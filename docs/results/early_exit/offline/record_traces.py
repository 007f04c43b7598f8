"""Record the held-out and test traces of an early-exit run folder's SNN (what evaluate.py's exit
evaluation records), for offline fitting: python record_traces.py RUN_DIR OUT.pt T_MAX"""
import json
import sys
import time
from pathlib import Path

import torch

import msat
from msat.conversion.pipeline import Converter
from msat.harness.checkpoint import load_artifact, load_model
from msat.harness.data import subset
from msat.harness.exit_eval import holdout_images, record
from msat.harness.reproduce import cifar10_splits

folder, out, T = Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3])
torch.set_num_threads(1)
res = json.loads((folder / "results.json").read_text())
model = load_model(res["ann_checkpoint"])
art = load_artifact(res["artifact"], res["ann_sha256"])
ann, snn = Converter(msat.Recipe.from_dict(art["recipe"])).restore(model, art)
splits = cifar10_splits(Path(__file__).resolve().parents[5] / "shared/datasets/cifar10-jpeg")
test = subset(splits.test, 1000, seed=0)
held = holdout_images(splits, 128, 0, 10, 1000)
d = int(res["readout_start"])
t0 = time.time()
h = record(snn, ann, held, T, d, 200, torch.device("cpu"), torch.float32)
te = record(snn, ann, test, T, d, 200, torch.device("cpu"), torch.float32)
torch.save({"held": h, "test": te}, out)
print("saved", out, time.time() - t0)
