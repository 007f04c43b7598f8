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


def model_spec(name: str, num_classes: int, in_channels: int, width: float) -> dict:
    return dict(name=str(name), num_classes=int(num_classes), in_channels=int(in_channels), width=float(width))


def check_model_spec(saved: Mapping[str, Any], wanted: Mapping[str, Any], path: str | os.PathLike) -> None:
    """Refuse a checkpoint saved for another architecture, class count, input or width."""
    keys = ["name", "num_classes", "in_channels", "width"] + sorted(set(saved) | set(wanted) - {
        "name", "num_classes", "in_channels", "width"})
    diffs = [f"{k}: checkpoint has {saved.get(k)!r}, config asks for {wanted.get(k)!r}"
             for k in keys if saved.get(k) != wanted.get(k)]
    if diffs:
        raise CheckpointError(f"checkpoint {str(path)!r} does not fit this model ({'; '.join(diffs)})")


KIND_SOURCES = {"ann": "train_ann.py", "mt_snn": "train_snn.py"}


def load_ann_checkpoint(path: str | os.PathLike, wanted_spec: Optional[Mapping[str, Any]] = None,
                        kind: str = "ann") -> dict:
    """Load a train_ann.py (``kind="ann"``) or train_snn.py (``"mt_snn"``) checkpoint; with
    ``wanted_spec``, check that it fits the configured model."""
    ckpt = safe_load(path, "checkpoint")
    found = ckpt.get("kind")
    if found != kind:
        raise CheckpointError(
            f"{str(path)!r} is a {found!r} checkpoint (from {KIND_SOURCES.get(found, '?')}), not a {kind!r} "
            f"checkpoint from {KIND_SOURCES[kind]}"
        )
    if wanted_spec is not None:
        check_model_spec(ckpt["model_spec"], wanted_spec, path)
    return ckpt
