"""``convert.py``: calibrate ``lam``, apply the method's correction, measure SIN and spike
confidence, and save the conversion artifact that ``evaluate.py`` simulates."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any, Optional

import torch
from omegaconf import DictConfig

from ...conversion.build import build_snn
from ...conversion.corrections import apply_correction, check_correction, correction_state
from ...conversion.lam import BALANCING, check_passes, check_percentile
from ...conversion.pipeline import compute_lam, default_v_init
from ...conversion.prepare import is_qcfs, prepare_ann
from ...conversion.sin import resolve_sc, sin_statistics
from ...spiking.thresholds import make_rule
from ..artifacts import sin_record, sin_summary
from ..checkpoint import FORMAT_VERSION, atomic_save, load_ann
from ..data import build_splits, make_loader
from ..distributed import cleanup, init_distributed, resolve_device
from ..evaluation import fingerprint
from ..tracking import git_commit, hardware, log_conversion, wandb_run
from .hydra_utils import cfg_model_spec, check_splits, ckpt_path, job_command, output_dir, plain, resolved_config

log = logging.getLogger(__name__)


def threshold_kwargs(method_cfg) -> dict:
    """The threshold rule of a ``method`` config, validated: ``method`` and ``hparams``."""
    m = plain(method_cfg)
    hp = {"frac": m["frac"]} if m["threshold"] == "const" else dict(m["hparams"])
    make_rule(m["threshold"], hp)
    return dict(method=m["threshold"], hparams=hp)


def conversion_settings(cfg: DictConfig) -> dict:
    """Everything that determines a conversion artifact, checked before any file is read."""
    cal, m = cfg.calibration, cfg.method
    balancing = m.balancing if m.get("balancing") is not None else cal.balancing
    if balancing not in BALANCING:
        raise ValueError(f"calibration.balancing must be one of {BALANCING}, got {balancing!r}")
    check_percentile(float(cal.percentile))
    if balancing == "ltb":
        check_passes(cal.passes)
        if float(cal.percentile) < 1.0:
            raise ValueError("calibration.balancing=ltb chooses its own thresholds; calibration.percentile "
                             f"{cal.percentile} contradicts it: drop the percentile (1.0) or use balancing=max")
    if cal.num_batches is not None and int(cal.num_batches) < 1:
        raise ValueError(f"calibration.num_batches must be >= 1 or null, got {cal.num_batches}")
    correction = check_correction(m.get("correction"), m.get("correction_T"))
    if m.max_spikes < 1:
        raise ValueError(f"method.max_spikes must be an integer >= 1, got {m.max_spikes}")
    return {"threshold": threshold_kwargs(m), "max_spikes": int(m.max_spikes), "v_init": m.get("v_init"),
            "balancing": balancing, "percentile": float(cal.percentile), "channelwise": bool(cal.channelwise),
            "passes": int(cal.passes) if balancing == "ltb" else None, "num_batches": cal.num_batches,
            "batch_size": int(cal.batch_size), "correction": correction,
            "correction_T": int(m.correction_T) if correction else None,
            "correction_batches": int(cal.correction_batches), "seed": int(cfg.seed),
            "sin": {"enabled": bool(cfg.sin.enabled), "T": int(cfg.sin.T), "batch_size": int(cfg.sin.batch_size)}}


def artifact_path(cfg: DictConfig, settings: dict) -> Path:
    """``calibration.artifact``, or a path keyed by the method name and a hash of the settings."""
    if cfg.calibration.get("artifact"):
        return Path(cfg.calibration.artifact)
    key = fingerprint({k: v for k, v in settings.items() if k != "sin"})
    return Path(cfg.paths.ckpt_dir) / "conversion" / f"{cfg.method.name}_{key}.pt"


def calibration_loader(cfg: DictConfig, splits, skip_batches: int = 0):
    """A seeded random order of training images (test transforms): an image-folder tree is
    sorted by class, so its first batches would all be one class."""
    g = torch.Generator().manual_seed(int(cfg.seed))
    order = torch.randperm(len(splits.calibration), generator=g).tolist()
    bs = int(cfg.calibration.batch_size)
    order = order[skip_batches * bs:]
    return make_loader(torch.utils.data.Subset(splits.calibration, order), bs, int(cfg.dataset.num_workers))


def run_convert(cfg: DictConfig) -> dict:
    """Calibrate lam, measure SIN and spike confidence, save the conversion artifact (convert.py)."""
    settings = conversion_settings(cfg)
    info = init_distributed(cfg.device)
    try:
        name = f"convert-{cfg.dataset.name}-{cfg.model.name}-{cfg.method.name}"
        with wandb_run(cfg.wandb, resolved_config(cfg), "convert", output_dir(cfg), name, enabled=info.is_main) as tr:
            return convert_stage(cfg, tr, info, settings)
    finally:
        cleanup(info)


def build_converted(ann, lam, settings: dict, device, v_init: Optional[Any] = None):
    """The SNN of a prepared ANN for the given settings (corrections are restored separately)."""
    v0 = settings["v_init"] if v_init is None else v_init
    if v0 is None:
        v0 = default_v_init(is_qcfs(ann), settings["balancing"])
    return build_snn(ann, lam, v_init=v0, max_spikes=settings["max_spikes"], **settings["threshold"]).to(device)


def convert_stage(cfg: DictConfig, tr, info, settings: Optional[dict] = None, dtype: torch.dtype = torch.float32) -> dict:
    settings = settings or conversion_settings(cfg)
    device = resolve_device(cfg.device, info)
    model, sha, ckpt_file = load_ann(ckpt_path(cfg, cfg.calibration.checkpoint), cfg_model_spec(cfg), device,
                                     pretrained=bool(cfg.model.get("pretrained", False)))
    splits = build_splits(cfg.dataset, seed=cfg.seed)
    check_splits(cfg, splits)
    ann = prepare_ann(model.to(dtype))
    t0 = time.time()
    loader = calibration_loader(cfg, splits)
    lam = compute_lam(ann, loader, settings["balancing"], settings["percentile"], settings["channelwise"],
                      settings["passes"] or 1, settings["num_batches"], progress=bool(cfg.progress))
    snn = build_converted(ann, lam, settings, device)
    correction = None
    if settings["correction"]:
        correction = apply_correction(settings["correction"], ann, snn, loader, settings["correction_T"],
                                      batches_used=settings["correction_batches"])
        log.info("%s correction for T=%d%s", settings["correction"], settings["correction_T"],
                 f" on {correction['samples']} images" if "samples" in correction else "")
    path = artifact_path(cfg, settings)
    artifact: dict[str, Any] = {
        "format_version": FORMAT_VERSION, "kind": "conversion", "ann_checkpoint": ckpt_file, "ann_sha256": sha,
        "model_spec": cfg_model_spec(cfg), "dataset": cfg.dataset.name, "layer_names": [s.name for s in ann.sites],
        "lam": [v.cpu() for v in lam], "settings": settings, "calibration": plain(cfg.calibration),
        "method": plain(cfg.method), "correction_state": correction_state(snn, settings["correction"]),
        "correction_report": correction, "sin": None, "commit": git_commit(), "hardware": hardware(),
        "command": job_command("convert.py"),
    }
    summary: dict[str, Any] = {"layers": artifact["layer_names"], "lam": [float(v.max()) for v in lam],
                               "calibration_s": time.time() - t0, "settings": settings, "correction": correction}
    if cfg.sin.enabled:
        skip = int(cfg.calibration.num_batches or 0)
        batch = next(iter(calibration_loader(cfg, splits, skip_batches=skip)), None)  # one batch beyond calibration
        if batch is None:  # fewer images than calibration batches: reuse the first batch
            batch = next(iter(calibration_loader(cfg, splits)))
        x = batch[0][: int(cfg.sin.batch_size)].to(device=device, dtype=dtype)
        mons = sin_statistics(ann, snn, x, int(cfg.sin.T))
        artifact["sin"] = sin_record(mons, int(cfg.sin.T), x.shape[0], cfg.method.threshold)
        sc = resolve_sc(plain(cfg.method.sc), artifact["sin"], len(mons), None, required=False)
        summary["sin"] = sin_summary(artifact["sin"], sc)
    summary.update(artifact=str(path), ann_sha256=sha, commit=artifact["commit"], hardware=artifact["hardware"],
                   command=artifact["command"])
    if info.is_main:
        atomic_save(artifact, path)
        out = output_dir(cfg)
        (out / "conversion.json").write_text(json.dumps(summary, indent=2, default=str))
        log_conversion(tr, artifact["layer_names"], lam, summary.get("sin"), out, path,
                       f"{cfg.model.name}, {cfg.dataset.name}, {cfg.method.threshold}",
                       f"conversion-{cfg.dataset.name}-{cfg.model.name}")
        log.info("saved conversion artifact %s (%d spiking layers)", path, len(lam))
    return summary
