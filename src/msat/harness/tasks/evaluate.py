"""``evaluate.py``: simulate the converted SNN over the test set; accuracy after every step,
the ANN beside it, statistics, ``results.json``, plots and W&B."""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path
from typing import Any, Optional

import torch
from omegaconf import DictConfig

from ...analysis.energy import energy_ratio, layer_ops
from ...analysis.errors import error_monitors, summarize_errors
from ...conversion.pipeline import Converter
from ...conversion.readout import estimate_readout_start
from ...conversion.recipe import Recipe
from ...conversion.sin import resolve_sc
from ...spiking.fused import compile_status
from ...spiking.network import SpikingNetwork
from ...spiking.simulation import resolve_chunk, resolve_compile
from ..artifacts import save_predictions
from ..checkpoint import CheckpointError, load_ann, load_artifact
from ..data import build_splits, subset
from ..distributed import barrier, resolve_device
from ..evaluation import evaluate_snn, fingerprint, summarize, summarize_curve
from ..plots import plot_error_maps
from ..report import format_curve_table, interval_table
from ..settings import EvalSettings, eval_settings, plain
from ..tracking import git_commit, hardware, log_evaluation
from .convert import artifact_path, calibration_loader, convert_stage
from .evaluate_exit import exit_stage
from .evaluate_mt import run_evaluate_mt
from .hydra_utils import cfg_model_spec, check_splits, ckpt_path, experiment_name, job_command, output_dir, run_stage

log = logging.getLogger(__name__)


def run_evaluate(cfg: DictConfig) -> dict:
    """Simulate the converted SNN over the test set; accuracy at every step (evaluate.py).

    With the ``snn`` primary config (``--config-name snn``) it evaluates a train_snn.py checkpoint."""
    if "snn" in cfg:
        return run_evaluate_mt(cfg)
    git_commit()  # the code this process loaded, recorded by every stage it runs
    return run_stage(cfg, "evaluate", "eval", evaluate_stage, eval_settings(cfg))


@dataclasses.dataclass
class Setup:
    """What one evaluation simulates: the restored SNN, its ANN, the test images and the record."""

    snn: SpikingNetwork
    ann: Any
    test: Any
    device: torch.device
    chunk: int
    readout_start: int
    sc: Optional[dict]
    sha: str
    ckpt_file: str
    art: dict
    splits: Any


def _artifact(cfg: DictConfig, tr, info, s: EvalSettings, sha: str) -> dict:
    path = artifact_path(cfg, s.convert)
    if not path.exists():
        if not s.convert_if_missing:
            raise CheckpointError(f"conversion artifact not found: {path}; run convert.py first")
        if info.is_main:
            log.info("no conversion artifact at %s: running convert first", path)
            convert_stage(cfg, tr, info, s.convert)
        barrier(info)
    return load_artifact(path, sha) | {"_path": str(path)}


def setup(cfg: DictConfig, tr, info, s: EvalSettings) -> Setup:
    """Load the ANN, the artifact (converting first when it is missing) and the test images; rebuild
    the SNN; resolve spike confidence and the readout delay."""
    device = resolve_device(cfg.device, info)
    model, sha, ckpt_file = load_ann(ckpt_path(cfg, s.convert.checkpoint), cfg_model_spec(cfg), device,
                                     pretrained=bool(cfg.model.get("pretrained", False)))
    art = _artifact(cfg, tr, info, s, sha)
    ann, snn = Converter(Recipe.from_dict(art["recipe"])).restore(model, art, s.dtype, device)
    sc = resolve_sc(s.sc, art.get("sin"), len(snn.neurons), s.T) if s.sc else None
    splits = build_splits(plain(cfg.dataset), seed=s.convert.seed)
    check_splits(cfg, splits)
    test = subset(splits.test, s.max_samples, seed=s.subset_seed)
    snn.set_compile(resolve_compile(s.compile, device, 0) if s.compile != "auto" else "auto")
    readout_start = s.readout_start
    if readout_start == "auto":
        cal = calibration_loader(splits, s.convert.batch_size, s.convert.seed, int(cfg.dataset.num_workers))
        readout_start = estimate_readout_start(snn, ((x.to(s.dtype), y) for x, y in cal), T=s.T)
    return Setup(snn, ann, test, device, resolve_chunk(s.chunk, device), readout_start, sc, sha, ckpt_file, art, splits)


def evaluate_stage(cfg: DictConfig, tr, info, s: EvalSettings) -> dict:
    run = setup(cfg, tr, info, s)
    exits = None
    if s.exit is not None:  # early exit: the rules fitted on held-out images, then the test set
        res, per_image, exits = exit_stage(cfg, info, s, run)
        errors = None
    else:
        res, per_image, errors = simulate_seeds(cfg, info, s, run)
    res = describe(cfg, info, s, run, res, errors)
    if info.is_main:
        write(cfg, tr, s, res, per_image, errors is not None, exits)
    return res


