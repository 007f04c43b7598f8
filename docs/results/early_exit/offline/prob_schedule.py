"""Does a per-step threshold on the learned rule's probability beat one fixed threshold?

    OMP_NUM_THREADS=2 python docs/results/early_exit/offline/prob_schedule.py RUN_DIR TRACES.pt

Records (or reads back from TRACES.pt) the run's SNN on 4,000 training images held out from
calibration and on its 1,000 test images (T_max = 128), then, as evaluate.py does with
``eval.exit.holdout=4000``: the learned rule (logistic, target ``settled``, with firing rates)
fitted on the first 2,000 held-out images. Two ways to pick when its probability is high enough:
(a) one threshold for every step, chosen on held-out images 2,000-3,999 (what evaluate.py does);
(b) one threshold per step, the lowest whose newly exiting images are at least P right (fitted on
held-out images 2,000-2,999), P chosen on images 3,000-3,999. Both for a drop of at most 1 point
from the ANN on the choosing images; printed with their test accuracy and mean exit steps.
"""
import sys
from pathlib import Path

import torch

from msat.analysis.exits import PRECISION_GRID, PROBABILITY_GRID, choose, fit_predictor, stats
from msat.harness.artifacts import restore_run
from msat.harness.data import subset
from msat.harness.exit_eval import holdout_images, record
from msat.harness.reproduce import cifar10_splits
from msat.spiking.early_exit import ExitResult, Progress

T_MAX = 128


def traces(folder: Path, path: Path) -> dict:
    if path.exists():
        return torch.load(path, weights_only=True)
    res, ann, snn = restore_run(folder)
    splits = cifar10_splits(Path("../shared/datasets/cifar10-jpeg"))
    test = subset(splits.test, res["n_samples"], seed=res["subset_seed"])
    held = holdout_images(splits, 128, 0, 10, 4000)
    d = int(res["readout_start"])
    out = {"held": record(snn, ann, held, T_MAX, d, 200, torch.device("cpu"), torch.float32),
           "test": record(snn, ann, test, T_MAX, d, 200, torch.device("cpu"), torch.float32)}
    torch.save(out, path)
    return out


def cut(tr: dict, sl: slice) -> dict:
    return {"S": tr["S"][:, sl], "rates": tr["rates"][:, sl], "readout_start": tr["readout_start"],
            "y": tr["y"][sl], "ann_right": tr["ann_right"][sl]}


def probabilities(tr: dict, predictor) -> torch.Tensor:
    """[T, n]: the predictor's probability at every step (as the live run computes it)."""
    progress, out = Progress(tr["readout_start"]), []
    for t in range(1, T_MAX + 1):
        progress.observe(tr["S"][t - 1], t, tr["rates"][t - 1])
        out.append(predictor.probability(progress.features(rates=True)))
    return torch.stack(out)


def exit_at(tr: dict, P: torch.Tensor, thresholds) -> ExitResult:
    """Each image leaves at the first step whose probability reaches that step's threshold."""
    thr = torch.as_tensor(thresholds, dtype=P.dtype).reshape(-1, 1).expand_as(P)
    hit = P >= thr
    hit[-1] = True
    steps = hit.double().argmax(0) + 1
    pred = tr["S"][steps - 1, torch.arange(P.shape[1])].argmax(-1)
    return ExitResult(pred, steps)


def fit_steps(tr: dict, P: torch.Tensor, precision: float) -> list[float]:
    """Per step, the lowest threshold whose newly exiting images are at least ``precision`` right."""
    y, left, out = tr["y"], torch.ones(P.shape[1], dtype=torch.bool), []
    for t in range(T_MAX):
        p, right = P[t][left], (tr["S"][t].argmax(-1) == y)[left]
        if not bool(left.any()):
            out.append(2.0)
            continue
        order = p.argsort(descending=True)
        c, r = p[order], right[order].double()
        acc = r.cumsum(0) / torch.arange(1, len(r) + 1, dtype=r.dtype)
        last_of_tie = torch.ones_like(c, dtype=torch.bool)
        last_of_tie[:-1] = c[:-1] != c[1:]
        ok = (acc >= precision) & last_of_tie
        thr = float(c[ok.nonzero()[-1, 0]]) if bool(ok.any()) else 2.0
        out.append(thr)
        left[left.clone()] &= ~(P[t][left] >= thr)
    return out


def ann(tr: dict) -> float:
    return 100.0 * float(tr["ann_right"].double().mean())


def report(label: str, on: dict, P_on: torch.Tensor, settings, test: dict, P_test: torch.Tensor) -> None:
    """Each (setting, thresholds) on the choosing images ``on``; the one chosen for a 1-point drop
    from the ANN there, and every setting, with what it gives on the test images."""
    points = [{"setting": s, "threshold": thr, **stats(exit_at(on, P_on, thr), on["y"])} for s, thr in settings]
    chosen = choose(points, ann(on), 1.0)
    r = stats(exit_at(test, P_test, chosen["threshold"]), test["y"])
    print(f"{label}: chosen {chosen['setting']} (held out {chosen['accuracy']:.2f} @ {chosen['mean_steps']:.2f}); "
          f"test {r['accuracy']:.2f} @ {r['mean_steps']:.2f} (median {r['median_steps']:.0f}, p90 {r['p90_steps']:.0f})")
    for p in points:
        q = stats(exit_at(test, P_test, p["threshold"]), test["y"])
        print(f"   setting {p['setting']}: held out {p['accuracy']:.2f} @ {p['mean_steps']:.2f}, "
              f"test {q['accuracy']:.2f} @ {q['mean_steps']:.2f}")


def main() -> int:
    torch.set_num_threads(2)
    tr = traces(Path(sys.argv[1]), Path(sys.argv[2]))
    held, test = tr["held"], tr["test"]
    fit, select = cut(held, slice(0, 2000)), cut(held, slice(2000, 4000))
    sched_fit, sched_pick = cut(held, slice(2000, 3000)), cut(held, slice(3000, 4000))
    predictor = fit_predictor(fit, fit["y"], 1, T_MAX, target="settled", rates=True)
    P = {name: probabilities(t, predictor) for name, t in
         (("select", select), ("sched_fit", sched_fit), ("sched_pick", sched_pick), ("test", test))}
    print(f"ANN: select {ann(select):.2f}, pick {ann(sched_pick):.2f}, test {ann(test):.2f}")

    report("(a) one threshold", select, P["select"], [(g, [g] * T_MAX) for g in PROBABILITY_GRID], test, P["test"])
    report("(b) per-step thresholds", sched_pick, P["sched_pick"],
           [(q, fit_steps(sched_fit, P["sched_fit"], q)) for q in PRECISION_GRID], test, P["test"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
