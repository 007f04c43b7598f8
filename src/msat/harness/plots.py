"""The project's plots (matplotlib, Agg backend)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence


# ----------------------------------------------------------------------- plots
def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(plt, fig, path: str | os.PathLike) -> Path:
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path


def plot_curves(
    path: str | os.PathLike,
    curves: Mapping[str, Sequence[float]],
    title: str,
    ylabel: str = "accuracy (%)",
    hline: Optional[float] = None,
    hline_label: str = "ANN",
    bands: Optional[Mapping[str, tuple[Sequence[float], Sequence[float]]]] = None,
    logx: bool = False,
) -> Path:
    """Lines against time step t (1-based); optional dotted reference line and bands."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6.4, 4.2), dpi=110)
    colors = plt.cm.viridis([i / max(1, len(curves) - 1) for i in range(len(curves))]) if len(curves) > 10 else [None] * len(curves)
    for (label, ys), color in zip(curves.items(), colors):
        ts = range(1, len(ys) + 1)
        marker = "o" if len(ys) <= 16 else None  # short curves (and single points) stay visible
        (line,) = ax.plot(ts, ys, label=label, lw=1.4, color=color, marker=marker, ms=3.5)
        if bands and label in bands:
            lo, hi = bands[label]
            ax.fill_between(ts, lo, hi, color=line.get_color(), alpha=0.2, lw=0)
    if hline is not None:
        ax.axhline(hline, ls=":", color="k", lw=1.2, label=hline_label)
    if logx:
        ax.set_xscale("log", base=2)
    ax.set_xlabel("time step t")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, ncol=2 if len(curves) > 6 else 1)
    return _save(plt, fig, path)


def plot_bars(path: str | os.PathLike, labels: Sequence[str], values: Sequence[float], title: str, ylabel: str) -> Path:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(max(6.0, 0.35 * len(labels)), 4.0), dpi=110)
    ax.bar(range(len(values)), values, color="tab:blue")
    ax.set_xticks(range(len(labels)))
    ax.set_xticklabels(labels, rotation=60, ha="right", fontsize=7)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(axis="y", alpha=0.3)
    return _save(plt, fig, path)


def plot_error_maps(out: Path, diag: Mapping[str, Any], title: str) -> dict[str, Path]:
    """The layer-error split (msat.layer_errors): a layer x t heatmap per error (log colour
    scale) and per-layer curves."""
    import math

    from matplotlib.colors import LogNorm

    plt = _plt()
    keys = ("rel_l2", "qc", "sin")
    fig, axes = plt.subplots(1, 3, figsize=(13, 4.2), dpi=110, sharey=True)
    vals = [v for k in keys for c in diag[k] for v in c if v > 0 and math.isfinite(v)]
    norm = LogNorm(vmin=max(min(vals), 1e-4), vmax=max(vals)) if vals else None
    for ax, k in zip(axes, keys):
        im = ax.imshow([[max(v, 1e-4) for v in c] for c in diag[k]], aspect="auto", origin="lower", norm=norm,
                       cmap="magma", extent=(0.5, len(diag[k][0]) + 0.5, -0.5, len(diag[k]) - 0.5),
                       interpolation="nearest")
        ax.set_xscale("log", base=2)
        ax.set_title(k)
        ax.set_xlabel("time step t")
    axes[0].set_ylabel("spiking layer")
    fig.colorbar(im, ax=list(axes), shrink=0.9)
    fig.suptitle(f"{title}: error split per layer and step (||.|| / ||a||)")
    heat = Path(out) / "layer_errors.png"
    heat.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(heat)
    plt.close(fig)
    curves = plot_curves(Path(out) / "layer_errors_rel_l2.png", {f"{i}: {n}": c for i, (n, c) in
                                                                  enumerate(zip(diag["names"], diag["rel_l2"]))},
                         f"{title}: rel_l2 per layer", ylabel="||r_t - a|| / ||a||", logx=True)
    return {"layer_errors": heat, "layer_errors_rel_l2": curves}


RULE_STYLE = {"confidence": ("o", "-"), "margin": ("s", "--"), "schedule": ("^", "-."), "learned": ("D", ":")}


def plot_exits(path: str | os.PathLike, runs: Mapping[str, Mapping[str, Any]], title: str) -> Path:
    """Accuracy against mean steps: per run (colour) its fixed-T curve (thin, grey-ish), every exit
    rule's curve on the test images (marker and line style per rule), the chosen operating point
    (filled, large) and the oracle (star); the ANN dotted."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7.2, 4.8), dpi=110)
    colors = plt.cm.tab10.colors
    ann = None
    for k, (label, ex) in enumerate(runs.items()):
        c = colors[k % len(colors)]
        fixed = ex["fixed_curve"]
        ax.plot(range(1, len(fixed) + 1), fixed, color=c, lw=1.0, alpha=0.45, label=f"{label}: fixed T")
        for rule, r in ex["rules"].items():
            marker, ls = RULE_STYLE.get(rule, ("x", "-"))
            pts = sorted((p["mean_steps"], p["accuracy"]) for p in r["curve"])
            ax.plot([p[0] for p in pts], [p[1] for p in pts], ls=ls, marker=marker, ms=3, color=c, lw=1.2,
                    label=f"{label}: {rule}")
            ax.plot([r["mean_steps"]], [r["accuracy"]], marker=marker, ms=9, color=c, mec="k")
        o = ex["oracle"]
        ax.plot([o["mean_steps"]], [o["accuracy"]], marker="*", ms=13, color=c, mec="k", ls="none")
        ann = ex.get("ann_acc", ann)
    if ann is not None:
        ax.axhline(ann, ls=":", color="k", lw=1.2, label="ANN")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("mean steps per image (fixed T: the steps)")
    ax.set_ylabel("accuracy (%)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    lo = min(min(ex["fixed_curve"][len(ex["fixed_curve"]) // 8:] or [0]) for ex in runs.values())
    ax.set_ylim(bottom=max(0.0, lo - 5))
    ax.legend(fontsize=6.5, ncol=2, loc="lower right")
    return _save(plt, fig, path)
