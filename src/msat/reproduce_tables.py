"""The tables and figures of ``python -m msat.reproduce``: accuracy with 95% intervals, the
paired tests against MSAT, the paper's Tables 4, 7 and 8 laid out with our numbers, and
Figs. 2, 5, 6 and 7."""

from __future__ import annotations

from pathlib import Path

from .tracking import plot_bars, plot_curves

STEPS = (16, 32, 64, 128, 256)
FIG5 = ("const", "const_0.5", "const_0.2", "dtt", "det", "msat")
PAPER_TABLE4 = {  # paper Table 4, VGG16 / CIFAR-10 (ANN 95.45 / 95.72 / 92.37)
    "MSAT": {"16": 73.42, "32": 93.87, "64": 95.20, "128": 95.44, "256": 95.50},
    "Calibration": {"32": 93.71, "64": 95.14, "128": 95.65, "256": 95.79},
    "DTIF": {"16": 71.10, "32": 86.37, "64": 90.61, "128": 91.56, "256": 91.89},
}


def _row(values: dict, steps) -> str:
    return " | ".join("-" if values.get(str(t)) is None else f"{values[str(t)]:.2f}" for t in steps)


def tables(summary: dict, found: dict, tests: dict, steps, refs: dict | None = None) -> str:
    """The markdown tables: accuracy with 95% CIs, the paired tests against each reference
    (``tests`` maps a reference label to its tests, ``refs`` says why it is one), Table 4,
    Table 7, Table 8."""
    n = {lab: c["n_images"] for lab, c in summary["curves"].items()}
    lines = [f"ANN: {summary['ann']['ann_acc_full']:.2f}% on all test images.", "",
             "## Accuracy (%) after t steps, with 95% Wilson intervals", "",
             "| method | n | " + " | ".join(f"T={t}" for t in steps) + " |", "|---|---|" + "---|" * len(steps)]
    for lab, c in summary["curves"].items():
        cells = [f"{c['acc'][t - 1]:.2f} [{c['ci95'][str(t)][0]:.1f}, {c['ci95'][str(t)][1]:.1f}]"
                 if str(t) in c["ci95"] else "-" for t in steps]
        lines.append(f"| {lab} | {n[lab]} | " + " | ".join(cells) + " |")
    for ref, per_ref in tests.items():
        if not per_ref:
            continue
        why = f": {refs[ref]}" if refs and ref in refs else ""
        lines += ["", f"## Paired tests against `{ref}`{why}", "",
                  f"McNemar exact; p adjusted by Holm over every method and step of this table. Cells: accuracy of "
                  f"the method minus `{ref}`'s, in points, on the images both saw (the smaller subset where the two "
                  f"differ).", "",
                  "| method | " + " | ".join(f"T={t}" for t in steps) + " |", "|---|" + "---|" * len(steps)]
        for lab, per in per_ref.items():
            cells = [f"{per[str(t)]['diff']:+.2f} (p={per[str(t)]['p_holm']:.2g})" if str(t) in per else "-"
                     for t in steps]
            lines.append(f"| {lab} | " + " | ".join(cells) + " |")
    lines += ["", "## Table 4 layout (VGG16 / CIFAR-10): paper beside ours", "",
              "| row | ANN | " + " | ".join(f"T={t}" for t in STEPS) + " |", "|---|---|" + "---|" * len(STEPS)]
    paper_ann = {"MSAT": 95.45, "Calibration": 95.72, "DTIF": 92.37}
    for name, accs in PAPER_TABLE4.items():
        lines.append(f"| paper: {name} | {paper_ann[name]:.2f} | {_row(accs, STEPS)} |")
    for lab, name in (("msat_sc", "ours: MSAT (+SC)"), ("msat", "ours: MSAT"), ("calibration_light", "ours: Calibration (light)"),
                      ("calibration_advanced", "ours: Calibration (advanced)"), ("ltb", "ours: LTB"),
                      ("qcfs", "ours: QCFS net (its own ANN)")):
        if lab in summary["curves"]:
            acc = summary["curves"][lab]["acc"]
            vals = {str(t): acc[t - 1] for t in STEPS if t <= len(acc)}
            ann = found[lab]["res"]["ann_acc"] if lab == "qcfs" else summary["ann"]["ann_acc_full"]  # QCFS: its ANN, subset
            lines.append(f"| {name} | {ann:.2f} | {_row(vals, STEPS)} |")
    sin_rows = [(lab, found[lab]["res"]) for lab in ("msat", "msat_sc", "const") if lab in found and "sin" in found[lab]["res"]]
    if sin_rows:
        lines += ["", "## Table 7 layout: ANS (last spiking layer) and accuracy at T=32, with and without SC", "",
                  "| method | ANS | acc T=32 |", "|---|---|---|"]
        for lab, res in sin_rows:
            a32 = res["acc"][31] if len(res["acc"]) >= 32 else float("nan")
            lines.append(f"| {lab} | {res['sin']['ans_last']:.4f} | {a32:.2f} |")
    energy = [(lab, r["res"]["energy"]) for lab, r in found.items() if "energy" in r["res"]]
    if energy:
        lines += ["", "## Table 8 layout: energy ratio SNN / ANN at T (on CIFAR-10; the paper's is CIFAR-100)", "",
                  "| method | energy ratio | firing rate (mean over layers) |", "|---|---|---|"]
        for lab, e in energy:
            lines.append(f"| {lab} | {e['energy_ratio']:.4f} | {found[lab]['res'].get('firing_rate_mean', float('nan')):.4f} |")
    return "\n".join(lines) + "\n"


def figures(out: Path, summary: dict, found: dict) -> list[Path]:
    ann, paths = summary["ann"]["ann_acc_full"], []
    curves = summary["curves"]
    fig5 = {lab: curves[lab]["acc"] for lab in FIG5 if lab in curves}
    if fig5:
        paths.append(plot_curves(out / "fig5_thresholds.png", fig5, "Fig. 5: threshold rules (VGG16 / CIFAR-10)",
                                 hline=ann, logx=True))
    fig6 = {lab: curves[lab]["acc"] for lab in ("msat", "msat_sc") if lab in curves}
    if fig6:
        paths.append(plot_curves(out / "fig6_spike_confidence.png", fig6, "Fig. 6: MSAT with and without SC",
                                 hline=ann, logx=True))
    others = {lab: c["acc"] for lab, c in curves.items() if lab not in FIG5 and lab != "msat_sc"}
    if others:
        paths.append(plot_curves(out / "levers_and_baselines.png", {"msat": curves.get("msat", {}).get("acc", []), **others},
                                 "other methods beside MSAT", hline=ann, logx=True))
    if "msat" in found and "sin" in found["msat"]["res"]:
        ratio = found["msat"]["res"]["sin"]["ratio"]
        paths.append(plot_curves(out / "fig2_sin_ratio.png", {f"layer {i + 1}": r for i, r in enumerate(ratio)},
                                 "Fig. 2: SIN ratio per layer (MSAT, test images)", ylabel="SIN ratio", logx=True))
    if "msat" in found and "firing_rate" in found["msat"]["res"]:
        res = found["msat"]["res"]
        paths.append(plot_bars(out / "fig7_firing_rate.png", [f"{i + 1}" for i in range(len(res["firing_rate"]))],
                               res["firing_rate"], "Fig. 7: firing rate per layer (MSAT)", "spikes / neuron / step"))
    return paths
