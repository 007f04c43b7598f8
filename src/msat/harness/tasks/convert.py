"""``convert.py``: run the conversion pipeline on the trained ANN, measure SIN and spike
confidence, and save the conversion artifact that ``evaluate.py`` simulates."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig

from ...conversion.pipeline import Converter
from ...conversion.sin import resolve_sc, sin_statistics
from ..artifacts import sin_record, sin_summary
from ..checkpoint import FORMAT_VERSION, atomic_save, load_ann
from ..data import build_splits, make_loader
from ..distributed import resolve_device
from ..evaluation import fingerprint
from ..settings import ConvertSettings, convert_settings, plain
from ..tracking import git_commit, hardware, log_conversion
from .hydra_utils import cfg_model_spec, check_splits, ckpt_path, job_command, output_dir, run_stage

log = logging.getLogger(__name__)


def artifact_path(cfg: DictConfig, s: ConvertSettings) -> Path:
    """``calibration.artifact``, or a path keyed by the method name and a hash of what the
    conversion depends on (the recipe without spike confidence, the calibration images)."""
    if s.artifact:
        return Path(s.artifact)
    return Path(cfg.paths.ckpt_dir) / "conversion" / f"{s.method}_{fingerprint(s.fingerprint_fields())}.pt"


def calibration_loader(splits, batch_size: int, seed: int, num_workers: int = 0, skip_batches: int = 0):
    """A seeded random order of training images (test transforms): an image-folder tree is
    sorted by class, so its first batches would all be one class."""
    g = torch.Generator().manual_seed(int(seed))
    order = torch.randperm(len(splits.calibration), generator=g).tolist()[skip_batches * batch_size:]
    return make_loader(torch.utils.data.Subset(splits.calibration, order), batch_size, num_workers)


def run_convert(cfg: DictConfig) -> dict:
    """Calibrate lam, measure SIN and spike confidence, save the conversion artifact (convert.py)."""
    git_commit()  # the code this process loaded, recorded by every stage it runs
    return run_stage(cfg, "convert", "convert", convert_stage, convert_settings(cfg))


def convert_stage(cfg: DictConfig, tr, info, s: ConvertSettings, dtype: torch.dtype = torch.float32) -> dict:
    device = resolve_device(cfg.device, info)
    model, sha, ckpt_file = load_ann(ckpt_path(cfg, s.checkpoint), cfg_model_spec(cfg), device,
                                     pretrained=bool(cfg.model.get("pretrained", False)))
    splits = build_splits(plain(cfg.dataset), seed=s.seed)
    check_splits(cfg, splits)
    workers = int(cfg.dataset.num_workers)
    loader = calibration_loader(splits, s.batch_size, s.seed, workers)
    t0 = time.time()
    converter = Converter(s.recipe.replace(sc=None), progress=bool(cfg.progress))  # SC: when evaluating
    ann = converter.prepare(model.to(dtype))
    snn = converter.run(model, loader, sc=False, ann=ann)
    correction = snn.conversion.get("correction_report")
    if correction is not None:
        log.info("%s correction for T=%d%s", s.recipe.correction, s.recipe.correction_T,
                 f" on {correction['samples']} images" if "samples" in correction else "")
    path = artifact_path(cfg, s)
    artifact: dict[str, Any] = {
        "format_version": FORMAT_VERSION, "kind": "conversion", "ann_checkpoint": ckpt_file, "ann_sha256": sha,
        "model_spec": cfg_model_spec(cfg), "dataset": cfg.dataset.name, "layer_names": [site.name for site in ann.sites],
        **converter.state(snn), "calibration": plain(cfg.calibration), "method": plain(cfg.method),
        "correction_report": correction, "sin": None, "commit": git_commit(), "hardware": hardware(),
        "command": job_command("convert.py"),
    }
    summary: dict[str, Any] = {"layers": artifact["layer_names"], "lam": [float(v.max()) for v in artifact["lam"]],
                               "calibration_s": time.time() - t0, "recipe": artifact["recipe"], "correction": correction}
    if s.sin:
        x = _sin_batch(splits, s, workers, device, dtype)
        mons = sin_statistics(ann, snn, x, s.sin_T)
        artifact["sin"] = sin_record(mons, s.sin_T, x.shape[0], s.recipe.threshold)
        summary["sin"] = sin_summary(artifact["sin"], resolve_sc(plain(cfg.method.sc), artifact["sin"], len(mons), None,
                                                                 required=False))
    summary.update(artifact=str(path), ann_sha256=sha, commit=artifact["commit"], hardware=artifact["hardware"],
                   command=artifact["command"])
    if info.is_main:
        atomic_save(artifact, path)
        out = output_dir(cfg)
        (out / "conversion.json").write_text(json.dumps(summary, indent=2, default=str))
        log_conversion(tr, artifact["layer_names"], artifact["lam"], summary.get("sin"), out, path,
                       f"{cfg.model.name}, {cfg.dataset.name}, {s.recipe.threshold}",
                       f"conversion-{cfg.dataset.name}-{cfg.model.name}")
        log.info("saved conversion artifact %s (%d spiking layers)", path, len(artifact["lam"]))
    return summary


def _sin_batch(splits, s: ConvertSettings, workers: int, device, dtype) -> torch.Tensor:
    """One batch of training images beyond the calibration batches (the first batch again when the
    set has no more), for the SIN statistics."""
    skip = int(s.recipe.num_batches or 0)
    batch = next(iter(calibration_loader(splits, s.batch_size, s.seed, workers, skip_batches=skip)), None)
    if batch is None:
        batch = next(iter(calibration_loader(splits, s.batch_size, s.seed, workers)))
    return batch[0][: s.sin_batch_size].to(device=device, dtype=dtype)
