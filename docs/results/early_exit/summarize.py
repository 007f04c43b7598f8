"""Early-exit runs (evaluate.py eval.exit.rule=all) in one table per set of runs.

    python docs/results/early_exit/summarize.py RUN_DIR [RUN_DIR ...] --out docs/results/early_exit/summary

Writes ``<out>.md`` (a row per method and rule: accuracy with its 95% Wilson interval, the exit
steps' mean / median / 90th percentile, the setting chosen on held-out training images and what it
gave there, the fixed run at the step nearest the mean with McNemar's test, the fewest fixed steps
that match the rule's accuracy and the ratio of steps, the oracle's mean steps) and ``<out>.json``.
Every number is read from the runs' results.json.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from msat.analysis.exits import fixed_steps_for
from msat.analysis.stats import wilson_interval


def rows_of(run: Path) -> tuple[dict, list[dict]]:
    res = json.loads((run / "results.json").read_text())
    ex = res["exit"]
    head = {"run": run.name, "method": res["method"], "n": ex["n"], "ann_acc": ex["ann_acc"], "T_max": ex["T_max"],
            "fixed_at_T_max": ex["fixed_curve"][-1], "oracle": {k: ex["oracle"][k] for k in ("accuracy", "mean_steps",
                                                                                                "median_steps")},
            "ann_minus_1_fixed_steps": fixed_steps_for(ex["fixed_curve"], ex["ann_acc"] - ex["max_drop"]),
            "commit": res.get("commit"), "hardware": res.get("hardware"), "command": res.get("command")}
    rows = []
    for rule, r in ex["rules"].items():
        k = round(r["accuracy"] * r["n"] / 100)
        lo, hi = wilson_interval(k, r["n"])
        match = fixed_steps_for(ex["fixed_curve"], r["accuracy"])
        rows.append({"run": run.name, "rule": rule, "accuracy": r["accuracy"], "ci": [lo, hi],
                     "mean_steps": r["mean_steps"], "median_steps": r["median_steps"], "p90_steps": r["p90_steps"],
                     "setting": r["setting"], "heldout": r["chosen_on"], "vs_fixed": r["vs_fixed"],
                     "fixed_steps_same_acc": match,
                     "steps_ratio": (match / r["mean_steps"]) if match else None,
                     "thread_seconds": r["thread_seconds"], "fixed_thread_seconds": ex["fixed_thread_seconds"],
                     "decisions_differ_from_fixed_run": r["decisions_differ_from_fixed_run"]})
    return head, rows


def fmt(v, nd=1):
    return "-" if v is None else f"{v:.{nd}f}"


def markdown(heads: list[dict], rows: list[dict]) -> str:
    out = ["| run | ANN | fixed T to ANN-1 | oracle (acc @ mean steps) |", "|---|---|---|---|"]
    for h in heads:
        out.append(f"| `{h['run']}` ({h['method']}) | {h['ann_acc']:.1f} (n={h['n']}) | "
                   f"{h['ann_minus_1_fixed_steps'] or 'not within T_max=' + str(h['T_max'])} | "
                   f"{h['oracle']['accuracy']:.1f} @ {h['oracle']['mean_steps']:.1f} (median "
                   f"{h['oracle']['median_steps']:.0f}) |")
    out += ["", "| run | rule | accuracy [95% CI] | mean / median / p90 steps | setting | held out: acc @ mean "
            "(ANN) | fixed T nearest the mean: acc, McNemar p | fixed steps for the same acc | steps saved |",
            "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        h, v = r["heldout"], r["vs_fixed"]
        setting = r["setting"] if not isinstance(r["setting"], float) else f"{r['setting']:.4g}"
        out.append(f"| `{r['run']}` | {r['rule']} | {r['accuracy']:.1f} [{r['ci'][0]:.1f}, {r['ci'][1]:.1f}] | "
                   f"{r['mean_steps']:.1f} / {r['median_steps']:.0f} / {r['p90_steps']:.0f} | {setting} | "
                   f"{h['accuracy']:.1f} @ {h['mean_steps']:.1f} ({h['ann_acc']:.1f}, n={h['n']}) | "
                   f"T={v['T']}: {v['fixed_acc']:.1f}, p={v['p']:.3g} | {r['fixed_steps_same_acc'] or '> T_max'} | "
                   f"{fmt(r['steps_ratio'], 2) + 'x' if r['steps_ratio'] else '-'} |")
    return "\n".join(out) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("runs", nargs="+", type=Path)
    ap.add_argument("--out", type=Path, required=True, help="path stem: writes <out>.md and <out>.json")
    args = ap.parse_args(argv)
    heads, rows = [], []
    for run in args.runs:
        h, r = rows_of(run)
        heads.append(h)
        rows += r
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".md").write_text(markdown(heads, rows))
    args.out.with_suffix(".json").write_text(json.dumps({"runs": heads, "rows": rows}, indent=1))
    print(markdown(heads, rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
