"""The three stages behind the entry scripts: ``run_train``, ``run_convert``, ``run_evaluate``.

This is the only module that reads the whole Hydra config; it hands plain arguments or
one sub-config to the library functions. Tests call these functions with a config from
``hydra.compose``.
"""

from __future__ import annotations

import json
import os
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence

import torch
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import MissingMandatoryValue

from . import config as _config  # noqa: F401  (registers the method schema)
from .checkpoint import CheckpointError, model_spec
from .distributed import cleanup, init_distributed, resolve_device
from .tracking import git_commit, hardware, wandb_run


# ------------------------------------------------------------------ helpers
def plain(cfg: Any) -> Any:
    """A resolved plain container; a missing mandatory value (``???``) is an error naming the key."""
    if isinstance(cfg, DictConfig):
        return OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True)
    return cfg


def output_dir(cfg: DictConfig) -> Path:
    try:
        out = Path(cfg.paths.output_dir)
    except Exception:  # composed without a Hydra run (tests): fall back to the root
        out = Path(cfg.paths.root) / "runs" / "compose"
    out.mkdir(parents=True, exist_ok=True)
    return out


def experiment_name(cfg: DictConfig) -> Optional[str]:
    try:
        from hydra.core.hydra_config import HydraConfig

        return HydraConfig.get().runtime.choices.get("experiment")
    except Exception:
        return cfg.get("experiment_name")


def resolved_config(cfg: DictConfig) -> dict:
    """The resolved config, without the hydra-runtime interpolations that fail outside a run."""
    c = OmegaConf.to_container(cfg, resolve=False)
    c.get("paths", {}).pop("output_dir", None)
    return OmegaConf.to_container(OmegaConf.create(c), resolve=True)


def ckpt_path(cfg: DictConfig, name: str) -> Path:
    p = Path(name)
    return p if p.is_absolute() or p.parent != Path(".") else Path(cfg.paths.ckpt_dir) / p


def the_model_spec(cfg: DictConfig) -> dict:
    return model_spec(cfg.model.name, cfg.dataset.num_classes, cfg.dataset.in_channels, cfg.model.width)


def check_splits(cfg: DictConfig, splits) -> None:
    if splits.num_classes != cfg.dataset.num_classes or splits.in_channels != cfg.dataset.in_channels:
        raise ValueError(
            f"dataset {cfg.dataset.name}: found {splits.num_classes} classes / {splits.in_channels} channels, "
            f"config says {cfg.dataset.num_classes} / {cfg.dataset.in_channels}"
        )


@contextmanager
def user_errors():
    """Turn input errors into one clear line and exit status 2 (tracebacks with MSAT_DEBUG=1).

    In a Hydra multirun the exception is re-raised instead, so that Hydra records the
    failed job and carries on with the next one."""
    from .training import TrainingInterrupted

    try:
        yield
    except TrainingInterrupted as exc:
        print(f"\n{exc}", file=sys.stderr)
        sys.exit(128 + int(exc.signum))
    except (ValueError, FileNotFoundError, NotADirectoryError, TypeError, MissingMandatoryValue) as exc:
        if os.environ.get("MSAT_DEBUG") or _in_multirun():
            raise
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)


def _in_multirun() -> bool:
    try:
        from hydra.core.hydra_config import HydraConfig
        from hydra.types import RunMode

        return HydraConfig.get().mode == RunMode.MULTIRUN
    except Exception:
        return False


# ------------------------------------------------------------------ stage 1
def run_train(cfg: DictConfig) -> dict:
    """Train the ANN described by ``cfg`` (train_ann.py)."""
    name = f"train-{cfg.dataset.name}-{cfg.model.name}-w{cfg.model.width}-s{cfg.seed}"
    return train_stage(cfg, the_model_spec(cfg), kind="ann", job="train", name=name, script="train_ann.py")


