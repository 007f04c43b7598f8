"""msat.load_model: the committed CIFAR-10 checkpoint, and clear errors for bad files."""

import hashlib

import pytest
import torch

import msat
from conftest import CIFAR_JPEG, ROOT
from msat.harness.checkpoint import FORMAT_VERSION, CheckpointError, atomic_save

COMMITTED = ROOT / "docs/results/cifar10/vgg16_w0.25.pt"


def test_committed_checkpoint_matches_its_sha256_and_loads_in_eval_mode():
    want = (COMMITTED.parent / "vgg16_w0.25.pt.sha256").read_text().split()[0]
    assert hashlib.sha256(COMMITTED.read_bytes()).hexdigest() == want
    assert COMMITTED.stat().st_size < 5 * 2**20  # fp32, under 5 MB
    model = msat.load_model(COMMITTED)
    assert not model.training
    assert model(torch.zeros(2, 3, 32, 32)).shape == (2, 10)


@pytest.mark.slow
@pytest.mark.skipif(not (CIFAR_JPEG / "test").is_dir(), reason=f"CIFAR-10 JPEG folder not found at {CIFAR_JPEG}")
def test_committed_checkpoint_scores_at_least_85_percent_on_all_jpeg_test_images():
    from msat.harness.reproduce import ann_full_accuracy

    acc, n = ann_full_accuracy(COMMITTED, CIFAR_JPEG, None)
    assert n == 10000 and acc >= 85.0, acc


def test_bad_files_name_the_file_and_what_it_is(tmp_path):
    with pytest.raises(CheckpointError, match=r"nothing\.pt"):
        msat.load_model(tmp_path / "nothing.pt")
    bad = tmp_path / "corrupt.pt"
    bad.write_bytes(torch.randn(64, generator=torch.Generator().manual_seed(0)).numpy().tobytes())
    with pytest.raises(CheckpointError, match=r"corrupt\.pt"):
        msat.load_model(bad)
    other = tmp_path / "tensor.pt"
    atomic_save({"weights": torch.zeros(3)}, other)
    with pytest.raises(CheckpointError, match=r"tensor\.pt.*not written by this project"):
        msat.load_model(other)
    preds = tmp_path / "predictions.pt"
    atomic_save({"format_version": FORMAT_VERSION, "kind": "predictions", "correct": torch.zeros(3)}, preds)
    with pytest.raises(CheckpointError, match=r"predictions\.pt.*not a model checkpoint"):
        msat.load_model(preds)
    snn = tmp_path / "snn.pt"
    atomic_save({"format_version": FORMAT_VERSION, "kind": "mt_snn", "model_spec": {"name": "mt_vgg9"}, "model": {}}, snn)
    with pytest.raises(CheckpointError, match=r"snn\.pt.*'mt_snn' checkpoint .*train_snn\.py"):
        msat.load_model(snn)


def test_a_spec_mismatch_names_each_difference_once():
    from msat.harness.checkpoint import check_model_spec, model_spec

    saved = model_spec("vgg16", 10, 3, 0.25)
    with pytest.raises(CheckpointError) as err:
        check_model_spec(saved, model_spec("vgg16", 10, 1, 0.25, activation="qcfs", levels=4), "x.pt")
    msg = str(err.value)
    assert msg.count("in_channels: checkpoint has 3, config asks for 1") == 1
    assert "activation: checkpoint has None, config asks for 'qcfs'" in msg and msg.count("num_classes") == 0
    check_model_spec(saved, dict(saved), "x.pt")  # equal specs pass
