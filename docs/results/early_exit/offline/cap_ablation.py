"""The run's length as part of the operating point, offline: python cap_ablation.py TRACES.pt [CAP ...]

The learned rule keeps an image until its predictor is sure or T_max comes; images it is never sure
of run to T_max, and on the CIFAR-10 VGG16 those few long runs make much of the mean. Here T_max
(the cap) is chosen with the threshold, on the held-out images: for every cap, the learned rule is
fitted as evaluate.py fits it with eval.exit.T_max=CAP (target 'settled' at the cap, features with
the firing rates, logistic, on one half of the held-out images), its curve drawn on the other half
over the probability grid, and the pair (cap, threshold) with the fewest mean steps within 1 point
of the ANN on that half is chosen; the test images are then run at that pair. Printed: per cap, the
chosen threshold on the choosing half and the test images, and the joint choice. Every point is a
replay of the recorded run (``msat.spiking.early_exit.replay``'s decisions, computed once per cap
from the predictor's probabilities and checked against replay at the chosen point).

TRACES.pt: the held-out and test records of a run (record_traces.py)."""
import sys
import time

import torch

from msat.analysis import exits
from msat.harness.exit_eval import _halves
from msat.spiking.early_exit import Progress, replay

GRID = exits.PROBABILITY_GRID


def probabilities(trace, predictor, T_max):
    """``[T_max, B]``: the predictor's probability at every step, from the same features the rule reads."""
    progress, out = Progress(int(trace["readout_start"])), []
    for t in range(1, T_max + 1):
        progress.observe(trace["S"][t - 1], t, trace["rates"][t - 1])
        out.append(predictor.probability(progress.features(rates=True)))
    return torch.stack(out)


def points(P, trace, T_max):
    """Accuracy and mean steps at every threshold of GRID (exit at the first t with P >= threshold, else T_max)."""
    S, y = trace["S"], trace["y"]
    res = []
    for thr in GRID:
        ex = P[:T_max] >= thr
        ex[T_max - 1] = True
        first = ex.int().argmax(0)
        pred = S[first, torch.arange(len(y))].argmax(-1)
        res.append({"setting": thr, "accuracy": 100 * float((pred == y).double().mean()),
                    "mean_steps": float((first + 1).double().mean()), "p90": float(torch.quantile((first + 1).double(), .9))})
    return res


def main(argv):
    torch.set_num_threads(1)
    d = torch.load(argv[0], weights_only=False)  # our own recording
    held, test = d["held"], d["test"]
    caps = [int(a) for a in argv[1:]] or [16, 24, 32, 40, 48, 64, 96, 128]
    fit_tr, sel_tr = _halves(held)
    ann_sel = 100 * float(sel_tr["ann_right"].double().mean())
    ann_test = 100 * float(test["ann_right"].double().mean())
    print(f"ANN: choosing half {ann_sel:.1f} (n={len(sel_tr['y'])}), test {ann_test:.1f} (n={len(test['y'])})")
    all_sel, per_cap = [], {}
    for cap in caps:
        t0 = time.time()
        pr = exits.fit_predictor(fit_tr, fit_tr["y"], 1, cap, target="settled", rates=True)
        ps, pt = points(probabilities(sel_tr, pr, cap), sel_tr, cap), points(probabilities(test, pr, cap), test, cap)
        c = exits.choose(ps, ann_sel, 1.0)
        i = GRID.index(c["setting"])
        per_cap[cap] = (pr, ps, pt)
        all_sel += [{**p, "cap": cap, "test": pt[k]} for k, p in enumerate(ps)]
        fixed = 100 * float((test["S"][cap - 1].argmax(-1) == test["y"]).double().mean())
        print(f"cap {cap:3d} ({time.time() - t0:.0f}s): fixed T={cap} test {fixed:.1f}; chosen {c['setting']} "
              f"sel {c['accuracy']:.1f}@{c['mean_steps']:.1f} test {pt[i]['accuracy']:.1f}@{pt[i]['mean_steps']:.1f} "
              f"(p90 {pt[i]['p90']:.0f})  within={c['within_drop']}")
        print("   test curve:", [(p["setting"], round(p["accuracy"], 1), round(p["mean_steps"], 1)) for p in pt])
    best = exits.choose(all_sel, ann_sel, 1.0)
    cap, thr = best["cap"], best["setting"]
    chk = replay(test, "learned", thr, 1, cap, per_cap[cap][0])
    acc = 100 * float((chk.pred == test["y"]).double().mean())
    mean = float(chk.steps.double().mean())
    assert abs(acc - best["test"]["accuracy"]) < 1e-9 and abs(mean - best["test"]["mean_steps"]) < 1e-9, (acc, mean)
    print(f"joint choice: cap {cap} threshold {thr}: sel {best['accuracy']:.1f}@{best['mean_steps']:.1f}, "
          f"test {acc:.1f}@{mean:.2f} (replay agrees)")


if __name__ == "__main__":
    main(sys.argv[1:])
