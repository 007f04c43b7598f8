"""Layer-major versus step-by-step execution, distributed evaluation, resumable evaluation."""

import json
import os
import subprocess
import sys

import pytest
import torch
from torch import nn

import msat
from conftest import ROOT, compose
from msat.conversion.prepare import prepare_ann
from msat.conversion.sin import sin_statistics
from msat.harness.tasks import run_evaluate


def trained_like(name, seed=0, dtype=torch.float64, size=16):
    """A narrow net with non-trivial BN statistics (random weights)."""
    torch.manual_seed(seed)
    m = msat.create_model(name, 10, 3, 0.125).eval()
    for mod in m.modules():
        if isinstance(mod, nn.BatchNorm2d):
            mod.running_var.uniform_(0.5, 1.5)
            mod.bias.data.uniform_(-0.1, 0.3)
    x = torch.randn(12, 3, size, size)
    return m.to(dtype), x.to(dtype)


NETS = [("vgg16", 16), ("resnet34", 32)]  # resnet34: overlapping 3x3/2 max-pool -> LIPool


def run_with_monitors(snn, x, T, chunk):
    with snn.monitor(T, firing=True, threshold=True) as mons:
        mons.begin_batch()
        out = msat.simulate(snn, x, T, chunk=chunk)
    assert not any(n._hooks for n in snn.neurons)  # removed on exit
    return out, [m.state["spikes"].clone() for m in mons.firing], [m.state["sums"].clone() for m in mons.threshold]


@pytest.mark.parametrize("name,size", NETS)
@pytest.mark.parametrize("method", ["const", "msat"])
def test_layer_major_identical_in_float64(name, size, method):
    m, x = trained_like(name, size=size)
    snn = msat.convert(m, [x], method=method, hparams=msat.TABLE2[name])
    ref, spikes, theta = run_with_monitors(snn, x, 24, 1)
    for chunk in (4, 24):
        out, s2, t2 = run_with_monitors(snn, x, 24, chunk)
        assert torch.equal(out, ref)
        assert all(torch.equal(a, b) for a, b in zip(spikes, s2))  # identical spikes, layer by layer
        assert all(torch.equal(a, b) for a, b in zip(theta, t2))


@pytest.mark.parametrize("name,size", NETS)
def test_layer_major_float32_same_predictions(name, size):
    m, x = trained_like(name, dtype=torch.float32, size=size)
    x = torch.cat([x, torch.randn(36, 3, size, size)])
    snn = msat.convert(m, [x], method="msat", hparams=msat.TABLE2[name])
    T = 32
    ref = msat.simulate(snn, x, T, chunk=1).argmax(-1)
    out = msat.simulate(snn, x, T, chunk=8).argmax(-1)
    agree = (ref == out).float().mean(dim=1)  # per t, over samples
    assert agree.min() >= 0.999


def test_layer_major_spike_confidence_same_seed():
    m, x = trained_like("vgg16")
    kw = dict(method="msat", hparams=msat.TABLE2["vgg16"], sc=dict(p=0.6, early_steps=10, layers="all", seed=5))
    snn = msat.convert(m, [x], **kw)
    a = msat.simulate(snn, x, 20, chunk=1)
    b = msat.simulate(snn, x, 20, chunk=7)
    assert torch.equal(a, b)


def test_layer_major_sin_statistics():
    m, x = trained_like("vgg16")
    snn = msat.convert(m, [x], method="msat", hparams=msat.TABLE2["vgg16"])
    ann = prepare_ann(m)
    a = sin_statistics(ann, snn, x, 30, chunk=1)
    b = sin_statistics(ann, snn, x, 30, chunk=10)
    for ma, mb in zip(a, b):
        assert torch.equal(ma.sin_count, mb.sin_count) and torch.equal(ma.fired_count, mb.fired_count)
        assert ma.ans() == mb.ans()


def test_first_layer_runs_once_per_batch():
    m, x = trained_like("vgg16", dtype=torch.float32)
    snn = msat.convert(m, [x], method="const")
    calls = []
    first_conv = snn.static.get_submodule("features.0")
    first_conv.register_forward_hook(lambda *a: calls.append(1))
    msat.simulate(snn, x, 16, chunk=4)
    assert len(calls) == 1
    assert snn.neurons[0].static_input


