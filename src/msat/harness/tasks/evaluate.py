"""``evaluate.py``: simulate the converted SNN over the test set; accuracy after every step,
the ANN beside it, statistics, ``results.json``, plots and W&B."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, Optional

import torch
from omegaconf import DictConfig

from ...analysis.energy import energy_ratio, layer_ops
from ...analysis.errors import error_monitors, summarize_errors
from ...conversion.corrections import restore_correction
from ...conversion.prepare import prepare_ann
from ...conversion.readout import estimate_readout_start
from ...conversion.sin import check_sc, resolve_sc
from ...spiking.fused import compile_status
from ...spiking.simulation import check_readout_start, check_T, resolve_chunk, resolve_compile, sim_dtype
from ..artifacts import save_predictions
from ..checkpoint import CheckpointError, load_ann, load_artifact
from ..data import build_splits, subset
from ..distributed import barrier, cleanup, init_distributed, resolve_device
from ..evaluation import check_checkpoints, evaluate_snn, fingerprint, summarize, summarize_curve
from ..plots import plot_error_maps
from ..report import format_curve_table, interval_table
from ..tracking import git_commit, hardware, log_evaluation, wandb_run
from .convert import artifact_path, build_converted, calibration_loader, conversion_settings, convert_stage
from .hydra_utils import (
    cfg_model_spec,
    check_splits,
    ckpt_path,
    experiment_name,
    job_command,
    output_dir,
    plain,
    resolved_config,
)
from .train_snn import run_evaluate_mt

log = logging.getLogger(__name__)


def eval_settings(cfg: DictConfig) -> dict:
    """The evaluation's settings, every one checked before a checkpoint is read."""
    ev = cfg.eval
    T = check_T(ev.T)
    s = {"T": T, "checkpoints": check_checkpoints(ev.checkpoints, T, clip=True), "dtype": sim_dtype(cfg.sim.dtype),
         "conversion": conversion_settings(cfg)}
    if int(ev.batch_size) < 1:
        raise ValueError(f"eval.batch_size must be >= 1, got {ev.batch_size}")
    if ev.max_samples is not None and int(ev.max_samples) < 1:
        raise ValueError(f"eval.max_samples must be >= 1 or null, got {ev.max_samples}")
    resolve_chunk(cfg.sim.chunk, torch.device("cpu"))  # validates the value
    resolve_compile(cfg.sim.compile, torch.device("cpu"), 0)
    rs = ev.readout_start
    s["readout_start"] = rs if rs == "auto" else check_readout_start(rs, T)
    # checked with spike confidence off too: an out-of-range value is a mistake either way
    sc = check_sc({k: v for k, v in plain(cfg.method.sc).items() if k in ("p", "early_steps", "layers", "reset",
                                                                          "seed", "r_definition")})
    if cfg.method.sc.enabled:
        if sc["early_steps"] != "auto" and int(sc["early_steps"]) > T:
            raise ValueError(f"spike confidence E={sc['early_steps']} is larger than T={T}")
    return s


def run_evaluate(cfg: DictConfig) -> dict:
    """Simulate the converted SNN over the test set; accuracy at every step (evaluate.py).

    With the ``snn`` primary config (``--config-name snn``) it evaluates a train_snn.py checkpoint."""
    if "snn" in cfg:
        return run_evaluate_mt(cfg)
    settings = eval_settings(cfg)
    info = init_distributed(cfg.device)
    try:
        name = f"eval-{cfg.dataset.name}-{cfg.model.name}-{cfg.method.name}"
        with wandb_run(cfg.wandb, resolved_config(cfg), "evaluate", output_dir(cfg), name, enabled=info.is_main) as tr:
            return evaluate_stage(cfg, tr, info, settings)
    finally:
        cleanup(info)


