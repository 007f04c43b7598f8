"""Gather ``results.json`` files into markdown tables beside the paper's numbers.

    python -m msat.report outputs/            # report.md + overlaid accuracy plots
    python -m msat.report outputs/demo/eval --curves   # accuracy-vs-t side by side

Each row carries our number, the paper's number, the difference, the command, the
commit and the hardware of the run that produced it. Every accuracy at a report step comes
with its sample size and a 95% Wilson interval; runs that saved their per-image results
(``predictions.pt``; ``eval.save_predictions``, on by default) on the same images are compared with McNemar's exact test
against a reference run (``--ref``, default ``msat``), Holm-adjusted over all comparisons.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any, Iterable, Optional, Sequence

from ..analysis.errors import first_layer_over
from ..analysis.stats import holm, mcnemar, verdict, wilson_interval
from ..conversion.corrections import CORRECTIONS
from .artifacts import load_predictions
from .evaluation import REPORT_STEPS


class ReportError(ValueError):
    pass


def find_results(root: str | Path) -> list[dict]:
    root = Path(root)
    if not root.exists():
        raise ReportError(f"{root} does not exist")
    out = []
    for path in sorted(root.rglob("results.json")):
        try:
            res = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            print(f"warning: skipping unreadable {path}: {exc}", file=sys.stderr)
            continue
        if isinstance(res, dict) and "acc" in res:
            res["_path"] = str(path)
            out.append(res)
    if not out:
        raise ReportError(f"no results.json under {root}: run evaluate.py first")
    return out


def label(res: dict) -> str:
    """The method name, plus what sets this run apart from the method's defaults: spike confidence,
    a burst cap, a balancing other than max-norm, a weight correction (and its target T where it is
    not the correction's default) and delayed readout (so that two runs of one method with other
    levers get two labels)."""
    method = str(res.get("method"))
    extras = []
    if _sc_on(res) and "sc" not in method:
        extras.append("+SC")
    if (res.get("max_spikes") or 1) > 1 and "burst" not in method:
        extras.append(f"burst {res['max_spikes']}")
    balancing = res.get("balancing")
    if balancing and balancing != "max" and balancing not in method:
        extras.append(str(balancing))
    correction = res.get("correction")
    if correction and correction != "none":
        text = f"{correction} correction" if correction not in method else ""
        target, default = res.get("correction_T"), getattr(CORRECTIONS.get(correction), "default_T", None)
        if target and target != default:  # aimed at another T than the correction's own default
            text = f"{text or 'correction'} for T={target}"
        if text:
            extras.append(text)
    if res.get("readout_start"):
        extras.append(f"readout from {res['readout_start'] + 1}")
    if res.get("quirk_no_reset"):
        extras.append("quirk")
    if res.get("trained_T"):
        extras.append(f"trained T={res['trained_T']}")
    name = method + "".join(f" {e}" if e.startswith("+") else f", {e}" for e in extras)
    return name + (f" ({res['experiment']})" if res.get("experiment") else "")


def _sc_on(res: dict) -> bool:
    return bool(res.get("sc"))


def comparisons(res: dict) -> list[tuple[str, Optional[float], Any]]:
    """(metric, ours, paper) for every number in the run's ``paper:`` block."""
    paper = res.get("paper") or {}
    acc = res["acc"]
    T = len(acc)
    rows: list[tuple[str, Optional[float], Any]] = []

    def at(t: int) -> Optional[float]:
        return acc[t - 1] if 1 <= t <= T else None

    if "ann" in paper:
        rows.append(("ANN acc", res["ann_acc"], paper["ann"]))
    if "snn" in paper:
        rows.append((f"SNN best acc (t<={T})", res["best_acc"], paper["snn"]))
    if "loss" in paper:
        rows.append(("loss (ANN - SNN best)", res["ann_acc"] - res["best_acc"], paper["loss"]))
    if "step" in paper:
        rows.append((f"Step (first t within {res.get('tol', 0.1)} of ANN)", res.get("step_within_tol"), paper["step"]))
        rows.append((f"SNN acc at the paper's Step t={paper['step']}", at(int(paper["step"])), paper.get("snn")))
    if "best" in paper:
        rows.append(("best acc", res["best_acc"], paper["best"]))
    for t, v in (paper.get("acc_at") or {}).items():
        rows.append((f"acc T={t}", at(int(t)), v))
    sin = res.get("sin") or {}
    suffix = "with_sc" if _sc_on(res) else "without_sc"
    if f"ans_{suffix}" in paper:
        rows.append((f"ANS last layer ({suffix.replace('_', ' ')})", sin.get("ans_last"), paper[f"ans_{suffix}"]))
    if f"acc32_{suffix}" in paper:
        rows.append((f"acc T=32 ({suffix.replace('_', ' ')})", at(32), paper[f"acc32_{suffix}"]))
    if "sin_ratio_last_layer" in paper and not _sc_on(res):
        rows.append(("SIN ratio last layer (t=T)", sin.get("ratio_last_at_T"), paper["sin_ratio_last_layer"]))
    rates = res.get("firing_rate")
    if "firing_rate_mean" in paper:
        rows.append(("mean firing rate", res.get("firing_rate_mean"), paper["firing_rate_mean"]))
    if "firing_rate_min" in paper and rates:
        rows.append(("min layer firing rate", min(rates), paper["firing_rate_min"]))
    if "firing_rate_max" in paper and rates:
        rows.append(("max layer firing rate", max(rates), paper["firing_rate_max"]))
    energy = res.get("energy") or {}
    if "energy_ratio" in paper:
        rows.append(("energy SNN/ANN", energy.get("energy_ratio"), paper["energy_ratio"]))
    for key, ours in (("op_ann_first_M", "op_ann_first"), ("op_ann_rest_M", "op_ann_rest"), ("op_snn_rest_M", "op_snn_rest")):
        if key in paper:
            v = energy.get(ours)
            rows.append((key.replace("_M", " (M)"), v / 1e6 if v is not None else None, paper[key]))
    return rows