def train_stage(cfg: DictConfig, spec: dict, kind: str, job: str, name: str, script: str) -> dict:
    """Shared by train_ann.py and train_snn.py: data, W&B, fit(), and train_metrics.json."""
    from .data import build_splits
    from .training import fit

    info = init_distributed(cfg.device)
    try:
        device = resolve_device(cfg.device, info)
        splits = build_splits(cfg.dataset, seed=cfg.seed)
        check_splits(cfg, splits)
        out = output_dir(cfg)
        full = resolved_config(cfg)
        factory = lambda run_id: wandb_run(cfg.wandb, full, job, out, name, run_id, enabled=info.is_main)  # noqa: E731
        metrics = fit(model_spec=spec, splits=splits, train=plain(cfg.train), ckpt_dir=cfg.paths.ckpt_dir,
                      seed=int(cfg.seed), resume=bool(cfg.resume), device=device, info=info, tracker_factory=factory,
                      run_config=full, progress=bool(cfg.progress), num_workers=int(cfg.dataset.num_workers),
                      kind=kind)
        if info.is_main:
            summary = {k: v for k, v in metrics.items() if k != "history"}
            summary.update(model_spec=spec, commit=git_commit(), hardware=hardware(), command=job_command(script))
            (out / "train_metrics.json").write_text(json.dumps({**summary, "history": metrics["history"]}, indent=2))
        return metrics
    finally:
        cleanup(info)


# ------------------------------------------------------------------ shared by convert / evaluate
def job_command(script: str) -> str:
    try:
        from hydra.core.hydra_config import HydraConfig

        overrides = list(HydraConfig.get().overrides.task)
        return " ".join([f"python {script}"] + overrides)
    except Exception:
        return " ".join(["python", script] + sys.argv[1:])


def load_ann(cfg: DictConfig, device: torch.device):
    """(model, checkpoint sha256, checkpoint path) for the ANN described by ``cfg``."""
    from .checkpoint import file_sha256, load_ann_checkpoint
    from .models import create_model

    path = ckpt_path(cfg, cfg.calibration.checkpoint)
    spec = the_model_spec(cfg)
    if not path.exists() and cfg.model.get("pretrained", False):
        model = create_model(**spec, pretrained=True)
        return model.to(device).eval(), f"pretrained:timm/{cfg.model.name}", "pretrained"
    if not path.exists():
        raise CheckpointError(
            f"ANN checkpoint not found: {str(path)!r}. Train it first (python train_ann.py with the same "
            f"dataset/model/seed overrides) or point calibration.checkpoint at a file"
        )
    ckpt = load_ann_checkpoint(path, spec)
    model = create_model(**spec)
    model.load_state_dict(ckpt["model"])
    return model.to(device).eval(), file_sha256(path), str(path)


def calibration_loader(cfg: DictConfig, splits, skip_batches: int = 0):
    """A seeded random order of training images (test transforms): an image-folder tree is
    sorted by class, so its first batches would all be one class."""
    from .data import make_loader

    g = torch.Generator().manual_seed(int(cfg.seed))
    order = torch.randperm(len(splits.calibration), generator=g).tolist()
    bs = int(cfg.calibration.batch_size)
    order = order[skip_batches * bs :]
    return make_loader(torch.utils.data.Subset(splits.calibration, order), bs, int(cfg.dataset.num_workers))


def sim_chunk(chunk: Any, device: torch.device) -> int:
    """Steps per layer-major call. ``auto``: 1 on CPU, where a chunk of stacked steps
    outgrows the caches (benchmarks/simulate.py), 32 on GPU, where launches dominate."""
    if chunk == "auto":
        return 32 if device.type == "cuda" else 1
    if isinstance(chunk, bool) or int(chunk) != chunk or int(chunk) < 1:
        raise ValueError(f"sim.chunk must be a positive integer or 'auto', got {chunk!r}")
    return int(chunk)


def threshold_kwargs(method_cfg) -> dict:
    m = plain(method_cfg)
    hp = dict(m["hparams"])
    if m["threshold"] == "const":
        hp = {"frac": m["frac"]}
    return dict(method=m["threshold"], hparams=hp, v_init=float(m["v_init"]), max_spikes=int(m["max_spikes"]))


