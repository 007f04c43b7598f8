"""The comparison methods: SNN Calibration (light, advanced), RTS, QCFS, and LTB with delayed
readout. Small cases with known answers."""

import warnings

import pytest
import torch
from torch import nn

import msat
from msat.conversion.corrections import layer_rates
from msat.conversion.corrections.snn_calibration import _ann_means
from msat.conversion.lam import ltb_lam
from msat.conversion.prepare import prepare_ann


def trained_like_vgg(seed=0):
    torch.manual_seed(seed)
    m = msat.create_model("vgg16", 10, 1, 0.125).eval()
    for mod in m.modules():
        if isinstance(mod, nn.BatchNorm2d):
            mod.running_var.uniform_(0.5, 1.5)
            mod.bias.data.uniform_(0.0, 0.3)
    return m


# ----------------------------------------------------------------- SNN Calibration
def test_light_correction_matches_the_ann_mean_per_channel():
    """After light correction, every layer's mean output rate over T steps on the calibration
    batch is within 15% of the layer's mean ANN activation, channel by channel (and the error
    is far below the uncorrected one)."""
    m = trained_like_vgg()
    x = torch.randn(32, 1, 16, 16)
    ann = prepare_ann(m)
    target = _ann_means(ann, x)
    plain = layer_rates(msat.convert(m, [x], method="const"), x, 16)
    corrected = msat.convert(m, [x], method="const", correction="light", T=16)
    rates = layer_rates(corrected, x, 16)
    for a, r, p in zip(target, rates, plain):
        scale = a.abs().mean()
        assert float((r - a).abs().max()) <= 0.15 * float(scale)
        assert float((r - a).abs().mean()) < 0.3 * float((p - a).abs().mean())
    assert all(n.bias is not None for n in corrected.neurons)
    assert corrected.conversion["correction"] == "light"


def test_light_correction_works_with_msat_and_leaves_the_ann_alone():
    m = trained_like_vgg()
    x = torch.randn(16, 1, 16, 16)
    before = {k: v.clone() for k, v in m.state_dict().items()}
    snn = msat.convert(m, [x], method="msat", hparams=msat.TABLE2["vgg16"], correction="light", T=8)
    assert torch.isfinite(msat.simulate(snn, x, 12)).all()
    assert all(torch.equal(v, m.state_dict()[k]) for k, v in before.items())


def test_advanced_correction_calibrates_weights():
    m = trained_like_vgg()
    x = torch.randn(128, 1, 16, 16)
    snn = msat.convert(m, [x], method="const", correction="advanced", T=8, correction_options=dict(iterations=30))
    report = snn.conversion["correction_report"]["layers"]
    assert report[0]["weights"] == "features.0"
    assert all(r["mse_last"] <= r["mse_first"] * 1.05 for r in report if "mse_last" in r)
    assert torch.isfinite(msat.simulate(snn, x[:8], 8)).all()


def test_rts_shifts_every_input_by_lam_over_2T():
    m = trained_like_vgg()
    x = torch.randn(8, 1, 16, 16)
    ref = msat.convert(m, [x], method="const")
    snn = msat.convert(m, [x], method="const", correction="rts", T=32)
    for a, b in zip(ref.neurons, snn.neurons):
        torch.testing.assert_close(b.bias, a.lam / 64)
        torch.testing.assert_close(b.lam, a.lam)


@pytest.mark.parametrize("kw,match", [
    (dict(correction="light"), "pass T=<steps>"),
    (dict(correction="rts", T=0), "T >= 1"),
    (dict(correction="light", T=2.5), "T >= 1"),
    (dict(correction="bias"), "unknown correction"),
    (dict(correction="advanced", T=8), "at least 128 calibration images"),
])
def test_correction_bad_arguments(kw, match):
    m = trained_like_vgg()
    with pytest.raises(ValueError, match=match):
        msat.convert(m, [torch.randn(8, 1, 16, 16)], method="const", **kw)


