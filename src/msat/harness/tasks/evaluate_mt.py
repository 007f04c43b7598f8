"""``evaluate.py --config-name snn``: the accuracy of a directly trained MT-SNN after every step."""

from __future__ import annotations

import json
import logging
from pathlib import Path

from omegaconf import DictConfig

from ...spiking.simulation import check_T
from ..artifacts import save_predictions
from ..checkpoint import CheckpointError, file_sha256, load_network
from ..data import build_splits, subset
from ..distributed import cleanup, init_distributed, resolve_device
from ..evaluation import REPORT_STEPS, evaluate_multistep, summarize_curve
from ..report import format_curve_table
from ..settings import plain
from ..tracking import git_commit, hardware, wandb_run
from .hydra_utils import check_splits, experiment_name, job_command, output_dir, resolved_config
from .train_snn import mt_model_spec

log = logging.getLogger(__name__)


def run_evaluate_mt(cfg: DictConfig) -> dict:
    """Accuracy of a train_snn.py checkpoint after every t = 1..T (`evaluate.py --config-name snn`)."""
    git_commit()  # the code this process loaded
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
        model, _ = load_network(path, spec, "mt_snn", device)
        splits = build_splits(cfg.dataset, seed=cfg.seed)
        check_splits(cfg, splits)
        test = subset(splits.test, cfg.eval.max_samples, seed=0)
        kw = dict(batch_size=int(cfg.eval.batch_size), device=device, info=info,
                  num_workers=int(cfg.dataset.num_workers), progress=bool(cfg.progress))
        ann_acc = None
        if cfg.eval.ann_twin:
            twin, _ = load_network(Path(cfg.eval.ann_twin), None, "mt_snn", device)
            if twin.neuron != "relu":
                raise ValueError(f"eval.ann_twin {cfg.eval.ann_twin} is not an ANN twin (neuron=ann) checkpoint")
            r = evaluate_multistep(twin, test, T=1, **kw)
            ann_acc = 100.0 * float(r["correct"][0]) / r["n"]
        cps = list(range(1, T + 1)) if T <= 8 else [t for t in (1, 2, 4, 8, *REPORT_STEPS) if t <= T]
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