# ------------------------------------------------------------------ stage 2
def run_convert(cfg: DictConfig) -> dict:
    """Calibrate lam, measure SIN and spike confidence, save the conversion artifact (convert.py)."""
    info = init_distributed(cfg.device)
    try:
        name = f"convert-{cfg.dataset.name}-{cfg.model.name}-{cfg.method.name}"
        with wandb_run(cfg.wandb, resolved_config(cfg), "convert", output_dir(cfg), name, enabled=info.is_main) as tr:
            return convert_stage(cfg, tr, info)
    finally:
        cleanup(info)


def convert_stage(cfg: DictConfig, tr, info) -> dict:
    import time as _time

    from .checkpoint import FORMAT_VERSION, atomic_save
    from .conversion import build_snn, calibrate, prepare_ann
    from .data import build_splits
    from .sin import sin_statistics

    device = resolve_device(cfg.device, info)
    cal = cfg.calibration
    if not 0.0 < float(cal.percentile) <= 1.0:
        raise ValueError(f"calibration.percentile must lie in (0, 1], got {cal.percentile}")
    model, sha, ckpt_file = load_ann(cfg, device)
    splits = build_splits(cfg.dataset, seed=cfg.seed)
    check_splits(cfg, splits)
    ann = prepare_ann(model)
    t0 = _time.time()
    lam = calibrate(ann, calibration_loader(cfg, splits), float(cal.percentile), bool(cal.channelwise),
                    cal.num_batches, progress=bool(cfg.progress))
    artifact: dict[str, Any] = {
        "format_version": FORMAT_VERSION,
        "kind": "conversion",
        "ann_checkpoint": ckpt_file,
        "ann_sha256": sha,
        "model_spec": the_model_spec(cfg),
        "dataset": cfg.dataset.name,
        "layer_names": [s.name for s in ann.sites],
        "lam": lam,
        "calibration": plain(cal),
        "method": plain(cfg.method),
        "sin": None,
        "commit": git_commit(),
        "hardware": hardware(),
        "command": job_command("convert.py"),
    }
    summary: dict[str, Any] = {"layers": artifact["layer_names"],
                               "lam": [float(v.max()) for v in lam], "calibration_s": _time.time() - t0}
    if cfg.sin.enabled:
        snn = build_snn(ann, lam, **threshold_kwargs(cfg.method)).to(device)
        skip = int(cal.num_batches or 0)
        loader = calibration_loader(cfg, splits, skip_batches=skip)  # one batch beyond calibration
        batch = next(iter(loader), None)
        if batch is None:  # fewer images than calibration batches: reuse the first batch
            batch = next(iter(calibration_loader(cfg, splits)))
        x = batch[0][: int(cfg.sin.batch_size)].to(device)
        mons = sin_statistics(ann, snn, x, int(cfg.sin.T))
        artifact["sin"] = {
            "T": int(cfg.sin.T),
            "batch_size": int(x.shape[0]),
            "threshold": cfg.method.threshold,
            "sin_count": torch.stack([m.sin_count.cpu() for m in mons]),
            "fired_count": torch.stack([m.fired_count.cpu() for m in mons]),
            "neurons": torch.tensor([m.neurons for m in mons], dtype=torch.float64),
            "ans": torch.tensor([m.ans() for m in mons], dtype=torch.float64),
        }
        sc = resolve_sc(cfg.method.sc, artifact, None, required=False)
        summary["sin"] = sin_summary(artifact["sin"], sc)
    path = Path(cal.artifact)
    summary.update(artifact=str(path), ann_sha256=sha, commit=artifact["commit"], hardware=artifact["hardware"],
                   command=artifact["command"])
    if info.is_main:
        atomic_save(artifact, path)
        out = output_dir(cfg)
        (out / "conversion.json").write_text(json.dumps(summary, indent=2))
        log_conversion(tr, cfg, artifact, summary, out, path)
        print(f"saved conversion artifact {path} ({len(lam)} spiking layers)")
    return summary