# ----------------------------------------------------------------- evaluate.py: DDP and resume
TINY = ["experiment=demo", "eval.max_samples=40", "eval.batch_size=8", "eval.T=48", "eval.checkpoints=[16,48]",
        "eval.plots=false", "sin.T=16", "calibration.num_batches=2", "method=msat_sc", "eval.sin=true"]


def test_torchrun_evaluation_equals_one_process(ckpt_root):
    single = run_evaluate(compose(TINY, ckpt_root))
    args = TINY + [f"paths.root={ckpt_root}", "device=cpu", "progress=false", f"hydra.run.dir={ckpt_root}/ddp"]
    r = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port=29533",
         str(ROOT / "evaluate.py"), *args],
        capture_output=True, text=True, cwd=ckpt_root, timeout=600,
        env=dict(os.environ, WANDB_MODE="disabled", OMP_NUM_THREADS="1"),
    )
    assert r.returncode == 0, r.stderr[-3000:]
    ddp = json.loads((ckpt_root / "ddp" / "results.json").read_text())
    assert ddp["world_size"] == 2
    assert ddp["acc"] == single["acc"] and ddp["ann_acc"] == single["ann_acc"] and ddp["n_samples"] == 40
    assert ddp["sin"]["ans"] == pytest.approx(single["sin"]["ans"])
    assert ddp["firing_rate"] == pytest.approx(single["firing_rate"])
    assert r.stdout.count("accuracy (%) after t steps") == 1 and r.stdout.count("95% Wilson intervals") == 1  # rank 0 alone


def test_interrupted_evaluation_resumes_to_the_same_curve(ckpt_root, monkeypatch):
    full = run_evaluate(compose(TINY + ["eval.resume=false"], ckpt_root))
    import msat.harness.evaluation as ev

    real, calls = ev.batch_seed, []

    def crash_after_two(seed, b):
        calls.append(b)
        if len(calls) == 3:
            raise KeyboardInterrupt("simulated crash in batch 3")
        return real(seed, b)

    monkeypatch.setattr(ev, "batch_seed", crash_after_two)
    with pytest.raises(KeyboardInterrupt):
        run_evaluate(compose(TINY, ckpt_root))
    partial = list((ckpt_root / "checkpoints/digits/vgg16_w0.25_s0/eval_partial").glob("*.pt"))
    assert len(partial) == 1
    monkeypatch.setattr(ev, "batch_seed", real)
    seen = []
    monkeypatch.setattr(ev, "batch_seed", lambda s, b: seen.append(b) or real(s, b))
    resumed = run_evaluate(compose(TINY, ckpt_root))
    assert seen == [2, 3, 4]  # batches 0 and 1 came from the partial file
    assert resumed["acc"] == full["acc"]
    assert resumed["sin"]["ans"] == pytest.approx(full["sin"]["ans"])
    assert not partial[0].exists()  # removed once the evaluation is complete


@pytest.mark.e2e
def test_benchmark_script_runs_and_prints_its_summary_line():
    """benchmarks/simulate.py end to end on a tiny net (the figures themselves are measured
    by running the script, not here). Tensor memory does not grow with T."""
    r = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "simulate.py"), "--net", "resnet20_thin", "--width",
                        "0.125", "--T", "2", "--rounds", "1", "--no-spikingjelly", "--no-compile", "--mem-T", "4,12",
                        "--mem-width", "0.125", "--mem-batch", "4"], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    last = dict(f.split("=") for f in r.stdout.strip().splitlines()[-1].split())
    assert {"const_throughput", "const_dense_ratio", "const_mem_ratio", "msat_throughput", "msat_mem_ratio"} <= set(last)
    assert float(last["const_throughput"]) > 0
    assert float(last["const_mem_ratio"]) == pytest.approx(1.0, abs=1e-3)
    assert float(last["msat_mem_ratio"]) == pytest.approx(1.0, abs=1e-3)