def _artifact(cfg: DictConfig, tr, info, conv: dict, sha: str) -> dict:
    path = artifact_path(cfg, conv)
    if not path.exists():
        if not cfg.eval.convert_if_missing:
            raise CheckpointError(f"conversion artifact not found: {path}; run convert.py first")
        if info.is_main:
            log.info("no conversion artifact at %s: running convert first", path)
            convert_stage(cfg, tr, info, conv)
        barrier(info)
    return load_artifact(path, sha) | {"_path": str(path)}


def evaluate_stage(cfg: DictConfig, tr, info, settings: Optional[dict] = None) -> dict:
    s = settings or eval_settings(cfg)
    ev, T, dtype, conv = cfg.eval, s["T"], s["dtype"], s["conversion"]
    device = resolve_device(cfg.device, info)
    chunk = resolve_chunk(cfg.sim.chunk, device)
    model, sha, ckpt_file = load_ann(ckpt_path(cfg, cfg.calibration.checkpoint), cfg_model_spec(cfg), device,
                                     pretrained=bool(cfg.model.get("pretrained", False)))
    art = _artifact(cfg, tr, info, conv, sha)
    ann = prepare_ann(model.to(dtype))
    snn = build_converted(ann, [v.to(dtype) for v in art["lam"]], conv, device)
    restore_correction(snn, art.get("correction_state"))
    sc = resolve_sc(plain(cfg.method.sc), art.get("sin"), len(snn.neurons), T) if cfg.method.sc.enabled else None
    splits = build_splits(cfg.dataset, seed=cfg.seed)
    check_splits(cfg, splits)
    test = subset(splits.test, ev.max_samples, seed=int(ev.subset_seed))
    snn.set_compile(resolve_compile(cfg.sim.compile, device, 0) if cfg.sim.compile != "auto" else "auto")
    readout_start = s["readout_start"]
    if readout_start == "auto":
        cal = [(x.to(dtype), y) for x, y in calibration_loader(cfg, splits)]
        readout_start = estimate_readout_start(snn, cal, T=T)
    out = output_dir(cfg)
    seeds = sc["seeds"] if sc else [0]
    runs, errors = [], None
    for seed in seeds:
        if sc:
            snn.configure_sc(sc["p"], sc["early_steps"], sc["layers"], sc["reset"], seed)
        err_mons = {"errors": error_monitors(ann, T, device)} if ev.diagnostics else {}
        key = fingerprint({"ann": sha, "artifact": art["_path"], "lam": [float(v.sum()) for v in art["lam"]],
                           "method": plain(cfg.method), "T": T, "bs": int(ev.batch_size), "max_samples": ev.max_samples,
                           "subset_seed": int(ev.subset_seed), "seed": seed, "chunk": chunk, "dtype": str(dtype),
                           "sin": bool(ev.sin), "theta": bool(ev.theta_traces), "firing": bool(ev.firing_rates),
                           "diagnostics": bool(ev.diagnostics), "readout_start": readout_start,
                           "record_at": s["checkpoints"], "dataset": plain(cfg.dataset)})
        partial = Path(cfg.paths.ckpt_dir) / "eval_partial" / f"{key}_rank{info.rank}.pt" if ev.resume else None
        raw = evaluate_snn(
            snn, ann, test, T=T, batch_size=int(ev.batch_size), device=device, chunk=chunk, seed=seed,
            sin=bool(ev.sin), theta_traces=bool(ev.theta_traces), firing_rates=bool(ev.firing_rates),
            monitors=err_mons, record_at=s["checkpoints"], keep_running_state=bool(ev.quirk_no_reset),
            readout_start=readout_start, dtype=dtype, info=info, partial_path=partial, run_key=key,
            num_workers=int(cfg.dataset.num_workers), progress=bool(cfg.progress),
            channels_last=bool(cfg.sim.channels_last),
        )
        runs.append(summarize(raw, snn, s["checkpoints"], float(ev.tol)))
        runs[-1]["_per_image"] = raw["core"]["per_image"]
        if ev.diagnostics and errors is None:
            errors = summarize_errors(err_mons["errors"], snn.layer_names)
        if partial is not None and partial.exists():
            partial.unlink()
    compiled = any(n.compiled for n in snn.neurons)
    res = _merge_seeds(runs, seeds, s["checkpoints"], float(ev.tol))
    per_image = res.pop("_per_image")
    if "spikes_per_neuron" in res:
        x0 = test[0][0].unsqueeze(0).to(device=device, dtype=dtype)
        res["energy"] = energy_ratio(layer_ops(ann, x0), res["spikes_per_neuron"], res["neurons_per_sample"])
    if errors is not None:
        res["diagnostics"] = {"names": errors["names"], "a_norm": errors["a_norm"],
                              **{k: [c.tolist() for c in errors[k]] for k in ("rel_l2", "qc", "sin")}}
    m = cfg.method
    res.update(
        experiment=experiment_name(cfg), dataset=cfg.dataset.name, model=cfg.model.name, width=cfg.model.width,
        activation=cfg.model.get("activation", "relu"), method=m.name, threshold=m.threshold,
        hparams=plain(m.hparams), max_spikes=int(m.max_spikes), v_init=_v_init_record(snn),
        balancing=conv["balancing"], percentile=conv["percentile"], channelwise=conv["channelwise"],
        passes=conv["passes"], correction=conv["correction"], correction_T=conv["correction_T"],
        readout_start=readout_start, sc=sc, quirk_no_reset=bool(ev.quirk_no_reset), chunk=chunk, compiled=compiled,
        compile=compile_status(),
        dtype=str(cfg.sim.dtype), seed=int(cfg.seed), subset_seed=int(ev.subset_seed), ann_checkpoint=ckpt_file,
        ann_sha256=sha, artifact=art["_path"], paper=plain(cfg.get("paper", {})), commit=git_commit(),
        hardware=hardware(), command=job_command("evaluate.py"), world_size=info.world, tags=list(cfg.get("tags", [])),
    )
    if info.is_main:
        (out / "results.json").write_text(json.dumps(res, indent=2))
        if ev.save_predictions:
            save_predictions(out / "predictions.pt", s["checkpoints"], per_image, ev.subset_seed, res["n_samples"])
        log.info("accuracy (%%) after t steps, %d images:\n%s\n95%% Wilson intervals:\n%s", res["n_samples"],
                 format_curve_table({m.name: res}, s["checkpoints"]), interval_table([res], s["checkpoints"]))
        pngs = log_evaluation(tr, res, out, m.name, f"{cfg.model.name} / {cfg.dataset.name}", bool(ev.plots))
        if errors is not None:
            for k, p in plot_error_maps(out, res["diagnostics"], f"{cfg.model.name} / {m.name}").items():
                pngs[k] = p
                tr.image(f"plot/{k}", p)
            _log_errors(tr, res["diagnostics"])
    return res