def log_conversion(tr, cfg: DictConfig, artifact: Mapping[str, Any], summary: Mapping[str, Any], out: Path,
                   path: Path) -> None:
    """lam table, SIN curves (paper Fig. 2 style PNG) and the artifact itself."""
    from .tracking import plot_curves

    names = artifact["layer_names"]
    tr.table("lam", ["layer", "name", "lam_max", "lam_mean"],
             [[i, n, float(v.max()), float(v.float().mean())] for i, (n, v) in enumerate(zip(names, artifact["lam"]))])
    if artifact["sin"] is not None:
        ratio = summary["sin"]["ratio"]
        png = plot_curves(out / "sin_ratio.png", {f"{i}: {n}": r for i, (n, r) in enumerate(zip(names, ratio))},
                          f"SIN ratio per layer ({cfg.model.name}, {cfg.dataset.name}, {cfg.method.threshold})",
                          ylabel="neurons with SIN / neurons")
        tr.image("convert/sin_ratio", png)
        tr.define_step_metric("timestep", "sin/*")
        for t in range(len(ratio[0])):
            tr.log({"timestep": t + 1, **{f"sin/ratio_{i}": r[t] for i, r in enumerate(ratio)}})
        p_all = summary["sin"].get("p_all_layers") or [None] * len(ratio)
        tr.table("sin_layers", ["layer", "name", "ratio_at_T", "ratio_among_fired_at_T", "ans", "p"],
                 [[i, n, ratio[i][-1], summary["sin"]["ratio_among_fired"][i][-1], summary["sin"]["ans"][i], p_all[i]]
                  for i, n in enumerate(names)])
    tr.artifact(f"conversion-{cfg.dataset.name}-{cfg.model.name}", "conversion", path)


def sin_summary(sin: Mapping[str, Any], sc: Optional[dict]) -> dict:
    neurons = sin["neurons"].unsqueeze(1)
    ratio = (sin["sin_count"] / neurons).tolist()
    fired = sin["fired_count"]
    among = torch.where(fired > 0, sin["sin_count"] / fired.clamp(min=1), torch.zeros(())).tolist()
    out = {"T": sin["T"], "ratio": ratio, "ratio_among_fired": among, "ans": sin["ans"].tolist()}
    if sc is not None:
        out.update(early_steps=sc["early_steps"], p_all_layers=sc["p_all_layers"], r_definition=sc["r_definition"])
    return out


def resolve_sc(sc_cfg, artifact: Mapping[str, Any], T: Optional[int], required: bool = True) -> Optional[dict]:
    """Spike-confidence settings: E (or 'auto') and p per layer, from the config or from the
    artifact's SIN statistics (spec section 3). ``T``: the simulation length (E <= T)."""
    from .sin import auto_early_steps

    sc = plain(sc_cfg)
    if sc["reset"] not in ("fired", "emitted"):
        raise ValueError(f"method.sc.reset must be 'fired' or 'emitted', got {sc['reset']!r}")
    if sc["r_definition"] not in ("fired", "all"):
        raise ValueError(f"method.sc.r_definition must be 'fired' or 'all', got {sc['r_definition']!r}")
    sin = artifact.get("sin")
    L = len(artifact["layer_names"])
    layers = sc["layers"]
    idx = [L - 1] if layers == "last" else list(range(L)) if layers == "all" else [int(i) % L for i in layers]
    E = sc["early_steps"]
    if E == "auto":
        if sin is None:
            if not required:
                return None
            raise ValueError("method.sc.early_steps=auto needs SIN statistics: rerun convert.py with sin.enabled=true")
        ratio = sin["sin_count"][idx[-1]] / sin["neurons"][idx[-1]]
        E = auto_early_steps(ratio)
    if isinstance(E, bool) or int(E) != E or int(E) < 1:
        raise ValueError(f"method.sc.early_steps must be a positive integer or 'auto', got {E!r}")
    E = int(E)
    if T is not None and E > T:
        raise ValueError(f"spike confidence E={E} is larger than T={T}")
    p = sc["p"]
    p_all = None
    if sin is not None and E <= sin["T"]:
        s_E, f_E = sin["sin_count"][:, E - 1], sin["fired_count"][:, E - 1]
        denom = f_E if sc["r_definition"] == "fired" else sin["neurons"]
        p_all = (1.0 - torch.where(denom > 0, s_E / denom.clamp(min=1), torch.zeros(()))).tolist()
    if p is None:
        if p_all is None:
            if not required:
                return None
            raise ValueError(
                "spike confidence needs p, but the conversion artifact has no SIN statistics"
                + (f" up to E={E}" if sin is not None else "")
                + ": rerun convert.py with sin.enabled=true (and sin.T >= E), or give method.sc.p"
            )
        p = [p_all[i] for i in idx]
    values = [p] if isinstance(p, (int, float)) else list(p)
    for v in values:
        if not 0.0 <= float(v) <= 1.0:
            raise ValueError(f"spike confidence p must lie in [0, 1], got {v}")
    if isinstance(p, (int, float)):
        p = [float(p)] * len(idx)
    if len(p) == L and len(idx) != L:
        p = [p[i] for i in idx]
    if len(p) != len(idx):
        raise ValueError(f"method.sc.p has {len(p)} values for {len(idx)} spike-confidence layers")
    return {"early_steps": E, "layers": idx, "p": [float(v) for v in p], "reset": sc["reset"],
            "seed": int(sc["seed"]), "r_definition": sc["r_definition"], "p_all_layers": p_all,
            "seeds": list(sc.get("seeds") or [int(sc["seed"])])}


