"""Datasets and loaders: bundled digits, Fashion-MNIST, CIFAR-10/100 (torchvision or JPEG
folders) and ImageNet folders.

Every dataset gives train, test and calibration splits; calibration uses training images
with the test-time transforms (spec section 1.3). Training augmentation is seeded per
(seed, epoch, sample), so a run is reproducible whatever the number of workers, and a
resumed run sees exactly the batches an uninterrupted one would.
"""

from __future__ import annotations

import gzip
import math
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Optional, Sequence

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset, Sampler

DATASET_NAMES = ("digits", "fashion_mnist", "cifar10", "cifar100", "imagenet", "speech_commands", "synthetic_words")
AUDIO_DATASETS = ("speech_commands", "synthetic_words")
CIFAR10_NORMALIZATION = {"mean": [0.4914, 0.4822, 0.4465], "std": [0.2470, 0.2435, 0.2616]}  # conf/dataset/cifar10.yaml
CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
FASHION_MNIST_SYSTEM_DIR = "/usr/share/datasets/fashion-mnist"
FASHION_MNIST_FILES = (
    "train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte",
)
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp")


class DatasetError(ValueError):
    """A dataset cannot be found or read; the message says what to do."""


@dataclass
class DataSplits:
    train: Dataset  # augmented; items are (image, label)
    test: Dataset
    calibration: Dataset  # training images, test transforms
    num_classes: int
    in_channels: int
    image_size: int


# --------------------------------------------------------------------- transforms
class Cutout:
    """Zero one ``size`` x ``size`` square at a random centre (DeVries & Taylor 2017),
    applied after normalisation, so the hole is the mean colour."""

    def __init__(self, size: int):
        self.size = int(size)

    def __call__(self, img: torch.Tensor) -> torch.Tensor:
        if self.size <= 0:
            return img
        h, w = img.shape[-2:]
        cy, cx = int(torch.randint(h, ())), int(torch.randint(w, ()))
        y0, y1 = max(0, cy - self.size // 2), min(h, cy + self.size // 2 + self.size % 2)
        x0, x1 = max(0, cx - self.size // 2), min(w, cx + self.size // 2 + self.size % 2)
        img = img.clone()
        img[..., y0:y1, x0:x1] = 0
        return img

    def __repr__(self) -> str:
        return f"Cutout(size={self.size})"


def build_transforms(aug: Mapping[str, Any], mean, std, image_size: int, pil: bool, imagenet: bool = False):
    """(train transform, test transform). ``pil``: inputs are PIL images, else CxHxW tensors in [0, 1]."""
    from torchvision import transforms as T

    to_tensor = [T.ToTensor()] if pil else []
    norm = T.Normalize(mean, std)
    if imagenet:
        train = [T.RandomResizedCrop(image_size)]
        if aug.get("flip", True):
            train.append(T.RandomHorizontalFlip())
        test = [T.Resize(int(round(image_size * 256 / 224))), T.CenterCrop(image_size)]
        return T.Compose(train + to_tensor + [norm]), T.Compose(test + to_tensor + [norm])
    train = []
    pad = int(aug.get("crop_padding", 0) or 0)
    if pad > 0:
        train.append(T.RandomCrop(image_size, padding=pad))
    if aug.get("flip", False):
        train.append(T.RandomHorizontalFlip())
    if aug.get("rotation", 0) or aug.get("translate", 0):
        shift = float(aug.get("translate", 0) or 0)
        train.append(T.RandomAffine(float(aug.get("rotation", 0) or 0), translate=(shift, shift) if shift else None))
    if aug.get("autoaugment", False):
        if not pil:
            raise DatasetError("autoaugment needs image inputs (cifar10, cifar100)")
        train.append(T.AutoAugment(T.AutoAugmentPolicy.CIFAR10))
    train += to_tensor + [norm]
    if aug.get("cutout", 0):
        train.append(Cutout(aug["cutout"]))
    return T.Compose(train), T.Compose(to_tensor + [norm])


class TransformedDataset(Dataset):
    """Applies a transform to a base dataset's images. With ``seed`` set, the transform
    of sample i in epoch e draws from an RNG seeded by (seed, e, i) and leaves the global
    RNG untouched."""

    def __init__(self, base: Dataset, transform: Optional[Callable], seed: Optional[int] = None):
        self.base = base
        self.transform = transform
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, i: int):
        img, label = self.base[i]
        if self.transform is None:
            return img, label
        if self.seed is None:
            return self.transform(img), label
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(((self.seed * 1_000_003 + self.epoch) * 10_000_019 + int(i)) % (2**63))
            return self.transform(img), label


class TensorImages(Dataset):
    def __init__(self, images: torch.Tensor, labels: torch.Tensor):
        self.images, self.labels = images, labels

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int):
        return self.images[i], int(self.labels[i])


