"""Each directly trained net at its trained T against the ANN twin on the same 2,000 images
(McNemar's exact test, Holm-adjusted over the six), from the evaluations' predictions.pt; and
MT-SNN Fig. 3's plot (accuracy at the trained T, ST and MT, the twin dotted) as fig3.png here.

    python docs/results/mt_snn_cifar10/vs_twin.py outputs/mt_cifar10/eval
"""

import sys
from pathlib import Path

from msat.analysis.stats import holm, mcnemar
from msat.harness.artifacts import load_predictions
from msat.harness.report import find_results

runs = {(r["method"], r["trained_T"]): load_predictions(r)["correct"]
        for r in find_results(sys.argv[1] if len(sys.argv) > 1 else "outputs/mt_cifar10/eval")}
twin = runs.pop(("ann-snn", 1))[:, 0]
rows = [(k, mcnemar(c[:, -1], twin)) for k, c in sorted(runs.items())]
print("net, trained T    acc at T   twin   net only  twin only   p (Holm)")
for (k, m), p in zip(rows, holm([m["p"] for _, m in rows])):
    print(f"{k[0]:>7} T={k[1]}        {100 * float(runs[k][:, -1].double().mean()):6.2f}  "
          f"{100 * float(twin.double().mean()):6.2f}  {m['a_only']:8d}  {m['b_only']:9d}   {p:.3g}")

import matplotlib  # noqa: E402

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

fig, ax = plt.subplots(figsize=(5.2, 3.6), dpi=110)
for name, tag in (("st-snn", "ST (single threshold)"), ("mt-snn", "MT, deltas [-0.5, 0.5]")):
    ts = sorted(t for m, t in runs if m == name)
    ax.plot(ts, [100 * float(runs[(name, t)][:, -1].double().mean()) for t in ts], marker="o", label=tag)
ax.axhline(100 * float(twin.double().mean()), ls=":", color="k", label="ANN twin")
ax.set_xticks(sorted({t for _, t in runs}))
ax.set_xlabel("trained and evaluated T")
ax.set_ylabel("accuracy (%), 2,000 test images")
ax.set_title("narrow MT-VGG-9, CIFAR-10, one epoch on 20k images")
ax.grid(alpha=0.3)
ax.legend(fontsize=8)
fig.tight_layout()
fig.savefig(Path(__file__).with_name("fig3.png"))
