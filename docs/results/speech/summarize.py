"""Gather the synthetic-speech runs of run.sh into summary.json and summary.md: accuracy with
95% Wilson intervals at the report steps, and McNemar tests of MSAT and MSAT+SC against
max-norm IF (const), and of MSAT+SC against MSAT, on the same clips (``msat.harness.reproduce.paired_tests``,
Holm-adjusted over the methods and steps compared with one reference).

    python docs/results/speech/summarize.py <ROOT>/eval/m5
"""

import json
import sys
from pathlib import Path

from msat.analysis.stats import wilson_interval
from msat.harness.checkpoint import safe_load
from msat.harness.reproduce import paired_tests

OUT = Path(__file__).resolve().parent


def main(runs: Path) -> None:
    found = {}
    for d in sorted(p for p in runs.iterdir() if (p / "results.json").exists()):
        res = json.loads((d / "results.json").read_text())
        label = "msat_sc" if res["method"] == "msat" and res.get("sc") else res["method"]
        found[label] = (res, safe_load(d / "predictions.pt", "predictions file"))
    T = len(found["const"][0]["acc"])
    steps = [t for t in (8, 16, 32, 64, 128, 256, 512, 1024, 2048) if t <= T]  # the curve has every step
    summary = {"dataset": "synthetic_words (espeak-ng; SYNTHETIC, not Speech Commands)", "curves": {}, "paired": {}}
    lines = ["| method | n | ANN | " + " | ".join(f"T={t}" for t in steps) + " |", "|---|---|---|" + "---|" * len(steps)]
    for label, (res, _) in found.items():
        n = res["n_samples"]
        ci = {str(t): wilson_interval(round(res["acc"][t - 1] * n / 100), n) for t in steps}
        summary["curves"][label] = {"acc": res["acc"], "n_images": n, "ci95": ci, "ann_acc": res["ann_acc"],
                                    "commit_recorded": res["commit"], "command": res["command"],
                                    "firing_rate_mean": res["firing_rate_mean"], "energy": res["energy"],
                                    "sin": res.get("sin")}
        lines.append(f"| {label} | {n} | {res['ann_acc']:.2f} | " + " | ".join(
            f"{res['acc'][t - 1]:.2f} [{ci[str(t)][0]:.1f}, {ci[str(t)][1]:.1f}]" for t in steps) + " |")
    # at the steps whose per-clip predictions were saved; Holm over each reference's table
    runs = {lab: {"res": res, "steps": list(pred["steps"]), "correct": pred["correct"]} for lab, (res, pred) in found.items()}
    n = found["const"][0]["n_samples"]
    by_ref = {"const": paired_tests(runs, n, "const"), "msat": paired_tests(runs, n, "msat")}
    tests = {f"{lab} vs {ref}": per for ref, lab in (("const", "msat"), ("const", "msat_sc"), ("msat", "msat_sc"))
             for per in [by_ref[ref].get(lab)] if per}
    saved = list(found["const"][1]["steps"])
    summary["paired"] = tests
    lines += ["", "Paired tests on the same clips (McNemar exact, Holm over the steps and methods of each reference): "
              "difference in points (adjusted p)", "",
              "| comparison | " + " | ".join(f"T={t}" for t in saved) + " |", "|---|" + "---|" * len(saved)]
    for lab, per in tests.items():
        lines.append(f"| {lab} | " + " | ".join(f"{per[str(t)]['diff']:+.2f} (p={per[str(t)]['p_holm']:.2g})"
                                                 for t in saved) + " |")
    (OUT / "summary.json").write_text(json.dumps(summary, indent=1))
    (OUT / "summary.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main(Path(sys.argv[1]))
