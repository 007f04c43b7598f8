"""W&B run context (offline by default, never required) and the project's plots."""

from __future__ import annotations

import functools
import os
import subprocess
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Mapping, Optional, Sequence

from . import REPO
from .plots import plot_bars, plot_curves, plot_exits

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
    offline = mode == "offline"
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
        # offline, W&B's own closing summary (sparklines of every metric) would bury the run's
        # table: one line below says where the run is and how to upload it
        settings=wandb.Settings(silent=True) if offline else None,
    )
    try:
        yield Tracker(run)
    except BaseException:
        run.finish(exit_code=1)  # marked failed; the next multirun job starts clean
        raise
    finally:
        wandb.finish()
        if offline:
            where = run.settings.sync_dir
            print(f"W&B run saved offline in {where}; upload it with: wandb sync {where}", flush=True)


@functools.cache
def git_commit() -> str:
    """The commit of the code this process runs: read once, at the first call (the task
    modules call it when they start), so that a long multirun whose checkout moves on while
    it runs records the code it loaded, not the later HEAD."""
    try:
        root = REPO
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










# ----------------------------------------------------------------------- what the stages log
def log_evaluation(tr: Tracker, res: Mapping[str, Any], out: Path, label: str, title: str, plots: bool = True) -> dict:
    """Curves (per time step), tables, summary and plots of one evaluation (``results.json``
    contents); returns the PNG paths."""
    import torch

    pngs = {}
    if plots:
        bands = None
        if "acc_std" in res:
            a, s = torch.tensor(res["acc"]), torch.tensor(res["acc_std"])
            bands = {label: ((a - s).tolist(), (a + s).tolist())}
        pngs["accuracy"] = plot_curves(out / "accuracy.png", {label: res["acc"]}, f"{title}: SNN accuracy",
                                       hline=res["ann_acc"], bands=bands)
        if "firing_rate" in res:
            pngs["firing_rate"] = plot_bars(out / "firing_rate.png", [f"{i}" for i in range(len(res["firing_rate"]))],
                                            res["firing_rate"], f"firing rate per layer (mean {res['firing_rate_mean']:.4f})",
                                            "spikes / neuron / step")
        if "threshold_traces" in res:
            tr_ = res["threshold_traces"]
            pngs["threshold"] = plot_curves(out / "threshold.png", {f"{i}": t["mean"] for i, t in enumerate(tr_)},
                                        "threshold theta_t * lam per layer (mean, 10-90% band)", ylabel="threshold",
                                        bands={f"{i}": (t["p10"], t["p90"]) for i, t in enumerate(tr_)}, logx=True)
        if "sin" in res:
            pngs["sin"] = plot_curves(out / "sin_ratio_eval.png", {f"{i}": r for i, r in enumerate(res["sin"]["ratio"])},
                                      "SIN ratio per layer over the test set", ylabel="neurons with SIN / neurons")
    tr.define_step_metric("timestep", "curve/*")
    std = res.get("acc_std")
    for t, a in enumerate(res["acc"]):
        row = {"timestep": t + 1, "curve/snn_acc": a, "curve/ann_acc": res["ann_acc"]}
        if std:
            row["curve/snn_acc_std"] = std[t]
        for i, th in enumerate(res.get("threshold_traces", [])):
            row[f"curve/threshold_mean_{i}"] = th["mean"][t]
        for i, r in enumerate(res.get("sin", {}).get("ratio", [])):
            row[f"curve/sin_ratio_{i}"] = r[t]
        tr.log(row)
    tr.table("accuracy_at_T", ["T", "snn_acc", "ann_acc"], [[int(t), a, res["ann_acc"]] for t, a in res["acc_at"].items()])
    if "firing_rate" in res:
        tr.table("layers", ["layer", "name", "firing_rate"],
                 [[i, n, r] for i, (n, r) in enumerate(zip(res["layers"], res["firing_rate"]))])
    tr.summary({"ann_acc": res["ann_acc"], "best_acc": res["best_acc"], "best_step": res["best_step"],
                "step_within_tol": res["step_within_tol"], "firing_rate_mean": res.get("firing_rate_mean"),
                "energy_ratio": res.get("energy", {}).get("energy_ratio"),
                **{f"acc_T{t}": a for t, a in res["acc_at"].items()}})
    if res.get("exit"):
        _log_exits(tr, res["exit"], out, label, title, plots, pngs)
    for k, p in pngs.items():
        tr.image(f"plot/{k}", p)
    return pngs


def _log_exits(tr: Tracker, ex: Mapping[str, Any], out: Path, label: str, title: str, plots: bool, pngs: dict) -> None:
    """Early exit: per rule its accuracy and exit steps (summary and a table), and the plot."""
    if plots:
        pngs["exit"] = plot_exits(out / "exit.png", {label: ex}, f"{title}: accuracy vs mean steps")
    cols = ["rule", "accuracy", "mean_steps", "median_steps", "p90_steps", "fixed_T", "fixed_acc", "p_vs_fixed"]
    rows = [[rule, r["accuracy"], r["mean_steps"], r["median_steps"], r["p90_steps"], r["vs_fixed"]["T"],
             r["vs_fixed"]["fixed_acc"], r["vs_fixed"]["p"]] for rule, r in ex["rules"].items()]
    tr.table("exit", cols, rows)
    tr.summary({f"exit/{rule}/{k}": r[k] for rule, r in ex["rules"].items() for k in ("accuracy", "mean_steps")}
               | {"exit/oracle/mean_steps": ex["oracle"]["mean_steps"]})


def log_conversion(tr: Tracker, names: Sequence[str], lam: Sequence[Any], sin: Optional[Mapping[str, Any]],
                   out: Path, path: Path, title: str, artifact_name: str) -> None:
    """lam table, SIN curves (paper Fig. 2 style PNG) and the artifact itself."""
    tr.table("lam", ["layer", "name", "lam_max", "lam_mean"],
             [[i, n, float(v.max()), float(v.float().mean())] for i, (n, v) in enumerate(zip(names, lam))])
    if sin is not None:
        ratio = sin["ratio"]
        png = plot_curves(out / "sin_ratio.png", {f"{i}: {n}": r for i, (n, r) in enumerate(zip(names, ratio))},
                          f"SIN ratio per layer ({title})", ylabel="neurons with SIN / neurons")
        tr.image("convert/sin_ratio", png)
        tr.define_step_metric("timestep", "sin/*")
        for t in range(len(ratio[0])):
            tr.log({"timestep": t + 1, **{f"sin/ratio_{i}": r[t] for i, r in enumerate(ratio)}})
        p_all = sin.get("p_all_layers") or [None] * len(ratio)
        tr.table("sin_layers", ["layer", "name", "ratio_at_T", "ratio_among_fired_at_T", "ans", "p"],
                 [[i, n, ratio[i][-1], sin["ratio_among_fired"][i][-1], sin["ans"][i], p_all[i]]
                  for i, n in enumerate(names)])
    tr.artifact(artifact_name, "conversion", path)


