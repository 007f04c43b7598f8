"""An early-exit run's chosen rule confirmed on test images it was not chosen on:
python confirm.py RUN_DIR OUT.json [RUN_DIR OUT.json ...]

For each finished `evaluate.py eval.exit.rule=learned` run folder of the CIFAR-10 JPEG tree (run with
eval.max_samples=1000 eval.subset_seed=0): the CIFAR-10 test images *outside* that run's 1,000 (the
other 9,000) run the run's SNN once to its T_max (`exit_eval.record`, batches of 200, one thread),
and the rule the run chose (its predictor and threshold, read back from results.json) is replayed
on them (`msat.spiking.early_exit.replay`, the adaptive run's decisions). Written: the rule's
accuracy with its Wilson interval and the exit-step distribution, the ANN on the same images, the
fixed-T curve, the fewest fixed steps that reach the rule's accuracy, McNemar's test against the
ANN and against the fixed run at the step nearest the mean; with two runs, McNemar's test of one
rule against the other on the same images."""
import json
import sys
import time
from pathlib import Path

import torch

from msat.analysis import exits
from msat.analysis.stats import mcnemar, wilson_interval
from msat.harness.artifacts import restore_run
from msat.harness.data import subset
from msat.harness.exit_eval import record
from msat.harness.reproduce import cifar10_splits
from msat.spiking.early_exit import ExitPredictor, make_exit_rule, replay

DATA = Path(__file__).resolve().parents[5] / "shared/datasets/cifar10-jpeg"


def complement(ds, n: int, seed: int):
    """The images of ``ds`` outside the run's test subset (``subset(ds, n, seed)``)."""
    used = set(subset(ds, n, seed).indices)
    return torch.utils.data.Subset(ds, [i for i in range(len(ds)) if i not in used])


def confirm(folder: Path, splits) -> dict:
    res, ann, snn = restore_run(folder)
    ex = res["exit"]
    learned = ex["rules"]["learned"]
    rule = make_exit_rule("learned", learned["threshold"], ExitPredictor.from_dict(learned["predictor"]))
    images = complement(splits.test, int(res["n_samples"]), int(res.get("subset_seed", 0)))
    T, d = int(ex["T_max"]), int(res["readout_start"])
    t0 = time.time()
    tr = record(snn, ann, images, T, d, 200, torch.device("cpu"), torch.float32)
    seconds = time.time() - t0
    y = tr["y"]
    out = replay(tr, rule, min_steps=int(ex["min_steps"]), T_max=T)
    st = exits.stats(out, y)
    right = out.pred == y
    curve = (100.0 * (tr["S"][:T].argmax(-1) == y).double().mean(1)).tolist()
    t_near = min(max(int(round(st["mean_steps"])), 1), T)
    return {"run": folder.name, "n": len(y), "recorded_seconds": seconds,
            "rule": {"threshold": learned["threshold"], **{k: st[k] for k in ("accuracy", "mean_steps", "median_steps",
                                                                             "p90_steps")},
                     "wilson95": list(wilson_interval(float(right.sum()), len(y)))},
            "ann_acc": 100.0 * float(tr["ann_right"].double().mean()),
            "vs_ann": mcnemar(right, tr["ann_right"]),
            "fixed_curve": curve, "fixed_steps_for_same_acc": exits.fixed_steps_for(curve, st["accuracy"]),
            "vs_fixed": {"T": t_near, "fixed_acc": curve[t_near - 1], **mcnemar(right, exits.fixed(tr, y, t_near))},
            "oracle": exits.stats(exits.oracle(tr, y, 1, T), y), "_right": right}


def main(argv):
    torch.set_num_threads(1)
    splits = cifar10_splits(DATA)
    done = []
    for folder, out in zip(argv[::2], argv[1::2]):
        r = confirm(Path(folder), splits)
        done.append(r)
        rec = {k: v for k, v in r.items() if not k.startswith("_")}
        rec["oracle"].pop("histogram")
        Path(out).write_text(json.dumps(rec, indent=1))
        ru = r["rule"]
        print(f"{r['run']}: n={r['n']} ANN {r['ann_acc']:.2f}; learned ({ru['threshold']}) {ru['accuracy']:.2f} "
              f"[{ru['wilson95'][0]:.1f}, {ru['wilson95'][1]:.1f}] at mean {ru['mean_steps']:.2f} (median "
              f"{ru['median_steps']:.0f}, p90 {ru['p90_steps']:.0f}); vs ANN {r['vs_ann']['diff']:+.2f} p={r['vs_ann']['p']:.3g}; "
              f"fixed T={r['vs_fixed']['T']} {r['vs_fixed']['fixed_acc']:.2f} p={r['vs_fixed']['p']:.3g}; fixed steps for "
              f"the same acc {r['fixed_steps_for_same_acc']}; oracle {r['oracle']['accuracy']:.2f}@"
              f"{r['oracle']['mean_steps']:.2f}; recorded in {r['recorded_seconds']:.0f}s", flush=True)
    if len(done) == 2:
        a, b = done
        m = mcnemar(a["_right"], b["_right"])
        print(f"{a['run']} against {b['run']} on the same {a['n']} images: {m['diff']:+.2f} points, "
              f"{m['a_only']} / {m['b_only']} discordant, p={m['p']:.3g}")


if __name__ == "__main__":
    main(sys.argv[1:])