# ----------------------------------------------------------------- QCFS
def test_qcfs_one_hidden_layer_converts_exactly():
    """v_init = 0.5 and T = L: the SNN's summed output over T steps is T times the ANN's."""
    torch.manual_seed(0)
    for L in (1, 4, 8):
        net = nn.Sequential(nn.Linear(6, 20), msat.QCFS(L, lam=1.5), nn.Linear(20, 3)).double().eval()
        x = torch.randn(64, 6, dtype=torch.float64)
        snn = msat.convert(net, [x], method="const")
        assert snn.neurons[0].v_init == 0.5 and float(snn.neurons[0].lam) == 1.5
        out = msat.simulate(snn, x, L)
        torch.testing.assert_close(out[-1] / L, net(x), rtol=1e-12, atol=1e-12)


def test_qcfs_activation_values_and_gradient():
    q = msat.QCFS(4, lam=8.0)
    x = torch.tensor([-1.0, 0.5, 1.0, 2.9, 3.0, 7.0, 9.0], requires_grad=True)
    y = q(x)
    assert y.tolist() == [0.0, 0.0, 2.0, 2.0, 4.0, 8.0, 8.0]  # lam/L * clip(floor(x L / lam + 1/2), 0, L)
    y.sum().backward()
    assert x.grad.tolist() == [0.0, 1.0, 1.0, 1.0, 1.0, 1.0, 0.0]  # straight through inside (0, lam)
    assert q.lam.grad is not None


def test_qcfs_models_and_bad_settings():
    m = msat.create_model("vgg16", 10, 3, 0.125, activation="qcfs", levels=4)
    assert sum(isinstance(x, msat.QCFS) for x in m.modules()) == 13
    with pytest.raises(ValueError, match="levels must be an integer >= 1"):
        msat.create_model("vgg16", 10, 3, 0.125, activation="qcfs", levels=0)
    with pytest.raises(ValueError, match="QCFS settings"):
        msat.create_model("vgg16", 10, 3, 0.125, levels=4)
    with pytest.raises(ValueError, match="levels must be"):
        msat.QCFS(levels=0)
    x = torch.randn(4, 3, 32, 32)
    for kw in (dict(percentile=0.999), dict(channelwise=True), dict(balancing="ltb")):
        with pytest.raises(ValueError, match="carries its trained lam"):
            msat.convert(m.eval(), [x], method="const", **kw)


def test_qcfs_training_config(cfg_factory):
    cfg = cfg_factory("model.activation=qcfs", "model.levels=4")
    from msat.harness.tasks.hydra_utils import cfg_model_spec

    spec = cfg_model_spec(cfg)
    assert spec["activation"] == "qcfs" and spec["levels"] == 4
    assert "_qcfs4_" in cfg.paths.ckpt_dir  # never overwrites the ReLU net's checkpoint
    assert isinstance(msat.create_model(**spec).features[2], msat.QCFS)


def test_a_relu_net_starts_a_qcfs_fine_tune_of_the_same_layout():
    from msat.harness.checkpoint import CheckpointError, load_init_weights

    relu = trained_like_vgg()
    ckpt = {"model_spec": {"name": "vgg16", "num_classes": 10, "in_channels": 1, "width": 0.125}, "model": relu.state_dict()}
    spec = {**ckpt["model_spec"], "activation": "qcfs", "levels": 4, "lam_init": 2.0}
    q = msat.create_model(**spec)
    load_init_weights(q, ckpt, spec, "relu.pt")
    for k, v in relu.state_dict().items():
        torch.testing.assert_close(q.state_dict()[k], v, rtol=0, atol=0)
    assert all(float(m.lam.detach()) == 2.0 for m in q.modules() if isinstance(m, msat.QCFS))  # the scales keep their init
    with pytest.raises(CheckpointError, match="width"):
        load_init_weights(msat.create_model(**{**spec, "width": 0.25}), ckpt, {**spec, "width": 0.25}, "relu.pt")
    bad = {**ckpt, "model": {k: v for k, v in relu.state_dict().items() if not k.startswith("classifier")}}
    with pytest.raises(CheckpointError, match="missing or extra"):
        load_init_weights(q, bad, spec, "relu.pt")


# ----------------------------------------------------------------- LTB
def _ltb_by_hand(acts_per_batch, passes, clip_prev=None):
    theta = torch.zeros(acts_per_batch[0].shape[1])
    for _ in range(passes):
        for a in acts_per_batch:
            a = torch.relu(a)
            inc = 2 * (a - theta.view(1, -1, 1, 1)).clamp(min=0).mean((0, 2, 3))
            theta = torch.clamp(theta + inc, min=1e-8)
    return theta