# ------------------------------------------------------------------ stage 3
def load_artifact(cfg: DictConfig, sha: str) -> dict:
    from .checkpoint import safe_load

    path = Path(cfg.calibration.artifact)
    art = safe_load(path, "conversion artifact")
    if art.get("kind") != "conversion":
        raise CheckpointError(f"{path} is not a conversion artifact from convert.py")
    if art["ann_sha256"] != sha:
        raise CheckpointError(
            f"conversion artifact {str(path)!r} was made from another ANN checkpoint (sha256 "
            f"{art['ann_sha256'][:12]}..., the checkpoint now is {sha[:12]}...); rerun convert.py"
        )
    return art


def run_evaluate(cfg: DictConfig) -> dict:
    """Simulate the converted SNN over the test set; accuracy at every step (evaluate.py).

    With the ``snn`` primary config (``--config-name snn``) it evaluates a train_snn.py checkpoint."""
    from .evaluation import check_checkpoints
    from .simulation import check_T

    if "snn" in cfg:
        return run_evaluate_mt(cfg)
    ev = cfg.eval
    T = check_T(ev.T)
    checkpoints = check_checkpoints(ev.checkpoints, T)
    dtype = {"float32": torch.float32, "float64": torch.float64}.get(str(cfg.sim.dtype))
    if dtype is None:
        raise ValueError(f"sim.dtype must be float32 or float64, got {cfg.sim.dtype!r}")
    info = init_distributed(cfg.device)
    try:
        name = f"eval-{cfg.dataset.name}-{cfg.model.name}-{cfg.method.name}"
        with wandb_run(cfg.wandb, resolved_config(cfg), "evaluate", output_dir(cfg), name, enabled=info.is_main) as tr:
            return evaluate_stage(cfg, tr, info, T, checkpoints, dtype)
    finally:
        cleanup(info)


