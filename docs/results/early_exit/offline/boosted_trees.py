"""Gradient-boosted trees in place of the learned rule's logistic model, on the same features and data:

    OMP_NUM_THREADS=2 python docs/results/early_exit/offline/boosted_trees.py outputs/ee_h/traces_h4000.pt

(the traces that prob_schedule.py records). Fitted on held-out images 0-1,999 (target ``settled``),
the threshold chosen on images 2,000-3,999 for a drop of at most 1 point from the ANN there; printed
with the test curve.
"""
import sys
import time
from pathlib import Path

import torch
from sklearn.ensemble import HistGradientBoostingClassifier

from msat.analysis.exits import PROBABILITY_GRID, settled
from msat.spiking.early_exit import Progress

sys.path.insert(0, str(Path(__file__).resolve().parent))
from prob_schedule import T_MAX, cut, report  # noqa: E402


def features(trace: dict) -> torch.Tensor:
    """``[T, n, F]``: the learned rule's features at every step."""
    progress, rows = Progress(trace["readout_start"]), []
    for t in range(1, T_MAX + 1):
        progress.observe(trace["S"][t - 1], t, trace["rates"][t - 1])
        rows.append(progress.features(rates=True))
    return torch.stack(rows)


def main() -> int:
    torch.set_num_threads(2)
    tr = torch.load(sys.argv[1], weights_only=True)
    held, test = tr["held"], tr["test"]
    fit, select = cut(held, slice(0, 2000)), cut(held, slice(2000, 4000))
    F = {name: features(t) for name, t in (("fit", fit), ("select", select), ("test", test))}
    X = F["fit"].reshape(-1, F["fit"].shape[-1]).numpy()
    Y = settled(fit, T_MAX).double().reshape(-1).numpy()
    model = HistGradientBoostingClassifier(max_iter=200, learning_rate=0.1, random_state=0)
    t0 = time.time()
    model.fit(X, Y)
    print(f"fitted on {len(Y)} rows in {time.time() - t0:.1f} s")
    P = {k: torch.from_numpy(model.predict_proba(v.reshape(-1, v.shape[-1]).numpy())[:, 1]).reshape(v.shape[:2])
         for k, v in F.items() if k != "fit"}
    grid = list(PROBABILITY_GRID) + [0.997, 0.999]
    report("boosted trees", select, P["select"], [(g, [g] * T_MAX) for g in grid], test, P["test"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