def _v_init_record(snn) -> Any:
    v = snn.neurons[0].v_init
    return v if isinstance(v, float) and all(n.v_init == v for n in snn.neurons if isinstance(n.v_init, float)) \
        else "per-layer"


def _merge_seeds(runs: list[dict], seeds, checkpoints, tol: float) -> dict:
    """One run: itself. Several SC seeds: the mean curve, its spread, and each seed's curve."""
    res = runs[0]
    if len(runs) == 1:
        return res
    curves = torch.tensor([r["acc"] for r in runs], dtype=torch.float64)
    res = {**res, **summarize_curve(curves.mean(0) * res["n_samples"] / 100.0, res["n_samples"], checkpoints, tol,
                                    res["ann_acc"])}
    res["acc_std"] = curves.std(0).tolist()
    res["acc_per_seed"] = {str(s): r["acc"] for s, r in zip(seeds, runs)}
    return res


def _log_errors(tr, diag: dict) -> None:
    tr.define_step_metric("timestep", "errors/*")
    T = len(diag["rel_l2"][0])
    for t in range(T):
        row = {"timestep": t + 1}
        for k in ("rel_l2", "qc", "sin"):
            for i, c in enumerate(diag[k]):
                row[f"errors/{k}_{i}"] = c[t]
        tr.log(row)