def _fmt(v: Any, digits: int = 2) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        if abs(v) < 0.1 and v != 0:
            return f"{v:.4f}"
        return f"{v:.{digits}f}"
    return str(v)


def _diff(ours: Any, paper: Any) -> str:
    """ours - paper, with the precision of the paper's number (accuracies: 2 decimals)."""
    if isinstance(ours, (int, float)) and isinstance(paper, (int, float)):
        d = float(ours) - float(paper)
        return f"{d:.4f}" if abs(paper) < 0.1 else f"{d:.2f}"
    return "-"


def _short_hw(hw: str) -> str:
    return (hw or "?").split(", torch")[0]


def format_curve_table(results: dict[str, dict], steps) -> str:
    """A text table: one row per method, accuracy at the report steps, best and Step."""
    head = f"{'method':<12}{'ANN':>8}" + "".join(f"{'T=' + str(t):>9}" for t in steps) + f"{'best':>9}{'@t':>6}{'Step':>6}"
    lines = [head, "-" * len(head)]
    for name, r in results.items():
        ann = f"{r['ann_acc']:>8.2f}" if r.get("ann_acc") is not None else f"{'-':>8}"
        row = f"{name:<12}{ann}" + "".join(f"{r['acc'][t - 1]:>9.2f}" for t in steps if t <= r["T"])
        step = r.get("step_within_tol")
        row += f"{r['best_acc']:>9.2f}{r['best_step']:>6}{(step if step is not None else '-'):>6}"
        lines.append(row)
    return "\n".join(lines)


def markdown_report(results: list[dict], ref: str = "msat", pairs: Optional[Sequence[tuple[str, str]]] = None) -> str:
    groups: dict[str, list[dict]] = defaultdict(list)
    for r in results:
        p = r.get("paper") or {}
        groups[p.get("table") or p.get("figure") or "other runs"].append(r)
    lines = ["# Reproduction report", "",
             f"{len(results)} runs. Accuracy in %. Each row: our number, the paper's, the difference "
             "(ours - paper), and the run that produced it.", ""]
    for name in sorted(groups):
        lines += [f"## {name}", "",
                  "| run | dataset / model | metric | ours | paper | diff | command | commit | hardware |",
                  "|---|---|---|---|---|---|---|---|---|"]
        for r in sorted(groups[name], key=lambda r: (r.get("experiment") or "", r.get("method") or "")):
            where = f"{r.get('dataset')} / {r.get('model')} w{r.get('width')}"
            rows = comparisons(r) or [("SNN best acc", r["best_acc"], None)]
            for metric, ours, paper in rows:
                lines.append(
                    f"| {label(r)} | {where} | {metric} | {_fmt(ours)} | {_fmt(paper)} | {_diff(ours, paper)} | "
                    f"`{r.get('command', '?')}` | {str(r.get('commit', '?'))[:12]} | {_short_hw(r.get('hardware', '?'))} |"
                )
        lines.append("")
    lines += ["## Accuracy at the paper's time steps", "", curve_table(results, markdown=True), "",
              "95% Wilson intervals (n: the images evaluated):", "", interval_table(results, markdown=True), ""]
    tested = paired_comparisons(results, ref, pairs)
    if tested:
        lines += ["## Paired tests on the same images", "", paired_note(ref, pairs), "",
                  paired_table(tested, markdown=True), ""]
    exits = exit_table(results, markdown=True)
    if exits:
        lines += ["## Early exit", "", EXIT_NOTE, "", exits, ""]
    errors = error_table(results)
    if errors:
        lines += ["## Where the SNN departs from the ANN (layer errors, paper Eq. 5)", "",
                  "Runs with `eval.diagnostics=true`. `rel_l2 = ||r_t - a|| / ||a||` of the last spiking layer, split "
                  "into `qc` (activated neurons) and `sin` (inactivated neurons), `rel_l2^2 = qc^2 + sin^2`; "
                  f"\"first layer > {ERROR_LIMIT}\": the first spiking layer (0-based, graph order) whose `rel_l2` "
                  "exceeds it at that step.", "", errors, ""]
    return "\n".join(lines)