class ImageFiles(Dataset):
    """(path, label) list read with PIL, RGB."""

    def __init__(self, samples: Sequence[tuple[str, int]]):
        self.samples = list(samples)

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int):
        from PIL import Image

        path, label = self.samples[i]
        with Image.open(path) as im:
            return im.convert("RGB"), label


def subset(ds: Dataset, n: Optional[int], seed: int = 0) -> Dataset:
    """A fixed random subset of ``n`` samples (the same for every run with this seed)."""
    if n is None or n >= len(ds):
        return ds
    if n < 1:
        raise DatasetError(f"subset size must be >= 1, got {n}")
    g = torch.Generator().manual_seed(seed)
    idx = torch.randperm(len(ds), generator=g)[:n].sort().values.tolist()
    return torch.utils.data.Subset(ds, idx)


# --------------------------------------------------------------------- sources
def _check_root(root: str | os.PathLike, name: str) -> Path:
    path = Path(root).expanduser()
    if not path.exists():
        raise DatasetError(f"{name}: dataset root {str(path)!r} does not exist")
    if not path.is_dir():
        raise DatasetError(f"{name}: dataset root {str(path)!r} is not a directory")
    return path


def load_digits_tensors(image_size: int, test_fraction: float = 0.2):
    """scikit-learn's bundled 8x8 digits, scaled to [0, 1], resized, split 80/20 (stratified, fixed)."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    d = load_digits()
    x = torch.tensor(d.images, dtype=torch.float32).unsqueeze(1) / 16.0
    if image_size != 8:
        x = F.interpolate(x, size=(image_size, image_size), mode="bilinear", align_corners=False).clamp_(0, 1)
    y = torch.tensor(d.target, dtype=torch.long)
    tr, te = train_test_split(range(len(y)), test_size=test_fraction, random_state=0, stratify=d.target)
    return (x[tr], y[tr]), (x[te], y[te])


def find_fashion_mnist(root: Path, download: bool) -> None:
    """Make sure ``root/FashionMNIST/raw`` holds the four unpacked idx files."""
    raw = root / "FashionMNIST" / "raw"
    if all((raw / f).exists() for f in FASHION_MNIST_FILES):
        return
    system = Path(os.environ.get("MSAT_FASHION_MNIST_DIR", FASHION_MNIST_SYSTEM_DIR))
    if all((system / f"{f}.gz").exists() for f in FASHION_MNIST_FILES):
        raw.mkdir(parents=True, exist_ok=True)
        for f in FASHION_MNIST_FILES:
            tmp = raw / f"{f}.tmp"
            with gzip.open(system / f"{f}.gz", "rb") as src, open(tmp, "wb") as dst:
                shutil.copyfileobj(src, dst)
            os.replace(tmp, raw / f)
        return
    if not download:
        raise DatasetError(
            f"fashion_mnist: not found under {raw} or {system}. Install Debian's package "
            f"'dataset-fashion-mnist' (apt-get install dataset-fashion-mnist) or set dataset.download=true"
        )


def fashion_mnist_available() -> bool:
    system = Path(os.environ.get("MSAT_FASHION_MNIST_DIR", FASHION_MNIST_SYSTEM_DIR))
    return all((system / f"{f}.gz").exists() for f in FASHION_MNIST_FILES)


def image_folder_samples(split_dir: Path, classes: Optional[Sequence[str]]) -> tuple[list[tuple[str, int]], list[str]]:
    """Scan ``split_dir/<class>/*``; with ``classes`` given, use exactly that label order."""
    if not split_dir.is_dir():
        raise DatasetError(f"image folder {str(split_dir)!r} does not exist")
    found = sorted(d.name for d in split_dir.iterdir() if d.is_dir())
    if classes is None:
        classes = found
    elif sorted(classes) != found:
        raise DatasetError(
            f"{split_dir}: class folders {found} do not match the expected classes {sorted(classes)}"
        )
    samples = []
    for label, c in enumerate(classes):
        files = sorted(f for f in os.listdir(split_dir / c) if f.lower().endswith(IMAGE_EXTENSIONS))
        samples += [(str(split_dir / c / f), label) for f in files]
    if not samples:
        raise DatasetError(f"image folder {str(split_dir)!r} has no images")
    return samples, list(classes)


def build_splits(cfg: Mapping[str, Any], seed: int = 0) -> DataSplits:
    """Build the train/test/calibration datasets described by a ``dataset`` config."""
    from torchvision import datasets as tvd

    name = cfg["name"]
    if name not in DATASET_NAMES:
        raise DatasetError(f"unknown dataset {name!r}; choose one of {', '.join(DATASET_NAMES)}")
    if name in AUDIO_DATASETS:
        return build_audio_splits(cfg, seed)
    aug = dict(cfg.get("augment") or {})
    size = int(cfg["image_size"])
    mean, std = list(cfg["mean"]), list(cfg["std"])
    root = cfg.get("root")
    download = bool(cfg.get("download", False))

    if name == "digits":
        (xtr, ytr), (xte, yte) = load_digits_tensors(size)
        base_train, base_test, pil = TensorImages(xtr, ytr), TensorImages(xte, yte), False
        classes, channels = 10, 1
    elif name == "fashion_mnist":
        path = Path(root).expanduser()
        path.mkdir(parents=True, exist_ok=True)
        find_fashion_mnist(path, download)
        tr = tvd.FashionMNIST(str(path), train=True, download=download)
        te = tvd.FashionMNIST(str(path), train=False, download=download)
        to = lambda d: TensorImages(d.data.unsqueeze(1).float().div_(255), d.targets)  # noqa: E731
        base_train, base_test, pil = to(tr), to(te), False
        classes, channels = 10, 1
    elif name in ("cifar10", "cifar100"):
        classes, channels, pil = (10 if name == "cifar10" else 100), 3, True
        path = Path(root).expanduser()
        fmt = cfg.get("format", "auto")
        if fmt == "auto":
            fmt = "imagefolder" if (path / "train").is_dir() and (path / "test").is_dir() else "torchvision"
        if fmt == "imagefolder":
            _check_root(path, name)
            order = CIFAR10_CLASSES if name == "cifar10" else None
            tr_s, cls = image_folder_samples(path / "train", order)
            te_s, _ = image_folder_samples(path / "test", cls)
            if len(cls) != classes:
                raise DatasetError(f"{name}: found {len(cls)} classes in {path}, expected {classes}")
            base_train, base_test = ImageFiles(tr_s), ImageFiles(te_s)
        elif fmt == "torchvision":
            if not download:
                _check_root(path, name)
            cls_ = tvd.CIFAR10 if name == "cifar10" else tvd.CIFAR100
            try:
                base_train = cls_(str(path), train=True, download=download)
                base_test = cls_(str(path), train=False, download=download)
            except RuntimeError as exc:
                raise DatasetError(f"{name}: {exc} (root {str(path)!r}; set dataset.download=true to fetch it)") from exc
        else:
            raise DatasetError(f"{name}: unknown format {fmt!r} (auto, torchvision, imagefolder)")
    else:  # imagenet
        path = _check_root(root, name)
        val = path / "val" if (path / "val").is_dir() else path / "test"
        tr_s, cls = image_folder_samples(path / "train", None)
        te_s, _ = image_folder_samples(val, cls)
        base_train, base_test, pil = ImageFiles(tr_s), ImageFiles(te_s), True
        classes, channels = len(cls), 3

    if len(base_train) == 0 or len(base_test) == 0:
        raise DatasetError(f"{name}: the dataset under {root!r} is empty")
    train_tf, test_tf = build_transforms(aug, mean, std, size, pil, imagenet=name == "imagenet")
    base_train = subset(base_train, cfg.get("max_train_samples"), seed=0)
    base_test = subset(base_test, cfg.get("max_test_samples"), seed=0)
    return DataSplits(
        train=TransformedDataset(base_train, train_tf, seed=seed),
        test=TransformedDataset(base_test, test_tf),
        calibration=TransformedDataset(base_train, test_tf),
        num_classes=classes,
        in_channels=channels,
        image_size=size,
    )


# --------------------------------------------------------------------- loaders
class EpochBatchSampler(Sampler[list[int]]):
    """Index batches of one epoch: a permutation seeded by (seed, epoch), sharded over
    ``world`` ranks, starting at batch ``start`` (to resume mid-epoch)."""

    def __init__(self, n: int, batch_size: int, seed: int, shuffle: bool = True, drop_last: bool = True,
                 rank: int = 0, world: int = 1):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.n, self.batch_size, self.seed = n, batch_size, seed
        self.shuffle, self.drop_last, self.rank, self.world = shuffle, drop_last, rank, world
        self.epoch, self.start = 0, 0

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        self.epoch, self.start = int(epoch), int(start)

    def _indices(self) -> list[int]:
        if self.shuffle:
            g = torch.Generator().manual_seed(self.seed * 7919 + self.epoch)
            idx = torch.randperm(self.n, generator=g).tolist()
        else:
            idx = list(range(self.n))
        per_rank = math.ceil(self.n / self.world)
        idx += idx[: per_rank * self.world - self.n]  # pad so every rank gets the same count
        return idx[self.rank :: self.world]

    def __len__(self) -> int:
        per_rank = math.ceil(self.n / self.world)
        full = per_rank // self.batch_size if self.drop_last else math.ceil(per_rank / self.batch_size)
        return max(0, full - self.start)

    def __iter__(self) -> Iterator[list[int]]:
        idx = self._indices()
        total = len(self) + self.start
        for b in range(self.start, total):
            yield idx[b * self.batch_size : (b + 1) * self.batch_size]


def make_loader(ds: Dataset, batch_size: int, num_workers: int = 0, sampler: Optional[EpochBatchSampler] = None,
                pin_memory: bool = False) -> DataLoader:
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    kw: dict[str, Any] = dict(num_workers=num_workers, pin_memory=pin_memory)
    if num_workers > 0:
        kw["persistent_workers"] = False
    if sampler is not None:
        return DataLoader(ds, batch_sampler=sampler, **kw)
    return DataLoader(ds, batch_size=batch_size, shuffle=False, **kw)


# --------------------------------------------------------------------- spoken words (1-D)
class TimeShift:
    """Roll a waveform by a random shift of up to ``fraction`` of its length (training)."""

    def __init__(self, fraction: float):
        self.fraction = float(fraction)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        n = int(self.fraction * x.shape[-1])
        if n <= 0:
            return x
        return torch.roll(x, int(torch.randint(-n, n + 1, ())), dims=-1)


def build_audio_splits(cfg: Mapping[str, Any], seed: int = 0) -> DataSplits:
    """Speech Commands (``root/<word>/*.wav`` + split lists) or the synthetic espeak-ng set,
    as ``[1, samples]`` waveforms of ``dataset.seconds`` at ``dataset.sample_rate``."""
    from .speech import (
        DIGIT_WORDS,
        SAMPLE_RATE,
        SPEECH_COMMANDS_10,
        SPEECH_COMMANDS_35,
        SpeechDataError,
        WaveformFiles,
        make_synthetic_words,
        speech_folder_samples,
    )

    name = cfg["name"]
    words = cfg.get("words", 35)
    if name == "synthetic_words":
        words = list(DIGIT_WORDS)
        if cfg.get("root") is None:
            raise DatasetError("synthetic_words: set dataset.root to the folder to generate the set into")
        try:
            root = make_synthetic_words(Path(cfg["root"]).expanduser(), words, seed=int(cfg.get("generator_seed", 0)))
        except SpeechDataError as exc:
            raise DatasetError(str(exc)) from exc
    else:
        words = list(SPEECH_COMMANDS_35 if words in (35, "35") else SPEECH_COMMANDS_10 if words in (10, "10")
                     else words)
        root = _check_root(cfg.get("root") or "", name)
    rate = int(cfg.get("sample_rate", SAMPLE_RATE))
    length = int(round(float(cfg.get("seconds", 1.0)) * rate))
    resample_input = bool(cfg.get("resample", rate != SAMPLE_RATE))
    if rate != SAMPLE_RATE and not resample_input:
        raise DatasetError(f"{name}: sample_rate={rate} needs dataset.resample=true (the files are {SAMPLE_RATE} Hz)")
    try:
        splits = speech_folder_samples(Path(root), words)
    except SpeechDataError as exc:
        raise DatasetError(str(exc)) from exc
    if int(cfg["num_classes"]) != len(words):
        raise DatasetError(f"{name}: {len(words)} words, but dataset.num_classes={cfg['num_classes']}")
    make = lambda items: WaveformFiles(items, length, rate, resample_input)  # noqa: E731
    train_items = splits["train"]
    base_train = subset(make(train_items), cfg.get("max_train_samples"), seed=0)
    base_test = subset(make(splits["test"]), cfg.get("max_test_samples"), seed=0)
    shift = float((cfg.get("augment") or {}).get("time_shift", 0.0) or 0.0)
    return DataSplits(
        train=TransformedDataset(base_train, TimeShift(shift) if shift else None, seed=seed),
        test=TransformedDataset(base_test, None),
        calibration=TransformedDataset(base_train, None),
        num_classes=len(words),
        in_channels=1,
        image_size=length,
    )
