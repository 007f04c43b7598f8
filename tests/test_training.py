import os
import random
import subprocess
import sys

import pytest
import torch

from conftest import CIFAR_JPEG, ROOT, cli, compose
from msat.harness.checkpoint import CheckpointError, load_ann_checkpoint, model_spec
from msat.harness.data import EpochBatchSampler, build_splits, fashion_mnist_available, make_loader
from msat.harness.tasks import run_train
from msat.harness.training import TrainingInterrupted
from msat.models import create_model

# a small, fast setting: narrow VGG16 on 16x16 digits
SMALL = ["dataset=digits", "dataset.image_size=16", "model.width=0.125", "train.batch_size=64", "train.lr=0.05"]


def test_digits_vgg16_reaches_90_percent(digits_run):
    root, stdout = digits_run
    ckpt = load_ann_checkpoint(root / "checkpoints/digits/vgg16_w0.25_s0/last.pt")
    final = ckpt["history"][-1]
    assert final["test_acc"] >= 90.0, stdout[-2000:]
    assert ckpt["epoch"] == 15 and ckpt["model_spec"] == model_spec("vgg16", 10, 1, 0.25)
    assert (root / "checkpoints/digits/vgg16_w0.25_s0/best.pt").exists()


@pytest.mark.e2e
@pytest.mark.skipif(not fashion_mnist_available(), reason="Debian package dataset-fashion-mnist is not installed")
def test_fashion_mnist_narrow_vgg16_one_epoch(tmp_path):
    cfg = compose(["dataset=fashion_mnist", "model.width=0.25", "train.epochs=1", "train.batch_size=32",
                   "train.lr=0.02", "dataset.max_train_samples=12000", "dataset.max_test_samples=2000",
                   "dataset.augment.crop_padding=0", "dataset.augment.flip=false"], tmp_path)
    metrics = run_train(cfg)
    assert metrics["test_acc"] >= 78.0  # 82.55 on an AMD EPYC (AVX2); chance is 10


@pytest.mark.skipif(not (CIFAR_JPEG / "train").is_dir(), reason=f"CIFAR-10 JPEG folder not found at {CIFAR_JPEG}")
def test_training_step_on_cifar10_jpeg_batch(tmp_path):
    cfg = compose(["dataset=cifar10", f"dataset.root={CIFAR_JPEG}", "model.width=0.125"], tmp_path)
    splits = build_splits(cfg.dataset, seed=0)
    sampler = EpochBatchSampler(len(splits.train), 32, seed=0)
    x, y = next(iter(make_loader(splits.train, 32, 0, sampler=sampler)))
    assert x.shape == (32, 3, 32, 32) and y.max() < 10
    model = create_model("vgg16", 10, 3, 0.125)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    before = [p.detach().clone() for p in model.parameters()]
    loss = torch.nn.functional.cross_entropy(model(x), y)
    loss.backward()
    opt.step()
    assert torch.isfinite(loss)
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters()))


# ----------------------------------------------------------------- resume
def _weights(path):
    return load_ann_checkpoint(path)["model"]