ERROR_LIMIT = 0.5  # "first layer whose rel_l2 exceeds this" in the layer-error table
ERROR_STEPS = (32, 256)


def error_table(results: Iterable[dict], steps: Iterable[int] = ERROR_STEPS, limit: float = ERROR_LIMIT) -> str:
    """A markdown table comparing runs by their layer errors (``results.json["diagnostics"]``)
    at ``steps``: the last layer's rel_l2 / qc / sin and the first layer whose rel_l2 exceeds
    ``limit``. Empty when no run has diagnostics."""
    rows = [r for r in results if r.get("diagnostics")]
    if not rows:
        return ""
    T = max(len(r["diagnostics"]["rel_l2"][0]) for r in rows)
    cps = [t for t in steps if t <= T] or [T]
    head = ["run", "dataset / model"]
    for t in cps:
        head += [f"rel_l2 last T={t}", f"qc last T={t}", f"sin last T={t}", f"first layer > {limit} T={t}"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        d = r["diagnostics"]
        row = [label(r), f"{r.get('dataset')} / {r.get('model')}"]
        for t in cps:
            if t > len(d["rel_l2"][0]):
                row += ["-"] * 4
                continue
            first = first_layer_over(d, "rel_l2", t, limit)
            row += [f"{d[k][-1][t - 1]:.4f}" for k in ("rel_l2", "qc", "sin")]
            row.append("none" if first is None else f"{first} ({d['names'][first]})")
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def _report_steps(results: list[dict], steps: Iterable[int]) -> list[int]:
    """The report steps up to the longest run; runs shorter than the first report step (directly
    trained SNNs, T = 1..5) get a column at their T."""
    T = max(len(r["acc"]) for r in results)
    steps = list(steps)
    short = {len(r["acc"]) for r in results if len(r["acc"]) < min(steps)}
    return sorted({t for t in steps if t <= T} | short)


def _table(head: list[str], body: list[list[str]], markdown: bool) -> str:
    if markdown:
        return "\n".join(["| " + " | ".join(head) + " |", "|" + "---|" * len(head)] + ["| " + " | ".join(b) + " |" for b in body])
    widths = [max(len(str(x)) for x in col) for col in zip(head, *body)]
    fmt = lambda row: "  ".join(str(c).rjust(w) if i > 1 else str(c).ljust(w) for i, (c, w) in enumerate(zip(row, widths)))  # noqa: E731
    return "\n".join([fmt(head), "-" * (sum(widths) + 2 * len(widths))] + [fmt(b) for b in body])


def curve_table(results: Iterable[dict], steps: Iterable[int] = REPORT_STEPS, markdown: bool = False) -> str:
    results = list(results)
    cps = _report_steps(results, steps)
    head = ["run", "dataset / model", "ANN"] + [f"T={t}" for t in cps] + ["best", "@t", "Step", "n"]
    body = []
    for r in results:
        acc = r["acc"]
        row = [label(r), f"{r.get('dataset')} / {r.get('model')}", _fmt(r["ann_acc"])]
        row += [_fmt(acc[t - 1]) if t <= len(acc) else "-" for t in cps]
        row += [_fmt(r["best_acc"]), str(r["best_step"]), str(r.get("step_within_tol") or "-"), str(r.get("n_samples", "-"))]
        body.append(row)
    return _table(head, body, markdown)


def interval(res: dict, t: int) -> Optional[tuple[float, float]]:
    """The 95% Wilson interval of ``res``'s accuracy after t steps (None without a sample size)."""
    n = res.get("n_samples")
    if not n or t > len(res["acc"]):
        return None
    k = min(max(res["acc"][t - 1] * n / 100.0, 0.0), float(n))
    whole = round(k)  # the count of correct images, up to the rounding of acc; a mean over SC seeds need not be whole
    return wilson_interval(whole if abs(k - whole) < 1e-6 else k, n)


def interval_table(results: Iterable[dict], steps: Iterable[int] = REPORT_STEPS, markdown: bool = False) -> str:
    """95% Wilson intervals of every run's accuracy at the report steps, with the sample size."""
    results = list(results)
    cps = _report_steps(results, steps)
    body = []
    for r in results:
        cells = [interval(r, t) for t in cps]
        body.append([label(r), str(r.get("n_samples", "-"))] + ["-" if c is None else f"{c[0]:.1f}-{c[1]:.1f}" for c in cells])
    return _table(["run", "n"] + [f"T={t}" for t in cps], body, markdown)






def _images(res: dict) -> tuple:
    """What identifies the evaluated images: the dataset, the subset's size and its seed."""
    return res.get("dataset"), res.get("n_samples"), res.get("subset_seed", 0)


def _named(run: dict, name: str) -> bool:
    return name in (run.get("method"), label(run))


def paired_comparisons(results: Iterable[dict], ref: str = "msat",
                       pairs: Optional[Sequence[tuple[str, str]]] = None) -> list[dict]:
    """McNemar's exact test of every run with saved predictions against the reference run on
    the same images (the run whose method, or label, is ``ref``; without one, the first), at
    every step both saved, Holm-adjusted over all of them. ``pairs`` of (A, B) names (a method
    or a label) test those pairs instead, wherever both ran on the same images."""
    by_images: dict[tuple, list[tuple[dict, dict]]] = defaultdict(list)
    for r in results:
        pred = load_predictions(r)
        if pred is not None:
            by_images[_images(r)].append((r, pred))
    tests = []  # (run A, its predictions, run B, its predictions)
    for runs in by_images.values():
        if pairs:
            for a_name, b_name in pairs:
                a = next(((r, p) for r, p in runs if _named(r, a_name)), None)
                b = next(((r, p) for r, p in runs if _named(r, b_name)), None)
                if a is not None and b is not None and a[0] is not b[0]:
                    tests.append((*a, *b))
        elif len(runs) >= 2:
            base, bpred = next(((r, p) for r, p in runs if _named(r, ref)), runs[0])
            tests += [(r, pred, base, bpred) for r, pred in runs if r is not base]
    for a_name, b_name in pairs or ():
        if not any(_named(ra, a_name) and _named(rb, b_name) for ra, _, rb, _ in tests):
            raise ReportError(f"--pair {a_name!r} {b_name!r}: no two such runs with saved predictions on the same "
                              f"images (names are a method or a label, as the tables print them)")
    rows = []
    for r, pred, base, bpred in tests:
        for j, t in enumerate(pred["steps"]):
            if t in bpred["steps"]:
                a, b = pred["correct"][:, j], bpred["correct"][:, bpred["steps"].index(t)]
                # the accuracies of the predictions tested (with several SC seeds: the first seed's)
                rows.append({"a": label(r), "b": label(base), "t": t, "acc_a": 100.0 * a.float().mean().item(),
                             "acc_b": 100.0 * b.float().mean().item(), **mcnemar(a, b)})
    for row, p_adj in zip(rows, holm([row["p"] for row in rows])):
        row["p_holm"] = p_adj
        row["verdict"] = verdict({**row, "p": p_adj}, row["a"], row["b"])
    return rows


EXIT_NOTE = ("Each image stops at the first step its rule lets it (eval.exit). The operating point was chosen on "
             "training images held out from calibration (the fewest mean steps within max_drop points of the ANN "
             "there); accuracy, its 95% Wilson interval and the exit steps are on the test images. \"fixed\": the fixed "
             "run at the step nearest the mean, McNemar's exact test against it (A: early exit). \"oracle\": every "
             "image stops at the first step from which it stays right.")


def exit_table(results: Iterable[dict], markdown: bool = False) -> str:
    """One row per run and exit rule (runs with ``exit`` in their results); empty without any."""
    head = ["run", "rule", "n", "acc", "95% CI", "mean steps", "median", "p90", "setting", "fixed T", "fixed acc",
            "A only", "B only", "p", "oracle steps"]
    body = []
    for r in results:
        ex = r.get("exit")
        for rule, x in (ex or {}).get("rules", {}).items():
            lo, hi = wilson_interval(round(x["accuracy"] * x["n"] / 100.0), x["n"])
            setting = x["setting"] if isinstance(x["setting"], (int, float)) else "-"
            vs = x["vs_fixed"]
            body.append([label(r), rule, str(x["n"]), _fmt(x["accuracy"]), f"{lo:.1f}-{hi:.1f}", f"{x['mean_steps']:.1f}",
                         f"{x['median_steps']:.0f}", f"{x['p90_steps']:.0f}", _fmt(setting, 4), str(vs["T"]),
                         _fmt(vs["fixed_acc"]), str(vs["a_only"]), str(vs["b_only"]), f"{vs['p']:.3g}",
                         f"{ex['oracle']['mean_steps']:.1f}"])
    return _table(head, body, markdown) if body else ""


def paired_table(rows: list[dict], markdown: bool = False) -> str:
    head = ["run A", "run B", "T", "acc A", "acc B", "A only", "B only", "p", "p (Holm)", "reading (Holm)"]
    body = [[r["a"], r["b"], str(r["t"]), _fmt(r["acc_a"]), _fmt(r["acc_b"]), str(r["a_only"]), str(r["b_only"]),
             f"{r['p']:.3g}", f"{r['p_holm']:.3g}", r["verdict"]] for r in rows]
    return _table(head, body, markdown)


def paired_note(ref: str, pairs: Optional[Sequence[tuple[str, str]]] = None) -> str:
    which = ("Runs A and B are the pairs asked for. " if pairs else
             f"Run B is the reference: the run whose method or label is {ref!r}, else the first run on those images. ")
    return ("McNemar's exact test on the same images. " + which + "\"A only\" counts the images A gets right and B wrong; "
            "p-values Holm-adjusted over every comparison listed.")


def overlay_plots(results: list[dict], out_dir: Path) -> list[Path]:
    """One PNG per experiment group (the first tag, e.g. fig5): every run's curve, ANN dotted."""
    from .plots import plot_curves, plot_exits

    groups: dict[str, list[dict]] = defaultdict(list)
    for r in results:
        tag = (r.get("tags") or [r.get("experiment") or "runs"])[0]
        groups[f"{tag}_{r.get('dataset')}_{r.get('model')}"].append(r)
    paths = []
    for name, rs in sorted(groups.items()):
        curves = {label(r): r["acc"] for r in rs}
        ann = next((r["ann_acc"] for r in rs if r.get("ann_acc") is not None), None)
        paths.append(plot_curves(out_dir / f"{name}.png", curves, f"{name}: accuracy vs time step", hline=ann))
        with_exit = {label(r): r["exit"] for r in rs if r.get("exit")}
        if with_exit:
            paths.append(plot_exits(out_dir / f"{name}_exit.png", with_exit, f"{name}: accuracy vs mean steps"))
    return paths


def main(argv: Optional[list[str]] = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m msat.report", description=__doc__.split("\n\n")[0])
    ap.add_argument("root", nargs="?", default="outputs", help="folder searched for results.json files")
    ap.add_argument("--out", default=None, help="markdown file (default: ROOT/report.md)")
    ap.add_argument("--curves", action="store_true", help="print the accuracy-vs-t table only")
    ap.add_argument("--no-plots", action="store_true")
    ap.add_argument("--ref", default="msat", help="the run the paired tests compare against (a method or a label)")
    ap.add_argument("--pair", nargs=2, action="append", metavar=("A", "B"), default=None,
                    help="test run A against run B (a method or a label) instead of every run against --ref; repeatable")
    args = ap.parse_args(argv)
    pairs = [tuple(p) for p in args.pair] if args.pair else None
    try:
        results = find_results(args.root)
        if args.curves:
            tested = paired_comparisons(results, args.ref, pairs)
        else:
            text = markdown_report(results, args.ref, pairs)
    except ReportError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.curves:
        print(curve_table(results))
        print("\n95% Wilson intervals:\n" + interval_table(results))
        if tested:
            print(f"\npaired tests. {paired_note(args.ref, pairs)}\n" + paired_table(tested))
        exits = exit_table(results)
        if exits:
            print(f"\nearly exit. {EXIT_NOTE}\n" + exits)
        return 0
    out = Path(args.out) if args.out else Path(args.root) / "report.md"
    out.parent.mkdir(parents=True, exist_ok=True)
    if not args.no_plots:
        pngs = overlay_plots(results, out.parent / "report_plots")
        text += "\n## Overlaid curves\n\n" + "\n".join(f"![{p.stem}]({p.relative_to(out.parent)})" for p in pngs) + "\n"
    out.write_text(text)
    print(f"wrote {out} ({len(results)} runs)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
