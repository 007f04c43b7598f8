"""W&B run context (offline by default, never required) and the project's plots."""

from __future__ import annotations

import os
import subprocess
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Mapping, Optional, Sequence

WANDB_MODES = ("online", "offline", "disabled")


class Tracker:
    """Thin wrapper over a wandb run; every method is a no-op when tracking is disabled."""

    def __init__(self, run=None):
        self.run = run

    @property
    def enabled(self) -> bool:
        return self.run is not None

    @property
    def run_id(self) -> Optional[str]:
        return None if self.run is None else self.run.id

    def log(self, metrics: Mapping[str, Any], step: Optional[int] = None) -> None:
        if self.run is not None:
            self.run.log(dict(metrics), step=step)

    def define_step_metric(self, step_metric: str, pattern: str) -> None:
        if self.run is not None:
            self.run.define_metric(step_metric)
            self.run.define_metric(pattern, step_metric=step_metric)

    def summary(self, values: Mapping[str, Any]) -> None:
        if self.run is not None:
            for k, v in values.items():
                self.run.summary[k] = v

    def table(self, key: str, columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
        if self.run is not None:
            import wandb

            self.run.log({key: wandb.Table(columns=list(columns), data=[list(r) for r in rows])})

    def image(self, key: str, path: str | os.PathLike) -> None:
        if self.run is not None:
            import wandb

            self.run.log({key: wandb.Image(str(path))})

    def artifact(self, name: str, kind: str, path: str | os.PathLike) -> None:
        if self.run is not None:
            import wandb

            art = wandb.Artifact(name, type=kind)
            art.add_file(str(path))
            self.run.log_artifact(art)


def resolve_mode(mode: Optional[str]) -> str:
    mode = (mode or os.environ.get("WANDB_MODE") or "offline").lower()
    if mode == "dryrun":
        mode = "offline"
    if mode not in WANDB_MODES:
        raise ValueError(f"wandb.mode must be one of {WANDB_MODES}, got {mode!r}")
    return mode


@contextmanager
def wandb_run(
    cfg: Mapping[str, Any],
    config: Mapping[str, Any],
    job_type: str,
    out_dir: str | os.PathLike,
    name: Optional[str] = None,
    run_id: Optional[str] = None,
    enabled: bool = True,
) -> Iterator[Tracker]:
    """A W&B run for one job; ``wandb.finish()`` always runs, so a crashed job in a
    multirun does not leak its run into the next one."""
    mode = resolve_mode(cfg.get("mode"))
    if not enabled or mode == "disabled":
        yield Tracker(None)
        return
    import wandb

    Path(out_dir).mkdir(parents=True, exist_ok=True)
    run = wandb.init(
        project=cfg.get("project", "msat"),
        entity=cfg.get("entity"),
        group=cfg.get("group"),
        tags=list(cfg.get("tags") or []),
        name=name,
        job_type=job_type,
        config=dict(config),
        mode=mode,
        dir=str(out_dir),
        id=run_id,
        resume="allow" if run_id else None,
        reinit="finish_previous",
    )
    try:
        yield Tracker(run)
    except BaseException:
        run.finish(exit_code=1)  # marked failed; the next multirun job starts clean
        raise
    finally:
        wandb.finish()


def git_commit() -> str:
    try:
        root = Path(__file__).resolve().parents[2]
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=5)
        commit = out.stdout.strip() or "unknown"
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True, timeout=5).stdout.strip()
        return commit + ("-dirty" if dirty and commit != "unknown" else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def hardware() -> str:
    import platform

    import torch

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    desc = f"{cpu}, {os.cpu_count()} cores, torch {torch.__version__}, {torch.get_num_threads()} threads"
    if torch.cuda.is_available():
        desc = f"{torch.cuda.get_device_name(0)} x{torch.cuda.device_count()}; " + desc
    return desc


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
        (line,) = ax.plot(ts, ys, label=label, lw=1.4, color=color)
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
