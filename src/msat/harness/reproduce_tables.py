"""The tables and figures of ``python -m msat.reproduce``: accuracy with 95% intervals, the
paired tests against MSAT, the paper's Tables 3 or 4, 7 and 8 laid out with our numbers
(the rows of the net that was converted), and Figs. 2, 5, 6 and 7."""

from __future__ import annotations

from pathlib import Path

from .evaluation import REPORT_STEPS
from .plots import plot_bars, plot_curves

FIG5 = ("const", "const_0.5", "const_0.2", "dtt", "det", "msat")
PAPER_TABLE4 = {  # paper Table 4, VGG16 / CIFAR-10 (ANN 95.45 / 95.72 / 92.37)
    "MSAT": {"16": 73.42, "32": 93.87, "64": 95.20, "128": 95.44, "256": 95.50},
    "Calibration": {"32": 93.71, "64": 95.14, "128": 95.65, "256": 95.79},
    "DTIF": {"16": 71.10, "32": 86.37, "64": 90.61, "128": 91.56, "256": 91.89},
}


# paper Table 3 (MSAT, CIFAR-10): ANN, SNN, Step; Table 7 (CIFAR-10): ANS and accuracy at T=32 without / with SC
PAPER_TABLE3 = {"vgg16": (95.45, 95.45, 112), "resnet20": (96.37, 96.36, 174)}
PAPER_TABLE7 = {"vgg16": {"msat": (2.92, 93.48), "msat_sc": (2.343, 93.85)},
                "resnet20": {"msat": (1.972, 93.30), "msat_sc": (1.558, 94.02)}}
NET_NAMES = {"vgg16": "VGG16", "resnet20": "ResNet-20", "resnet34": "ResNet-34"}


def net_title(model: str, width: float | None = None) -> str:
    """E.g. ``VGG16 (width 0.25) / CIFAR-10``: the converted net, for titles."""
    name = NET_NAMES.get(model, str(model))
    return f"{name}{'' if width in (None, 1.0) else f' (width {width:g})'} / CIFAR-10"


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
    model = summary.get("ann", {}).get("model")
    if model == "vgg16":
        lines += _table4(summary, found)
    if model in PAPER_TABLE3 and "msat" in found:
        ann_p, snn_p, step_p = PAPER_TABLE3[model]
        res, ann = found["msat"]["res"], summary["ann"]["ann_acc_full"]
        # the run's own Step is against the ANN on its subset; this one is against the full test set
        step = next((str(t + 1) for t, a in enumerate(res["acc"]) if a >= ann - 0.1), f">{len(res['acc'])}")
        lines += ["", f"## Table 3 layout (MSAT, {NET_NAMES[model]} / CIFAR-10): paper beside ours", "",
                  "ANN on all test images; SNN: the best accuracy within T and its step; Step: the first step within "
                  "0.1 points of the ANN (ours: of the ANN on all test images, so a subset's noise can keep it out "
                  "of reach).", "", "| | ANN | SNN (best) | loss | Step |", "|---|---|---|---|---|",
                  f"| paper | {ann_p:.2f} | {snn_p:.2f} | {ann_p - snn_p:.2f} | {step_p} |",
                  f"| ours | {ann:.2f} | {res['best_acc']:.2f} (t={res['best_step']}) | {ann - res['best_acc']:.2f} | "
                  f"{step} |"]
    sin_rows = [(lab, found[lab]["res"]) for lab in ("msat", "msat_sc", "const") if lab in found and "sin" in found[lab]["res"]]
    if sin_rows:
        paper7 = PAPER_TABLE7.get(model, {})
        lines += ["", "## Table 7 layout: ANS (last spiking layer) and accuracy at T=32, with and without SC", "",
                  "| method | ANS | acc T=32 | paper ANS | paper acc T=32 |", "|---|---|---|---|---|"]
        for lab, res in sin_rows:
            a32 = res["acc"][31] if len(res["acc"]) >= 32 else float("nan")
            p = paper7.get(lab)
            paper = f"{p[0]} | {p[1]:.2f}" if p else "- | -"
            lines.append(f"| {lab} | {res['sin']['ans_last']:.4f} | {a32:.2f} | {paper} |")
    energy = [(lab, r["res"]["energy"]) for lab, r in found.items() if "energy" in r["res"]]
    if energy:
        lines += ["", "## Table 8 layout: energy ratio SNN / ANN at T (on CIFAR-10; the paper's is CIFAR-100)", "",
                  "| method | energy ratio | firing rate (mean over layers) |", "|---|---|---|"]
        for lab, e in energy:
            lines.append(f"| {lab} | {e['energy_ratio']:.4f} | {found[lab]['res'].get('firing_rate_mean', float('nan')):.4f} |")
    return "\n".join(lines) + "\n"


def _table4(summary: dict, found: dict) -> list[str]:
    lines = ["", "## Table 4 layout (VGG16 / CIFAR-10): paper beside ours", "",
             "| row | ANN | " + " | ".join(f"T={t}" for t in REPORT_STEPS) + " |", "|---|---|" + "---|" * len(REPORT_STEPS)]
    paper_ann = {"MSAT": 95.45, "Calibration": 95.72, "DTIF": 92.37}
    for name, accs in PAPER_TABLE4.items():
        lines.append(f"| paper: {name} | {paper_ann[name]:.2f} | {_row(accs, REPORT_STEPS)} |")
    for lab, name in (("msat_sc", "ours: MSAT (+SC)"), ("msat", "ours: MSAT"), ("calibration_light", "ours: Calibration (light)"),
                      ("calibration_advanced", "ours: Calibration (advanced)"), ("ltb", "ours: LTB"),
                      ("qcfs", "ours: QCFS net (its own ANN)")):
        if lab in summary["curves"]:
            acc = summary["curves"][lab]["acc"]
            vals = {str(t): acc[t - 1] for t in REPORT_STEPS if t <= len(acc)}
            ann = found[lab]["res"]["ann_acc"] if lab == "qcfs" else summary["ann"]["ann_acc_full"]  # QCFS: its ANN, subset
            lines.append(f"| {name} | {ann:.2f} | {_row(vals, REPORT_STEPS)} |")
    return lines


def figures(out: Path, summary: dict, found: dict) -> list[Path]:
    ann, paths = summary["ann"]["ann_acc_full"], []
    net = net_title(summary["ann"]["model"], summary["ann"]["width"])
    curves = summary["curves"]
    fig5 = {lab: curves[lab]["acc"] for lab in FIG5 if lab in curves}
    if fig5:
        paths.append(plot_curves(out / "fig5_thresholds.png", fig5, f"Fig. 5: threshold rules ({net})",
                                 hline=ann, logx=True))
    fig6 = {lab: curves[lab]["acc"] for lab in ("msat", "msat_sc") if lab in curves}
    if fig6:
        paths.append(plot_curves(out / "fig6_spike_confidence.png", fig6,
                                 f"Fig. 6: MSAT with and without SC ({net})", hline=ann, logx=True))
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
