"""``train_ann.py``: train the source ANN (and, through :func:`train_stage`, the MT-SNNs)."""

from __future__ import annotations

import json
import logging

from omegaconf import DictConfig

from ...models import create_model
from ..data import build_splits
from ..distributed import cleanup, init_distributed, resolve_device
from ..settings import plain
from ..tracking import git_commit, hardware, wandb_run
from ..training import check_train_args, fit
from .hydra_utils import cfg_model_spec, check_splits, job_command, output_dir, resolved_config

log = logging.getLogger(__name__)


def run_train(cfg: DictConfig) -> dict:
    """Train the ANN described by ``cfg`` (train_ann.py)."""
    spec = cfg_model_spec(cfg)
    name = f"train-{cfg.dataset.name}-{cfg.model.name}-w{cfg.model.width}-s{cfg.seed}"
    return train_stage(cfg, spec, kind="ann", job="train", name=name, script="train_ann.py")


def train_stage(cfg: DictConfig, spec: dict, kind: str, job: str, name: str, script: str) -> dict:
    """Shared by train_ann.py and train_snn.py: data, W&B, fit(), and train_metrics.json."""
    git_commit()  # the code this process loaded, recorded by every stage it runs
    check_train_args(plain(cfg.train))  # before any data is read
    create_model(**spec)  # a bad model setting fails here, not after the data is loaded
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
            log.info("trained %s: test accuracy %.2f%% (best %.2f%%), checkpoint %s", name, metrics.get("test_acc", 0.0),
                     metrics["best_acc"], metrics["checkpoint"])
        return metrics
    finally:
        cleanup(info)
