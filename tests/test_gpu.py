"""GPU checks (skipped without CUDA, e.g. on CI): the simulator, layer-major chunks and AMP training."""

import pytest
import torch

import msat

pytestmark = pytest.mark.gpu


def _net():
    torch.manual_seed(0)
    m = msat.create_model("vgg16", 10, 3, 0.25).eval()
    return m, torch.randn(16, 3, 32, 32)


def test_cuda_simulation_matches_cpu_predictions():
    m, x = _net()
    cpu = msat.simulate(msat.convert(m, [x], method="msat", hparams=msat.TABLE2["vgg16"]), x, 64)
    gm, gx = m.cuda(), x.cuda()
    gpu = msat.simulate(msat.convert(gm, [gx], method="msat", hparams=msat.TABLE2["vgg16"]), gx, 64, chunk=16)
    agree = (cpu.argmax(-1) == gpu.cpu().argmax(-1)).float().mean()
    assert agree >= 0.99


def test_cuda_layer_major_float64_identical():
    m, x = _net()
    m, x = m.double().cuda(), x.double().cuda()
    snn = msat.convert(m, [x], method="msat", hparams=msat.TABLE2["vgg16"])
    assert torch.equal(msat.simulate(snn, x, 32, chunk=1), msat.simulate(snn, x, 32, chunk=32))


def test_amp_channels_last_training_step(tmp_path):
    from conftest import compose
    from msat.harness.tasks import run_train

    cfg = compose(["dataset=digits", "model.width=0.25", "train.epochs=1", "train.amp=true",
                   "train.channels_last=true", "device=cuda"], tmp_path)
    assert run_train(cfg)["test_acc"] > 10
