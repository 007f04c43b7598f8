"""What the task modules share: the error wrapper, output paths, the job command, config views,
and the frame of a converted net's stage (distributed setup, W&B run, clean-up).

Only the tasks read the whole Hydra config; they hand plain arguments or one sub-config to
the library.
"""

from __future__ import annotations

import logging
import os
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Optional

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import MissingMandatoryValue

from .. import config as _config  # noqa: F401  (registers the schemas and resolvers)
from ..checkpoint import model_spec
from ..distributed import cleanup, init_distributed
from ..tracking import wandb_run
from ..training import TrainingInterrupted

log = logging.getLogger("msat")


def _hydra_config():
    try:
        from hydra.core.hydra_config import HydraConfig

        return HydraConfig.get()
    except Exception:  # composed without a Hydra run (tests, notebooks)
        return None


def output_dir(cfg: DictConfig) -> Path:
    try:
        out = Path(cfg.paths.output_dir)
    except Exception:  # composed without a Hydra run (tests): fall back to the root
        out = Path(cfg.paths.root) / "runs" / "compose"
    out.mkdir(parents=True, exist_ok=True)
    return out


def experiment_name(cfg: DictConfig) -> Optional[str]:
    hc = _hydra_config()
    if hc is not None:
        return hc.runtime.choices.get("experiment")
    return cfg.get("experiment_name")


def resolved_config(cfg: DictConfig) -> dict:
    """The resolved config, without the hydra-runtime interpolations that fail outside a run."""
    c = OmegaConf.to_container(cfg, resolve=False)
    c.get("paths", {}).pop("output_dir", None)
    return OmegaConf.to_container(OmegaConf.create(c), resolve=True)


def run_stage(cfg: DictConfig, job: str, prefix: str, stage: Callable[..., dict], settings: Any) -> dict:
    """``stage(cfg, tracker, info, settings)`` inside the process group and the W&B run
    ``{prefix}-{dataset}-{model}-{method}`` of job ``job``, the group cleaned up however it ends
    (convert.py and evaluate.py)."""
    info = init_distributed(cfg.device)
    try:
        name = f"{prefix}-{cfg.dataset.name}-{cfg.model.name}-{cfg.method.name}"
        with wandb_run(cfg.wandb, resolved_config(cfg), job, output_dir(cfg), name, enabled=info.is_main) as tr:
            return stage(cfg, tr, info, settings)
    finally:
        cleanup(info)


def ckpt_path(cfg: DictConfig, name: str) -> Path:
    p = Path(name)
    return p if p.is_absolute() or p.parent != Path(".") else Path(cfg.paths.ckpt_dir) / p


AUDIO_MODELS = ("m5",)  # 1-D nets on waveforms


def check_model_fits_data(cfg: DictConfig) -> None:
    """A 1-D (waveform) model needs an audio dataset and an image model an image dataset."""
    audio_model = cfg.model.name in AUDIO_MODELS
    audio_data = cfg.dataset.get("kind", "image") == "audio"
    if audio_model != audio_data:
        what = "1-D waveforms (an audio dataset: dataset=speech_commands or synthetic_words)" if audio_model else \
            "images (an image dataset: digits, fashion_mnist, cifar10, cifar100, imagenet)"
        raise ValueError(f"model={cfg.model.name} takes {what}, but dataset={cfg.dataset.name} gives "
                         f"{'waveforms' if audio_data else 'images'}; choose a matching model or dataset")


def cfg_model_spec(cfg: DictConfig) -> dict:
    check_model_fits_data(cfg)
    m = cfg.model
    return model_spec(m.name, cfg.dataset.num_classes, cfg.dataset.in_channels, m.width, m.get("activation", "relu"),
                      m.get("levels"), m.get("lam_init"))


def check_splits(cfg: DictConfig, splits) -> None:
    if splits.num_classes != cfg.dataset.num_classes or splits.in_channels != cfg.dataset.in_channels:
        raise ValueError(
            f"dataset {cfg.dataset.name}: found {splits.num_classes} classes / {splits.in_channels} channels, "
            f"config says {cfg.dataset.num_classes} / {cfg.dataset.in_channels}"
        )


def job_command(script: str) -> str:
    hc = _hydra_config()
    if hc is not None:
        return " ".join([f"python {script}"] + list(hc.overrides.task))
    return " ".join(["python", script] + sys.argv[1:])


def in_multirun() -> bool:
    hc = _hydra_config()
    if hc is None:
        return False
    from hydra.types import RunMode

    return hc.mode == RunMode.MULTIRUN


@contextmanager
def user_errors():
    """Turn input errors into one clear line and exit status 2 (tracebacks with MSAT_DEBUG=1).

    In a Hydra multirun the exception is re-raised instead, so that Hydra records the
    failed job and carries on with the next one. The line also goes to the job's log."""
    try:
        yield
    except TrainingInterrupted as exc:
        log.warning("%s", exc)
        print(f"\n{exc}", file=sys.stderr)
        sys.exit(128 + int(exc.signum))
    except (ValueError, FileNotFoundError, NotADirectoryError, TypeError, MissingMandatoryValue) as exc:
        if os.environ.get("MSAT_DEBUG") or in_multirun():
            raise
        log.error("%s", exc)
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