def test_ltb_thresholds_follow_the_rule_by_hand():
    torch.manual_seed(0)
    conv = nn.Conv2d(1, 3, 3)
    net = nn.Sequential(conv, nn.ReLU(), nn.Flatten(), nn.Linear(3 * 4 * 4, 2)).eval()
    batches = [torch.randn(5, 1, 6, 6) for _ in range(2)]
    with torch.no_grad():
        pre = [conv(b) for b in batches]
    ann = prepare_ann(net)
    for passes in (1, 2, 3):
        lam = ltb_lam(ann, batches, passes=passes) if passes >= 5 else _quiet_ltb(ann, batches, passes)
        torch.testing.assert_close(lam[0].flatten(), _ltb_by_hand(pre, passes), rtol=1e-6, atol=1e-7)
        assert lam[0].shape == (3, 1, 1)


def _quiet_ltb(ann, batches, passes):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return ltb_lam(ann, batches, passes=passes)


def test_ltb_clips_each_layer_before_the_next_sees_it():
    """Layer 2's threshold follows from layer 1's *clipped* output (clipped at layer 1's updated threshold)."""
    torch.manual_seed(1)
    c1, c2 = nn.Conv2d(1, 2, 3, padding=1), nn.Conv2d(2, 2, 3, padding=1)
    net = nn.Sequential(c1, nn.ReLU(), c2, nn.ReLU(), nn.Flatten(), nn.Linear(2 * 5 * 5, 2)).eval()
    x = torch.randn(6, 1, 5, 5) * 3
    lam = _quiet_ltb(prepare_ann(net), [x], 1)
    with torch.no_grad():
        a1 = torch.relu(c1(x))
        th1 = torch.clamp(2 * a1.mean((0, 2, 3)), min=1e-8)  # from 0, one update
        clipped = torch.minimum(a1, th1.view(1, -1, 1, 1))
        th2 = torch.clamp(2 * torch.relu(c2(clipped)).mean((0, 2, 3)), min=1e-8)
        th2_unclipped = torch.clamp(2 * torch.relu(c2(a1)).mean((0, 2, 3)), min=1e-8)
    torch.testing.assert_close(lam[0].flatten(), th1)
    torch.testing.assert_close(lam[1].flatten(), th2)
    assert not torch.allclose(th2, th2_unclipped)


def test_ltb_api_defaults_and_bad_input():
    m = trained_like_vgg()
    x = torch.randn(8, 1, 16, 16)
    snn = msat.convert(m, [x], method="const", balancing="ltb", passes=20)
    assert snn.neurons[0].lam.shape == (snn.neurons[0].lam.shape[0], 1, 1)  # per channel
    assert all(n.v_init == 0.5 for n in snn.neurons)
    assert snn.conversion["balancing"] == "ltb" and snn.conversion["passes"] == 20
    msat.convert(m, [x], method="msat", hparams=msat.TABLE2["vgg16"], balancing="ltb", passes=5, max_spikes=3,
                 sc=dict(p=0.9, early_steps=4))  # every rule, burst and SC combine with LTB
    with pytest.raises(ValueError, match="passes >= 1"):
        msat.convert(m, [x], method="const", balancing="ltb", passes=0)
    with pytest.raises(ValueError, match="chooses its own thresholds"):
        msat.convert(m, [x], method="const", balancing="ltb", percentile=0.99)
    with pytest.warns(UserWarning, match="passes=1"):
        msat.convert(m, [x], method="const", balancing="ltb", passes=1)


def test_ltb_warns_about_a_layer_that_never_activates():
    net = nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU(), nn.Flatten(), nn.Linear(2 * 4 * 4, 2)).eval()
    with torch.no_grad():
        net[0].weight.zero_()
        net[0].bias.fill_(-1.0)
    x = torch.randn(4, 1, 6, 6)
    with pytest.warns(UserWarning, match="never activated"):
        snn = msat.convert(net, [x], method="const", balancing="ltb", passes=5)
    out = msat.simulate(snn, x, 10)
    assert torch.isfinite(out).all() and float(snn.neurons[0].lam.abs().sum()) == 0.0


