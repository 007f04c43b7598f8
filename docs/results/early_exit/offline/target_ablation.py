"""The learned rule's target and model, fitted offline on recorded traces (record_traces.py) the
way evaluate.py does (fit on one half of the held-out images, choose on the other for a 1-point
drop, report the test images at the chosen threshold): python target_ablation.py TRACES.pt
HIDDEN:TARGET [HIDDEN:TARGET ...]   (e.g. 0:right 0:settled 16:settled)"""
import sys
import time

import torch

from msat.analysis import exits
from msat.harness.exit_eval import _halves

torch.set_num_threads(2)
d = torch.load(sys.argv[1], weights_only=False)
held, test = d["held"], d["test"]
T = 128
for k in ("held", "test"):
    d[k]["S"], d[k]["rates"] = d[k]["S"][:T], d[k]["rates"][:T]
fit, select = _halves(held)
ann_sel = 100 * float(select["ann_right"].double().mean())
ann_test = 100 * float(test["ann_right"].double().mean())
print("ann select", ann_sel, "ann test", ann_test, "oracle test", exits.stats(exits.oracle(test, test["y"], 1, T), test["y"]))
for spec in sys.argv[2:]:
    hidden, target = int(spec.split(":")[0]), spec.split(":")[1]
    t0 = time.time()
    p = exits.fit_predictor(fit, fit["y"], 1, T, hidden=hidden, target=target)
    pts = exits.curve(select, select["y"], "learned", exits.PROBABILITY_GRID, 1, T, predictor=p)
    ch = exits.choose(pts, ann_sel, 1.0)
    tp = exits.curve(test, test["y"], "learned", exits.PROBABILITY_GRID, 1, T, predictor=p)
    chosen_test = [q for q in tp if q["setting"] == ch["setting"]][0]
    print(f"{spec} fit {time.time()-t0:.0f}s chosen {ch['setting']} sel {ch['accuracy']:.1f}@{ch['mean_steps']:.1f} "
          f"test {chosen_test['accuracy']:.1f}@{chosen_test['mean_steps']:.1f}")
    print("   test curve:", [(q["setting"], round(q["accuracy"],1), round(q["mean_steps"],1)) for q in tp])
