"""CIFAR-10's JPEG folder as two packed parts that travel to a GPU machine.

The folder holds 60,000 small files; a tar would add 512 bytes to each. A part is one file
of raw JPEG bytes back to back (``<part>.bin``) and a JSON index of offsets, lengths and
labels per split (``<part>.json``):

- ``cifar10_eval``: the 10,000 test images and the calibration images (the first
  ``calibration`` training images of a seeded permutation), about 10 MiB;
- ``cifar10_train``: the other training images (about 43 MiB).

A run that only evaluates carries the first part; one that trains carries both. On the GPU
:func:`decode` turns a split into one uint8 tensor ``[N, 3, 32, 32]`` in device memory with
torchvision's batched JPEG decoder (nvJPEG on CUDA, libjpeg-turbo on the CPU).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Optional

import torch

from ..data import CIFAR10_CLASSES

PARTS = {"eval": "cifar10_eval", "train": "cifar10_train"}


class PackedDataError(ValueError):
    pass


def jpeg_files(root: Path, split: str) -> list[tuple[Path, int]]:
    """``root/split/<class>/*.jpg`` in the standard CIFAR-10 class order, files sorted."""
    d = Path(root) / split
    if not d.is_dir():
        raise PackedDataError(f"no {split}/ folder under {root}: expected the CIFAR-10 JPEG tree "
                              f"{root}/{{train,test}}/<class>/*.jpg")
    missing = [c for c in CIFAR10_CLASSES if not (d / c).is_dir()]
    if missing:
        raise PackedDataError(f"{d} lacks the class folders {missing}")
    return [(p, label) for label, c in enumerate(CIFAR10_CLASSES) for p in sorted((d / c).glob("*.jpg"))]


def write_part(prefix: Path, splits: dict[str, list[tuple[Path, int]]]) -> dict:
    """Pack the files of every split into ``prefix.bin`` + ``prefix.json``; returns the index."""
    prefix = Path(prefix)
    prefix.parent.mkdir(parents=True, exist_ok=True)
    index, offset = {}, 0
    tmp = prefix.with_name(prefix.name + ".bin.tmp")
    with open(tmp, "wb") as f:
        for name, items in splits.items():
            offs, lens, labels = [], [], []
            for path, label in items:
                data = Path(path).read_bytes()
                f.write(data)
                offs.append(offset)
                lens.append(len(data))
                labels.append(int(label))
                offset += len(data)
            index[name] = {"offsets": offs, "lengths": lens, "labels": labels}
    os.replace(tmp, prefix.with_suffix(".bin"))
    meta = {"format": "msat-packed-jpeg/1", "classes": list(CIFAR10_CLASSES), "bytes": offset, "splits": index}
    prefix.with_suffix(".json").write_text(json.dumps(meta))
    return meta


def pack_cifar10(root: Path, out: Path, calibration: int = 1280, seed: int = 0,
                 limit: Optional[int] = None) -> dict[str, Path]:
    """Write both parts under ``out``. ``limit``: at most this many images per split (tests)."""
    test, train = jpeg_files(root, "test"), jpeg_files(root, "train")
    if limit is not None:
        g = torch.Generator().manual_seed(seed)
        test = [test[i] for i in sorted(torch.randperm(len(test), generator=g)[:limit].tolist())]
        train = [train[i] for i in sorted(torch.randperm(len(train), generator=g)[:limit].tolist())]
    if calibration > len(train):
        raise PackedDataError(f"{calibration} calibration images asked for, the training set has {len(train)}")
    perm = torch.randperm(len(train), generator=torch.Generator().manual_seed(seed)).tolist()
    cal, rest = [train[i] for i in perm[:calibration]], [train[i] for i in perm[calibration:]]
    out = Path(out)
    write_part(out / PARTS["eval"], {"test": test, "calibration": cal})
    write_part(out / PARTS["train"], {"train": rest})
    return {k: out / v for k, v in PARTS.items()}


def read_index(prefix: Path) -> dict:
    prefix = Path(prefix)
    j, b = prefix.with_suffix(".json"), prefix.with_suffix(".bin")
    if not (j.is_file() and b.is_file()):
        raise PackedDataError(f"packed data {prefix}.{{bin,json}} not found: make it with "
                              "python -m msat.harness.gpu.cli pack --data <cifar10-jpeg> --packed <folder>")
    meta = json.loads(j.read_text())
    if meta.get("format") != "msat-packed-jpeg/1":
        raise PackedDataError(f"{j} is not an index of packed JPEG files")
    if b.stat().st_size != meta["bytes"]:
        raise PackedDataError(f"{b} has {b.stat().st_size} bytes, its index says {meta['bytes']}: repack it")
    return meta


def decode(prefix: Path, split: str, device: torch.device | str = "cpu", chunk: int = 4096):
    """(images uint8 [N, 3, 32, 32] on ``device``, labels int64 [N]) of one split of a part."""
    meta = read_index(prefix)
    if split not in meta["splits"]:
        raise PackedDataError(f"{prefix} has the splits {sorted(meta['splits'])}, not {split!r}")
    s = meta["splits"][split]
    raw = torch.frombuffer(bytearray(Path(prefix).with_suffix(".bin").read_bytes()), dtype=torch.uint8)
    from torchvision.io import decode_jpeg

    parts = []
    for i in range(0, len(s["offsets"]), chunk):
        files = [raw[o:o + n] for o, n in zip(s["offsets"][i:i + chunk], s["lengths"][i:i + chunk])]
        parts.append(torch.stack(decode_jpeg(files, device=device)))
    images = torch.cat(parts) if parts else torch.empty(0, 3, 32, 32, dtype=torch.uint8, device=device)
    return images, torch.tensor(s["labels"], dtype=torch.int64, device=device)