# ----------------------------------------------------------------- delayed readout
def test_readout_start_zero_is_todays_curve_and_d_sums_from_d_plus_1():
    m = trained_like_vgg()
    x = torch.randn(6, 1, 16, 16)
    snn = msat.convert(m, [x], method="msat", hparams=msat.TABLE2["vgg16"])
    base = msat.simulate(snn, x, 20)
    assert torch.equal(msat.simulate(snn, x, 20, readout_start=0), base)
    d = 5
    delayed = msat.simulate(snn, x, 20, readout_start=d)
    steps = torch.diff(base, dim=0, prepend=torch.zeros_like(base[:1]))  # the per-step outputs
    expect = torch.cumsum(torch.cat([torch.zeros_like(steps[:d]), steps[d:]]), 0)
    torch.testing.assert_close(delayed, expect, rtol=1e-5, atol=1e-5 * float(base.abs().max()))
    assert (delayed[:d] == 0).all()
    for bad in (20, -1, 2.5):
        with pytest.raises(ValueError, match="readout_start"):
            msat.simulate(snn, x, 20, readout_start=bad)


def test_estimate_readout_start_is_the_last_layers_first_spike():
    m = trained_like_vgg()
    x = torch.randn(16, 1, 16, 16)
    snn = msat.convert(m, [x], method="const", balancing="ltb", passes=10)
    d = msat.estimate_readout_start(snn, [x], T=64)
    assert 0 <= d < 64
    first = []

    class First:
        def on_step(self, neuron, t, theta, fired, emitted):
            first.append(float((emitted > 0).float().mean()))

    with snn.monitor(64, probe=[None] * (len(snn.neurons) - 1) + [First()]):
        msat.simulate(snn, x, d + 1)
    assert first[d] > 0  # by step d+1 the last layer fires


def test_report_renders_the_comparison_rows_beside_the_papers_numbers(tmp_path):
    """Every comparison experiment (Calibration, Opt/RTS, Channel-Norm, p-Norm) carries the
    paper's numbers, and `msat.report` puts a run's numbers beside them."""
    import json

    from conftest import CONF, compose
    from msat.harness.report import main as report_main
    from tables import markdown_tables

    names = sorted(p.stem for p in (CONF / "experiment").glob("*.yaml")
                   if "calibration" in p.stem or "opt" in p.stem or "channelnorm" in p.stem or "pnorm" in p.stem)
    assert len(names) >= 8
    for i, name in enumerate(names):
        cfg = compose([f"experiment={name}"], tmp_path)
        paper = dict(cfg.paper)
        assert paper.get("table") and ("acc_at" in paper or "snn" in paper), name
        acc = [50.0 + 0.1 * t for t in range(1, 257)]
        res = {"method": cfg.method.name, "experiment": name, "dataset": cfg.dataset.name, "model": cfg.model.name,
               "width": 1.0, "ann_acc": 90.0, "acc": acc, "best_acc": max(acc), "best_step": 256, "step_within_tol": None,
               "tol": 0.1, "T": 256, "command": f"python evaluate.py experiment={name}", "commit": "abc", "hardware": "cpu",
               "paper": json.loads(json.dumps(paper, default=dict))}
        (tmp_path / "runs" / str(i)).mkdir(parents=True)
        (tmp_path / "runs" / str(i) / "results.json").write_text(json.dumps(res))
    assert report_main([str(tmp_path / "runs"), "--no-plots"]) == 0
    md = (tmp_path / "runs" / "report.md").read_text()
    rows = [r for t in markdown_tables(md) if t.head[:3] == ["run", "dataset / model", "metric"] for r in t.rows]
    (row,) = [r for r in rows if r["run"].endswith("(table4_calibration_vgg16_cifar10)") and r["metric"] == "acc T=32"]
    assert float(row["ours"]) == pytest.approx(50 + 0.1 * 32) and row["paper"] == "93.71"
    assert float(row["diff"]) == pytest.approx(50 + 0.1 * 32 - 93.71, abs=0.006)
    methods = {r["run"].split(" ")[0] for r in rows}
    assert {"calibration_advanced", "rts", "const"} <= methods  # SNN Calibration, Opt, p-Norm and Channel-Norm
