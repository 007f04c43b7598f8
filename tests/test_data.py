import pytest
import torch

from conftest import CIFAR_JPEG, compose
from msat.harness.data import CIFAR10_CLASSES, DatasetError, EpochBatchSampler, build_splits, fashion_mnist_available

needs_fmnist = pytest.mark.skipif(not fashion_mnist_available(),
                                  reason="Debian package dataset-fashion-mnist is not installed")
needs_cifar_jpeg = pytest.mark.skipif(not (CIFAR_JPEG / "train").is_dir(),
                                      reason=f"CIFAR-10 JPEG folder not found at {CIFAR_JPEG}")


def test_digits_splits(tmp_path):
    cfg = compose(["dataset=digits"], tmp_path)
    s = build_splits(cfg.dataset)
    assert (s.num_classes, s.in_channels, s.image_size) == (10, 1, 32)
    assert len(s.train) + len(s.test) == 1797 and len(s.test) == 360
    x, y = s.train[0]
    assert x.shape == (1, 32, 32) and 0 <= y < 10
    # calibration = training images with test transforms (deterministic)
    assert torch.equal(s.calibration[3][0], s.calibration[3][0])
    assert len(s.calibration) == len(s.train)


def test_augmentation_is_seeded_per_sample_and_epoch(tmp_path):
    cfg = compose(["dataset=digits"], tmp_path)
    a, b = build_splits(cfg.dataset, seed=1), build_splits(cfg.dataset, seed=1)
    assert torch.equal(a.train[5][0], b.train[5][0])
    a.train.set_epoch(1)
    assert not torch.equal(a.train[5][0], b.train[5][0])
    state = torch.get_rng_state()
    a.train[7]
    assert torch.equal(state, torch.get_rng_state())  # the global RNG is untouched


def test_epoch_sampler_shards_and_resumes():
    s = EpochBatchSampler(103, 10, seed=3, drop_last=True)
    s.set_epoch(2)
    full = list(s)
    assert len(full) == 10
    s.set_epoch(2, start=4)
    assert list(s) == full[4:]
    r0, r1 = (EpochBatchSampler(103, 10, 3, rank=r, world=2) for r in (0, 1))
    for r in (r0, r1):
        r.set_epoch(2)
    seen = [i for b in list(r0) + list(r1) for i in b]
    assert len(seen) == len(set(seen)) == 100


def test_unknown_dataset_and_missing_roots(tmp_path):
    cfg = compose(["dataset=cifar10", f"dataset.root={tmp_path}/nowhere"], tmp_path)
    with pytest.raises(DatasetError, match="does not exist"):
        build_splits(cfg.dataset)
    cfg = compose(["dataset=digits"], tmp_path)
    cfg.dataset.name = "svhn"
    with pytest.raises(DatasetError, match="unknown dataset 'svhn'"):
        build_splits(cfg.dataset)
    empty = tmp_path / "empty"
    (empty / "train").mkdir(parents=True)
    (empty / "test").mkdir()
    cfg = compose(["dataset=imagenet", f"dataset.root={empty}"], tmp_path)
    with pytest.raises(DatasetError, match="no images"):
        build_splits(cfg.dataset)
    cfg = compose(["dataset=cifar10", f"dataset.root={empty}"], tmp_path)
    with pytest.raises(DatasetError):
        build_splits(cfg.dataset)


def test_fashion_mnist_missing_gives_instructions(tmp_path, monkeypatch):
    monkeypatch.setenv("MSAT_FASHION_MNIST_DIR", str(tmp_path / "none"))
    cfg = compose(["dataset=fashion_mnist"], tmp_path)
    with pytest.raises(DatasetError, match="apt-get install dataset-fashion-mnist"):
        build_splits(cfg.dataset)


@needs_fmnist
def test_fashion_mnist_from_debian_package(tmp_path):
    cfg = compose(["dataset=fashion_mnist"], tmp_path)
    s = build_splits(cfg.dataset)
    assert len(s.train) == 60000 and len(s.test) == 10000
    x, y = s.test[0]
    assert x.shape == (1, 28, 28) and y == 9  # the first test image is an ankle boot
    assert (tmp_path / "data" / "fashion_mnist" / "FashionMNIST" / "raw" / "train-images-idx3-ubyte").exists()


@needs_cifar_jpeg
def test_cifar10_jpeg_folder_in_standard_class_order(tmp_path):
    cfg = compose(["dataset=cifar10", f"dataset.root={CIFAR_JPEG}"], tmp_path)
    s = build_splits(cfg.dataset)
    assert len(s.train) == 50000 and len(s.test) == 10000
    base = s.test.base
    assert base.samples[0][1] == 0 and "/airplane/" in base.samples[0][0]
    assert base.samples[-1][1] == 9 and "/truck/" in base.samples[-1][0]
    assert CIFAR10_CLASSES[3] == "cat" and "/cat/" in base.samples[3000][0] and base.samples[3000][1] == 3
    x, _ = s.train[0]
    assert x.shape == (3, 32, 32)
