"""``train_snn.py`` and ``evaluate.py --config-name snn``: MT-SNNs trained directly with
multiple thresholds (spec ``mt.md`` section 2)."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Optional

import torch
from omegaconf import DictConfig

from ...models import create_model
from ...spiking.plif import check_deltas
from ...spiking.simulation import check_T
from ..artifacts import save_predictions
from ..checkpoint import CheckpointError, file_sha256, load_ann_checkpoint
from ..data import build_splits, subset
from ..distributed import cleanup, init_distributed, resolve_device
from ..evaluation import evaluate_multistep, summarize_curve
from ..report import format_curve_table
from ..tracking import git_commit, hardware, wandb_run
from .hydra_utils import check_splits, experiment_name, job_command, output_dir, plain, resolved_config
from .train import train_stage

log = logging.getLogger(__name__)


def mt_model_spec(cfg: DictConfig) -> dict:
    """The model spec of a train_snn.py run (checked against checkpoints)."""
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
    ckpt = load_ann_checkpoint(path, spec, kind="mt_snn")
    model = create_model(**ckpt["model_spec"])
    model.load_state_dict(ckpt["model"])
    return model.to(device).eval(), ckpt


def run_evaluate_mt(cfg: DictConfig) -> dict:
    """Accuracy of a train_snn.py checkpoint after every t = 1..T (`evaluate.py --config-name snn`)."""
    T = check_T(cfg.eval.T)
    spec = mt_model_spec(cfg)
    if cfg.eval.get("diagnostics"):
        raise ValueError("eval.diagnostics compares a converted SNN with its ANN layer by layer; a directly trained "
                         "MT-SNN has no ANN sites to measure: drop eval.diagnostics")
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
        cps = list(range(1, T + 1)) if T <= 8 else [t for t in (1, 2, 4, 8, 16, 32, 64, 128, 256) if t <= T]
        save = bool(cfg.eval.get("save_predictions", True))
        raw = evaluate_multistep(model, test, T=T, record_at=cps if save else (), **kw)
        res = summarize_curve(raw["correct"], raw["n"], [t for t in cfg.eval.checkpoints if t <= T] or [T],
                              float(cfg.eval.tol), ann_acc)
        res.update(experiment=experiment_name(cfg), dataset=cfg.dataset.name, model=cfg.snn.name, width=cfg.snn.width,
                   method=f"{cfg.neuron.name}-snn", neuron=plain(cfg.neuron), trained_T=spec["T"], seed=int(cfg.seed),
                   checkpoint=str(path), checkpoint_sha256=file_sha256(path), paper=plain(cfg.get("paper", {})),
                   commit=git_commit(), hardware=hardware(), command=job_command("evaluate.py --config-name snn"),
                   world_size=info.world, tags=list(cfg.get("tags", [])), elapsed_s=raw["elapsed_s"], subset_seed=0)
        if info.is_main:
            out = output_dir(cfg)
            (out / "results.json").write_text(json.dumps(res, indent=2))
            if save:  # per-image correctness, for msat.report's paired tests
                save_predictions(out / "predictions.pt", cps, raw["per_image"], 0, res["n_samples"])
            log.info("accuracy (%%) after t steps:\n%s", format_curve_table({res["method"]: res}, cps))
            name = f"eval-{cfg.dataset.name}-{cfg.snn.name}-{cfg.neuron.name}"
            with wandb_run(cfg.wandb, resolved_config(cfg), "evaluate", out, name) as tr:
                tr.define_step_metric("timestep", "curve/*")
                for t, a in enumerate(res["acc"]):
                    tr.log({"timestep": t + 1, "curve/snn_acc": a})
                tr.summary({"best_acc": res["best_acc"], "best_step": res["best_step"], "ann_acc": ann_acc})
        return res
    finally:
        cleanup(info)