def evaluate_stage(cfg: DictConfig, tr, info, T: int, checkpoints: Sequence[int], dtype: torch.dtype) -> dict:
    from .conversion import build_snn, prepare_ann
    from .data import build_splits, subset
    from .distributed import barrier
    from .energy import energy_ratio, layer_ops
    from .evaluation import evaluate_snn, fingerprint, summarize, summarize_curve

    ev = cfg.eval
    device = resolve_device(cfg.device, info)
    chunk = sim_chunk(cfg.sim.chunk, device)
    model, sha, ckpt_file = load_ann(cfg, device)
    if not Path(cfg.calibration.artifact).exists():
        if not ev.convert_if_missing:
            raise CheckpointError(f"conversion artifact not found: {cfg.calibration.artifact}; run convert.py first")
        if info.is_main:
            print(f"no conversion artifact at {cfg.calibration.artifact}: running convert first")
            convert_stage(cfg, tr, info)
        barrier(info)
    art = load_artifact(cfg, sha)
    model = model.to(dtype)
    ann = prepare_ann(model)
    snn = build_snn(ann, [v.to(dtype) for v in art["lam"]], **threshold_kwargs(cfg.method)).to(device)
    for n_ in snn.neurons:
        n_.lam = n_.lam.to(dtype)
    sc = resolve_sc(cfg.method.sc, art, T) if cfg.method.sc.enabled else None
    splits = build_splits(cfg.dataset, seed=cfg.seed)
    check_splits(cfg, splits)
    test = subset(splits.test, ev.max_samples, seed=0)
    out = output_dir(cfg)
    seeds = sc["seeds"] if sc else [0]
    runs = []
    for seed in seeds:
        if sc:
            snn.configure_sc(sc["p"], sc["early_steps"], sc["layers"], sc["reset"], seed)
        key = fingerprint({"ann": sha, "lam": [float(v.sum()) for v in art["lam"]], "method": plain(cfg.method),
                           "T": T, "bs": int(ev.batch_size), "max_samples": ev.max_samples, "seed": seed,
                           "chunk": chunk, "dtype": str(cfg.sim.dtype), "sin": bool(ev.sin),
                           "theta": bool(ev.theta_traces), "firing": bool(ev.firing_rates),
                           "dataset": plain(cfg.dataset)})
        partial = Path(cfg.paths.ckpt_dir) / "eval_partial" / f"{key}_rank{info.rank}.pt" if ev.resume else None
        raw = evaluate_snn(
            snn, ann, test, T=T, batch_size=int(ev.batch_size), device=device, chunk=chunk, seed=seed,
            sin=bool(ev.sin), theta_traces=bool(ev.theta_traces), firing_rates=bool(ev.firing_rates),
            keep_running_state=bool(ev.quirk_no_reset), dtype=dtype, info=info, partial_path=partial,
            run_key=key, num_workers=int(cfg.dataset.num_workers), progress=bool(cfg.progress),
            channels_last=bool(cfg.sim.channels_last),
        )
        runs.append(summarize(raw, snn, checkpoints, float(ev.tol)))
        if partial is not None and partial.exists():
            partial.unlink()
    res = runs[0]
    if len(runs) > 1:  # several SC seeds: the mean curve, its spread, and each seed's curve
        curves = torch.tensor([r["acc"] for r in runs], dtype=torch.float64)
        mean = curves.mean(0)
        res = {**res, **summarize_curve(mean * res["n_samples"] / 100.0, res["n_samples"], checkpoints,
                                         float(ev.tol), res["ann_acc"])}
        res["acc_std"] = curves.std(0).tolist()
        res["acc_per_seed"] = {str(s): r["acc"] for s, r in zip(seeds, runs)}
    if "spikes_per_neuron" in res:
        x0 = test[0][0].unsqueeze(0).to(device=device, dtype=dtype)
        ops = layer_ops(ann, x0)
        res["energy"] = energy_ratio(ops, res["spikes_per_neuron"], res["neurons_per_sample"])
    res.update(
        experiment=experiment_name(cfg), dataset=cfg.dataset.name, model=cfg.model.name, width=cfg.model.width,
        method=cfg.method.name, threshold=cfg.method.threshold, hparams=plain(cfg.method.hparams),
        max_spikes=int(cfg.method.max_spikes), v_init=float(cfg.method.v_init),
        sc=sc, quirk_no_reset=bool(ev.quirk_no_reset), chunk=chunk, dtype=str(cfg.sim.dtype),
        seed=int(cfg.seed), ann_checkpoint=ckpt_file, ann_sha256=sha, artifact=str(cfg.calibration.artifact),
        paper=plain(cfg.get("paper", {})), commit=git_commit(), hardware=hardware(),
        command=job_command("evaluate.py"), world_size=info.world, tags=list(cfg.get("tags", [])),
    )
    if info.is_main:
        (out / "results.json").write_text(json.dumps(res, indent=2))
        print(format_curve_table({cfg.method.name: res}, checkpoints))
        log_evaluation(cfg, res, out, tr)
    return res


