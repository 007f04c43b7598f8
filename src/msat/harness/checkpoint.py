"""Checkpoints and conversion artifacts: atomic writes, safe loads, clear errors.

Files are written to a temporary name in the same folder, flushed, fsynced and renamed,
so a crash never leaves a half-written checkpoint under the real name. Files are loaded
with ``torch.load(weights_only=True)``: only tensors and plain containers are accepted.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import warnings
from pathlib import Path
from typing import Any, Mapping, Optional

import torch

FORMAT_VERSION = 1


class CheckpointError(ValueError):
    """A checkpoint or artifact is missing, corrupt, or does not fit the request."""


def atomic_save(obj: Any, path: str | os.PathLike) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def file_sha256(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def safe_load(path: str | os.PathLike, what: str = "checkpoint", map_location: Any = "cpu") -> dict:
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"{what} not found: {str(path)!r}")
    if path.is_dir():
        raise CheckpointError(f"{what} path {str(path)!r} is a directory, not a file")
    try:
        with warnings.catch_warnings():  # a damaged file gets our error below, not torch's protocol warning
            warnings.filterwarnings("ignore", message="Detected pickle protocol")
            obj = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # damaged bytes can make the unpickler raise almost anything (IndexError, KeyError, ...)
        raise CheckpointError(f"{what} {str(path)!r} is corrupt, truncated or not a torch file: {exc}") from exc
    if not isinstance(obj, dict) or "format_version" not in obj:
        raise CheckpointError(f"{what} {str(path)!r} was not written by this project")
    return obj


def model_spec(name: str, num_classes: int, in_channels: int, width: float, activation: str = "relu",
               levels: Optional[int] = None, lam_init: Optional[float] = None) -> dict:
    """The arguments of ``create_model`` that a checkpoint records (activation only when not ReLU,
    so that ReLU checkpoints of every version compare equal)."""
    spec = dict(name=str(name), num_classes=int(num_classes), in_channels=int(in_channels), width=float(width))
    if activation != "relu":
        spec.update(activation=str(activation), levels=None if levels is None else int(levels))
        if lam_init is not None:
            spec["lam_init"] = float(lam_init)
    return spec


def check_model_spec(saved: Mapping[str, Any], wanted: Mapping[str, Any], path: str | os.PathLike) -> None:
    """Refuse a checkpoint saved for another architecture, class count, input or width."""
    first = ["name", "num_classes", "in_channels", "width"]
    keys = first + sorted((set(saved) | set(wanted)) - set(first))
    diffs = [f"{k}: checkpoint has {saved.get(k)!r}, config asks for {wanted.get(k)!r}"
             for k in keys if saved.get(k) != wanted.get(k)]
    if diffs:
        raise CheckpointError(f"checkpoint {str(path)!r} does not fit this model ({'; '.join(diffs)})")


ACTIVATION_KEYS = ("activation", "levels", "lam_init")


def load_init_weights(model: torch.nn.Module, ckpt: Mapping[str, Any], wanted_spec: Mapping[str, Any],
                      path: str | os.PathLike) -> None:
    """Start a fine-tuning run from the weights of ``ckpt`` (``train.init_from``).

    The architecture, class count, input and width must match. The activation may differ: a
    ReLU net can start a QCFS net of the same layout, whose scales ``lam`` then keep their
    initial value (and the reverse drops them). Any other missing or extra weight is an error."""
    base = lambda spec: {k: v for k, v in spec.items() if k not in ACTIVATION_KEYS}  # noqa: E731
    check_model_spec(base(ckpt["model_spec"]), base(wanted_spec), path)
    missing, unexpected = model.load_state_dict(ckpt["model"], strict=False)
    odd = [k for k in list(missing) + list(unexpected) if not k.endswith(".lam")]
    if odd:
        raise CheckpointError(f"checkpoint {str(path)!r} does not fit this model: weights {odd[:5]} are missing or extra")


KIND_SOURCES = {"ann": "train_ann.py", "mt_snn": "train_snn.py", "conversion": "convert.py",
                "eval_partial": "evaluate.py"}


def load_ann_checkpoint(path: str | os.PathLike, wanted_spec: Optional[Mapping[str, Any]] = None,
                        kind: str = "ann") -> dict:
    """Load a train_ann.py (``kind="ann"``) or train_snn.py (``"mt_snn"``) checkpoint; with
    ``wanted_spec``, check that it fits the configured model."""
    ckpt = safe_load(path, "checkpoint")
    found = ckpt.get("kind")
    if found is None or "model_spec" not in ckpt:
        raise CheckpointError(f"{str(path)!r} is a torch file of this project but not a model checkpoint "
                              f"(kind={found!r}); pass a train_ann.py checkpoint (last.pt or best.pt)")
    if found != kind:
        raise CheckpointError(
            f"{str(path)!r} is a {found!r} checkpoint (from {KIND_SOURCES.get(found, '?')}), not a {kind!r} "
            f"checkpoint from {KIND_SOURCES[kind]}"
        )
    if wanted_spec is not None:
        check_model_spec(ckpt["model_spec"], wanted_spec, path)
    return ckpt


def load_network(path: str | os.PathLike, spec: Optional[Mapping[str, Any]] = None, kind: str = "ann",
                 device: torch.device | str = "cpu") -> tuple[torch.nn.Module, dict]:
    """(the net, the checkpoint) of a ``train_ann.py`` (``kind="ann"``) or ``train_snn.py``
    (``"mt_snn"``) checkpoint, in eval mode, loaded with ``weights_only=True``; with ``spec``, the
    checkpoint must fit that model. The one model loader of the project."""
    from ..models import create_model

    ckpt = load_ann_checkpoint(path, spec, kind=kind)
    try:
        model = create_model(**ckpt["model_spec"])
        model.load_state_dict(ckpt["model"])
    except (KeyError, RuntimeError, TypeError, ValueError) as exc:
        raise CheckpointError(f"checkpoint {str(path)!r} does not hold a loadable {KIND_SOURCES[kind]} model: {exc}") from exc
    return model.to(device).eval(), ckpt


def load_ann(path: str | os.PathLike, spec: Mapping[str, Any], device: torch.device | str = "cpu",
             pretrained: bool = False):
    """(model, checkpoint sha256, checkpoint path) for a train_ann.py checkpoint that must fit
    ``spec`` (the ``create_model`` arguments); ``pretrained``: timm's weights when the file is
    missing (ResNet34)."""
    path = Path(path)
    if not path.exists() and pretrained:
        from ..models import create_model

        model = create_model(**spec, pretrained=True)
        return model.to(device).eval(), f"pretrained:timm/{spec['name']}", "pretrained"
    if not path.exists():
        raise CheckpointError(
            f"ANN checkpoint not found: {str(path)!r}. Train it first (python train_ann.py with the same "
            f"dataset/model/seed overrides) or point calibration.checkpoint at a file"
        )
    return load_network(path, spec, "ann", device)[0], file_sha256(path), str(path)


def load_model(path: str | os.PathLike, device: torch.device | str = "cpu"):
    """The ANN of any ``train_ann.py`` checkpoint, in eval mode (loaded with ``weights_only=True``).

    A missing, corrupt or foreign file, or a ``train_snn.py`` checkpoint, raises a
    :class:`CheckpointError` that names the file and what it is."""
    return load_network(path, None, "ann", device)[0]


def export_weights(path: str | os.PathLike, out: str | os.PathLike, half: bool = False) -> Path:
    """A slim copy of a train_ann.py checkpoint: the model and its spec only (no optimizer
    state), optionally in float16, still loadable by :func:`load_model`."""
    ckpt = load_ann_checkpoint(path, None, kind="ann")
    state = {k: (v.half() if half and v.is_floating_point() else v) for k, v in ckpt["model"].items()}
    slim = {k: ckpt[k] for k in ("format_version", "kind", "model_spec", "epoch", "best_acc", "history", "seed", "train",
                                 "init_from", "init_epochs") if k in ckpt}
    if ckpt.get("init_from") and "init_epochs" not in ckpt and Path(ckpt["init_from"]).exists():
        slim["init_epochs"] = int(load_ann_checkpoint(ckpt["init_from"], None, kind="ann")["epoch"])  # older runs
    slim.update(model=state, exported_from=Path(path).name, dtype="float16" if half else "float32")
    return atomic_save(slim, out)


def load_artifact(path: str | os.PathLike, ann_sha256: str) -> dict:
    """A convert.py artifact made from the checkpoint with this sha256."""
    art = safe_load(path, "conversion artifact")
    if art.get("kind") != "conversion":
        raise CheckpointError(f"{path} is not a conversion artifact from convert.py")
    if "recipe" not in art:
        raise CheckpointError(f"conversion artifact {str(path)!r} was written by an older version of msat (it holds no "
                              "recipe); rerun convert.py")
    if art["ann_sha256"] != ann_sha256:
        raise CheckpointError(
            f"conversion artifact {str(path)!r} was made from another ANN checkpoint (sha256 "
            f"{art['ann_sha256'][:12]}..., the checkpoint now is {ann_sha256[:12]}...); rerun convert.py"
        )
    return art