@pytest.mark.e2e  # trains, interrupts and resumes
@pytest.mark.parametrize("stop_at", [22, 30])  # an epoch boundary (22 steps per epoch) and mid-epoch
def test_resume_gives_identical_weights(tmp_path, stop_at):
    straight = tmp_path / "straight"
    run_train(compose(SMALL + ["train.epochs=2"], straight))
    broken = tmp_path / "broken"
    with pytest.raises(TrainingInterrupted):
        run_train(compose(SMALL + ["train.epochs=2", f"train.interrupt_after_steps={stop_at}"], broken))
    ck = load_ann_checkpoint(broken / "checkpoints/digits/vgg16_w0.125_s0/last.pt")
    assert ck["global_step"] == stop_at
    run_train(compose(SMALL + ["train.epochs=2", "resume=true"], broken))
    a = _weights(straight / "checkpoints/digits/vgg16_w0.125_s0/last.pt")
    b = _weights(broken / "checkpoints/digits/vgg16_w0.125_s0/last.pt")
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_sigterm_from_outside_saves_a_resumable_checkpoint(tmp_path):
    """A real SIGTERM to the CLI process: exit 143, last.pt written, resume finishes."""
    args = SMALL + ["train.epochs=2", "train.interrupt_after_steps=5", f"paths.root={tmp_path}", "progress=false"]
    r = cli("train_ann.py", *args, cwd=tmp_path)
    assert r.returncode == 143, r.stderr[-2000:]
    assert "resume=true" in r.stderr
    r = cli("train_ann.py", *SMALL, "train.epochs=2", "resume=true", f"paths.root={tmp_path}", "progress=false", cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "resuming from" in r.stdout


# ----------------------------------------------------------------- bad input
def test_resume_without_checkpoint(tmp_path):
    with pytest.raises(CheckpointError, match="no checkpoint"):
        run_train(compose(SMALL + ["train.epochs=1", "resume=true"], tmp_path))
    r = cli("train_ann.py", *SMALL, "resume=true", f"paths.root={tmp_path}", cwd=tmp_path)
    assert r.returncode == 2 and r.stderr.startswith("error: resume=true but there is no checkpoint")


@pytest.mark.parametrize("bad", ["train.epochs=0", "train.epochs=-1", "train.batch_size=0", "train.batch_size=-8"])
def test_non_positive_epochs_or_batch(tmp_path, bad):
    with pytest.raises(ValueError, match="positive integer"):
        run_train(compose(SMALL + [bad], tmp_path))


def test_checkpoint_for_other_architecture_or_classes(tmp_path):
    run_train(compose(SMALL + ["train.epochs=1"], tmp_path))
    path = tmp_path / "checkpoints/digits/vgg16_w0.125_s0/last.pt"
    with pytest.raises(CheckpointError, match="num_classes: checkpoint has 10, config asks for 100"):
        load_ann_checkpoint(path, model_spec("vgg16", 100, 1, 0.125))
    with pytest.raises(CheckpointError, match="name: checkpoint has 'vgg16'"):
        load_ann_checkpoint(path, model_spec("resnet20", 10, 1, 0.125))
    # resume into another architecture: same ckpt_dir forced, different model
    other = compose(SMALL + ["train.epochs=1", "resume=true", "model=resnet20", "model.width=0.125",
                             f"paths.ckpt_dir={path.parent}"], tmp_path)
    with pytest.raises(CheckpointError, match="does not fit"):
        run_train(other)


@pytest.mark.parametrize("damage", ["truncate", "garbage", "foreign"])
def test_corrupt_checkpoint(tmp_path, damage):
    run_train(compose(SMALL + ["train.epochs=1"], tmp_path))
    path = tmp_path / "checkpoints/digits/vgg16_w0.125_s0/last.pt"
    data = path.read_bytes()
    if damage == "truncate":
        path.write_bytes(data[: len(data) // 2])
    elif damage == "garbage":
        path.write_bytes(random.Random(1).randbytes(4096))
    else:
        torch.save({"weights": torch.zeros(3)}, path)
    with pytest.raises(CheckpointError, match="corrupt|not written by this project"):
        run_train(compose(SMALL + ["train.epochs=2", "resume=true"], tmp_path))
    # nothing else was lost: best.pt is intact
    assert load_ann_checkpoint(path.parent / "best.pt")["epoch"] == 1


def test_random_bytes_are_a_clear_checkpoint_error(tmp_path):
    """Damaged files raise CheckpointError whatever the unpickler trips over (it once raised a
    bare IndexError on one random blob)."""
    from msat.harness.checkpoint import safe_load

    rng = random.Random(0)
    path = tmp_path / "x.pt"
    for _ in range(200):
        path.write_bytes(bytes(rng.randrange(256) for _i in range(rng.choice([16, 256, 4096]))))
        with pytest.raises(CheckpointError, match="corrupt|not written by this project"):
            safe_load(path)


def test_checkpoint_with_code_is_refused(tmp_path):
    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned",))

    path = tmp_path / "evil.pt"
    torch.save({"format_version": 1, "kind": "ann", "x": Evil()}, path)
    with pytest.raises(CheckpointError, match="corrupt|not a torch file"):
        load_ann_checkpoint(path)


def test_atomic_save_leaves_no_partial_file(tmp_path, monkeypatch):
    from msat.harness import checkpoint

    target = tmp_path / "last.pt"
    checkpoint.atomic_save({"format_version": 1, "v": torch.ones(2)}, target)
    original = target.read_bytes()

    def boom(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(checkpoint.torch, "save", boom)
    with pytest.raises(KeyboardInterrupt):
        checkpoint.atomic_save({"format_version": 1, "v": torch.zeros(2)}, target)
    assert target.read_bytes() == original
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]


# ----------------------------------------------------------------- DDP
def test_torchrun_two_processes_gloo(tmp_path):
    args = SMALL + ["train.epochs=1", f"paths.root={tmp_path}", "progress=false", "device=cpu"]
    r = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port=29517",
         str(ROOT / "train_ann.py"), *args],
        capture_output=True, text=True, cwd=tmp_path, env=dict(os.environ, WANDB_MODE="disabled", OMP_NUM_THREADS="1"),
        timeout=600,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    ckpt = load_ann_checkpoint(tmp_path / "checkpoints/digits/vgg16_w0.125_s0/last.pt")
    assert ckpt["epoch"] == 1 and ckpt["written_by_rank"] == 0
    assert r.stdout.count("epoch 1/1") == 1  # rank 0 alone logs
    # each rank saw half of every epoch: 1437 samples / 2 ranks / 64 per batch = 11 steps
    assert ckpt["global_step"] == 11