def format_curve_table(results: Mapping[str, Mapping[str, Any]], checkpoints: Sequence[int]) -> str:
    """A text table: one row per method, accuracy at the checkpoints, best and Step."""
    head = f"{'method':<12}{'ANN':>8}" + "".join(f"{'T=' + str(t):>9}" for t in checkpoints) + f"{'best':>9}{'@t':>6}{'Step':>6}"
    lines = [head, "-" * len(head)]
    for name, r in results.items():
        ann = f"{r['ann_acc']:>8.2f}" if r.get("ann_acc") is not None else f"{'-':>8}"
        row = f"{name:<12}{ann}" + "".join(f"{r['acc'][t - 1]:>9.2f}" for t in checkpoints if t <= r["T"])
        step = r.get("step_within_tol")
        row += f"{r['best_acc']:>9.2f}{r['best_step']:>6}{(step if step is not None else '-'):>6}"
        lines.append(row)
    return "\n".join(lines)


def log_evaluation(cfg: DictConfig, res: Mapping[str, Any], out: Path, tr) -> None:
    from .tracking import plot_bars, plot_curves

    pngs = {}
    if cfg.eval.plots:
        bands = None
        if "acc_std" in res:
            a, s = torch.tensor(res["acc"]), torch.tensor(res["acc_std"])
            bands = {cfg.method.name: ((a - s).tolist(), (a + s).tolist())}
        pngs["accuracy"] = plot_curves(out / "accuracy.png", {cfg.method.name: res["acc"]},
                                       f"{cfg.model.name} / {cfg.dataset.name}: SNN accuracy", hline=res["ann_acc"],
                                       bands=bands)
        if "firing_rate" in res:
            pngs["firing_rate"] = plot_bars(out / "firing_rate.png", [f"{i}" for i in range(len(res["firing_rate"]))],
                                            res["firing_rate"], f"firing rate per layer (mean {res['firing_rate_mean']:.4f})",
                                            "spikes / neuron / step")
        if "theta_traces" in res:
            tr_ = res["theta_traces"]
            pngs["theta"] = plot_curves(out / "theta.png", {f"{i}": t["mean"] for i, t in enumerate(tr_)},
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
        for i, th in enumerate(res.get("theta_traces", [])):
            row[f"curve/theta_mean_{i}"] = th["mean"][t]
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
    for k, p in pngs.items():
        tr.image(f"plot/{k}", p)


# ------------------------------------------------------------------ MT-SNN (train_snn.py)
def mt_model_spec(cfg: DictConfig) -> dict:
    """The model spec of a train_snn.py run (checked against checkpoints)."""
    from .mt import check_deltas

    neuron = cfg.neuron
    T = neuron.T
    if isinstance(T, bool) or int(T) != T or int(T) < 1:
        raise ValueError(f"neuron.T (time steps for training) must be an integer >= 1, got {T!r}")
    if neuron.kind not in ("plif", "relu"):
        raise ValueError(f"neuron.kind must be 'plif' or 'relu', got {neuron.kind!r}")
    return dict(name=str(cfg.snn.name), num_classes=int(cfg.dataset.num_classes), in_channels=int(cfg.dataset.in_channels),
                width=float(cfg.snn.width), T=int(T), deltas=check_deltas(list(neuron.deltas)),
                input_size=int(cfg.dataset.image_size), neuron=str(neuron.kind))


def run_train_snn(cfg: DictConfig) -> dict:
    """Train an MT-SNN (or its ST baseline, or the ANN twin) directly (train_snn.py)."""
    spec = mt_model_spec(cfg)
    name = f"train_snn-{cfg.dataset.name}-{cfg.snn.name}-{cfg.neuron.name}-T{cfg.neuron.T}-s{cfg.seed}"
    return train_stage(cfg, spec, kind="mt_snn", job="train_snn", name=name, script="train_snn.py")


def load_mt(path: Path, spec: Optional[dict], device: torch.device):
    from .checkpoint import load_ann_checkpoint
    from .models import create_model

    ckpt = load_ann_checkpoint(path, spec, kind="mt_snn")
    model = create_model(**ckpt["model_spec"])
    model.load_state_dict(ckpt["model"])
    return model.to(device).eval(), ckpt


def run_evaluate_mt(cfg: DictConfig) -> dict:
    """Accuracy of a train_snn.py checkpoint after every t = 1..T (`evaluate.py --config-name snn`)."""
    from .checkpoint import file_sha256
    from .data import build_splits, subset
    from .evaluation import evaluate_multistep, summarize_curve
    from .simulation import check_T

    T = check_T(cfg.eval.T)
    spec = mt_model_spec(cfg)
    info = init_distributed(cfg.device)
    try:
        device = resolve_device(cfg.device, info)
        path = Path(cfg.paths.ckpt_dir) / "last.pt"
        if not path.exists():
            raise CheckpointError(f"MT-SNN checkpoint not found: {str(path)!r}; train it with train_snn.py first")
        model, _ = load_mt(path, spec, device)
        splits = build_splits(cfg.dataset, seed=cfg.seed)
        check_splits(cfg, splits)
        test = subset(splits.test, cfg.eval.max_samples, seed=0)
        kw = dict(batch_size=int(cfg.eval.batch_size), device=device, info=info,
                  num_workers=int(cfg.dataset.num_workers), progress=bool(cfg.progress))
        ann_acc = None
        if cfg.eval.ann_twin:
            twin, _ = load_mt(Path(cfg.eval.ann_twin), None, device)
            if twin.neuron != "relu":
                raise ValueError(f"eval.ann_twin {cfg.eval.ann_twin} is not an ANN twin (neuron=ann) checkpoint")
            r = evaluate_multistep(twin, test, T=1, **kw)
            ann_acc = 100.0 * float(r["correct"][0]) / r["n"]
        raw = evaluate_multistep(model, test, T=T, **kw)
        res = summarize_curve(raw["correct"], raw["n"], [t for t in cfg.eval.checkpoints if t <= T] or [T],
                              float(cfg.eval.tol), ann_acc)
        res.update(experiment=experiment_name(cfg), dataset=cfg.dataset.name, model=cfg.snn.name, width=cfg.snn.width,
                   method=f"{cfg.neuron.name}-snn", neuron=plain(cfg.neuron), trained_T=spec["T"], seed=int(cfg.seed),
                   checkpoint=str(path), checkpoint_sha256=file_sha256(path), paper=plain(cfg.get("paper", {})),
                   commit=git_commit(), hardware=hardware(), command=job_command("evaluate.py --config-name snn"),
                   world_size=info.world, tags=list(cfg.get("tags", [])), elapsed_s=raw["elapsed_s"])
        if info.is_main:
            out = output_dir(cfg)
            (out / "results.json").write_text(json.dumps(res, indent=2))
            cps = list(range(1, T + 1)) if T <= 8 else [t for t in (1, 2, 4, 8, 16, 32, 64, 128, 256) if t <= T]
            print(format_curve_table({res["method"]: res}, cps))
            name = f"eval-{cfg.dataset.name}-{cfg.snn.name}-{cfg.neuron.name}"
            with wandb_run(cfg.wandb, resolved_config(cfg), "evaluate", out, name) as tr:
                tr.define_step_metric("timestep", "curve/*")
                for t, a in enumerate(res["acc"]):
                    tr.log({"timestep": t + 1, "curve/snn_acc": a})
                tr.summary({"best_acc": res["best_acc"], "best_step": res["best_step"], "ann_acc": ann_acc})
        return res
    finally:
        cleanup(info)