def simulate_seeds(cfg: DictConfig, info, s: EvalSettings, run: Setup):
    """The fixed-T simulation, once per spike-confidence seed (once without SC); the per-image
    results of the first, and the layer errors when asked for."""
    seeds = run.sc["seeds"] if run.sc else [0]
    runs, errors, per_image = [], None, None
    for seed in seeds:
        if run.sc:
            run.snn.configure_sc(run.sc["p"], run.sc["early_steps"], run.sc["layers"], run.sc["reset"], seed)
        err_mons = {"errors": error_monitors(run.ann, s.T, run.device)} if s.diagnostics else {}
        key = fingerprint({"ann": run.sha, "artifact": run.art["_path"], "lam": [float(v.sum()) for v in run.art["lam"]],
                           "method": plain(cfg.method), "T": s.T, "bs": s.batch_size, "max_samples": s.max_samples,
                           "subset_seed": s.subset_seed, "seed": seed, "chunk": run.chunk, "dtype": str(s.dtype),
                           "sin": s.sin, "theta": s.threshold_traces, "firing": s.firing_rates,
                           "diagnostics": s.diagnostics, "readout_start": run.readout_start, "record_at": s.steps,
                           "dataset": plain(cfg.dataset)})
        partial = Path(cfg.paths.ckpt_dir) / "eval_partial" / f"{key}_rank{info.rank}.pt" if s.resume else None
        raw = evaluate_snn(
            run.snn, run.ann, run.test, T=s.T, batch_size=s.batch_size, device=run.device, chunk=run.chunk, seed=seed,
            sin=s.sin, threshold_traces=s.threshold_traces, firing_rates=s.firing_rates, monitors=err_mons, record_at=s.steps,
            keep_running_state=s.quirk_no_reset, readout_start=run.readout_start, dtype=s.dtype, info=info,
            partial_path=partial, run_key=key, num_workers=int(cfg.dataset.num_workers), progress=bool(cfg.progress),
            channels_last=s.channels_last)
        runs.append(summarize(raw, run.snn, s.steps, s.tol))
        per_image = raw["core"]["per_image"] if per_image is None else per_image
        if s.diagnostics and errors is None:
            errors = summarize_errors(err_mons["errors"], run.snn.layer_names)
        if partial is not None and partial.exists():
            partial.unlink()
    return _merge_seeds(runs, seeds, s.steps, s.tol), per_image, errors


def describe(cfg: DictConfig, info, s: EvalSettings, run: Setup, res: dict, errors: Optional[dict]) -> dict:
    """The run's record in results.json: energy, layer errors, what was converted and how it ran."""
    if "spikes_per_neuron" in res:
        x0 = run.test[0][0].unsqueeze(0).to(device=run.device, dtype=s.dtype)
        res["energy"] = energy_ratio(layer_ops(run.ann, x0), res["spikes_per_neuron"], res["neurons_per_sample"])
    if errors is not None:
        res["diagnostics"] = {"names": errors["names"], "a_norm": errors["a_norm"],
                              **{k: [c.tolist() for c in errors[k]] for k in ("rel_l2", "qc", "sin")}}
    r, conv = s.recipe, run.snn.conversion
    res.update(
        experiment=experiment_name(cfg), dataset=cfg.dataset.name, dataset_config=plain(cfg.dataset),
        batch_size=s.batch_size, model=cfg.model.name, width=cfg.model.width,
        activation=cfg.model.get("activation", "relu"), method=cfg.method.name, threshold=r.threshold,
        hparams=plain(cfg.method.hparams), max_spikes=r.max_spikes, v_init=_v_init_record(run.snn),
        balancing=conv["balancing"], percentile=r.percentile, channelwise=r.channelwise, passes=conv["passes"],
        correction=r.correction, correction_T=r.correction_T, recipe=r.to_dict(), readout_start=run.readout_start,
        sc=run.sc, quirk_no_reset=s.quirk_no_reset, chunk=run.chunk, compiled=any(n.compiled for n in run.snn.neurons),
        compile=compile_status(), dtype=str(cfg.sim.dtype), seed=s.convert.seed, subset_seed=s.subset_seed,
        ann_checkpoint=run.ckpt_file, ann_sha256=run.sha, artifact=run.art["_path"], paper=plain(cfg.get("paper", {})),
        commit=git_commit(), hardware=hardware(), command=job_command("evaluate.py"), world_size=info.world,
        tags=list(cfg.get("tags", [])))
    return res


def write(cfg: DictConfig, tr, s: EvalSettings, res: dict, per_image, diagnostics: bool,
          exits: Optional[dict] = None) -> None:
    """results.json, predictions.pt, the printed tables, the plots and W&B."""
    out = output_dir(cfg)
    (out / "results.json").write_text(json.dumps(res, indent=2))
    steps = [t for t in s.steps if t <= res["T"]] or [res["T"]]
    if s.save_predictions:
        save_predictions(out / "predictions.pt", steps, per_image, s.subset_seed, res["n_samples"], exits=exits)
    name = cfg.method.name
    log.info("accuracy (%%) after t steps, %d images:\n%s\n95%% Wilson intervals:\n%s", res["n_samples"],
             format_curve_table({name: res}, steps), interval_table([res], steps))
    log_evaluation(tr, res, out, name, f"{cfg.model.name} / {cfg.dataset.name}", s.plots)
    if diagnostics:
        for k, p in plot_error_maps(out, res["diagnostics"], f"{cfg.model.name} / {name}").items():
            tr.image(f"plot/{k}", p)
        _log_errors(tr, res["diagnostics"])


def _v_init_record(snn) -> Any:
    v = snn.neurons[0].v_init
    return v if isinstance(v, float) and all(n.v_init == v for n in snn.neurons if isinstance(n.v_init, float)) \
        else "per-layer"


def _merge_seeds(runs: list[dict], seeds, steps, tol: float) -> dict:
    """One run: itself. Several SC seeds: the mean curve, its spread, and each seed's curve."""
    res = runs[0]
    if len(runs) == 1:
        return res
    curves = torch.tensor([r["acc"] for r in runs], dtype=torch.float64)
    res = {**res, **summarize_curve(curves.mean(0) * res["n_samples"] / 100.0, res["n_samples"], steps, tol,
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
