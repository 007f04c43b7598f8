"""Multiple thresholds: burst firing in converted neurons, and MT-SNN direct training (spec mt.md)."""

import shutil

import pytest
import torch

import msat
from conftest import compose
from msat.conversion.table2 import TABLE2
from msat.harness.checkpoint import CheckpointError, load_ann_checkpoint
from msat.harness.tasks import run_convert, run_evaluate, run_train_snn
from msat.harness.training import TrainingInterrupted
from msat.spiking.neuron import IFNeuron
from msat.spiking.plif import PLIF, RectHeaviside, check_deltas
from reference import run_neuron


# ----------------------------------------------------------------- burst (conversion side)
def steps(neuron, xs):
    return [float(neuron(torch.tensor([[x]], dtype=torch.float64))) for x in xs]


@pytest.mark.parametrize("method", ["const", "msat", "dtt", "det"])
def test_max_spikes_1_is_the_plain_neuron(method):
    torch.manual_seed(0)
    xs = (torch.randn(200, 3, 7) * 1.5 + 0.4).double()
    hp = None if method == "const" else TABLE2["vgg16"]
    a, b = IFNeuron(torch.tensor(1.3, dtype=torch.float64), method, hp), IFNeuron(
        torch.tensor(1.3, dtype=torch.float64), method, hp, max_spikes=1)
    assert all(torch.equal(a(x), b(x)) for x in xs)


def test_burst_emits_floor_capped_and_conserves_charge():
    # theta = 1: v 2.5 -> 2 spikes (0.5); 0.7 -> 0; 7.7 -> min(7, 3) = 3 (4.7); 4.7 -> 3 (1.7)
    n = IFNeuron(torch.tensor(1.0, dtype=torch.float64), "const", max_spikes=3)
    assert steps(n, [2.5, 0.2, 7.0, 0.0]) == [2.0, 0.0, 3.0, 3.0]
    assert float(n.v) == pytest.approx(1.7)
    for method in ("const", "msat"):
        g = torch.Generator().manual_seed(2)
        xs = (torch.randn(300, generator=g) * 1.2 + 0.6).tolist()
        hp = None if method == "const" else TABLE2["resnet20"]
        ref, _, ref_v = run_neuron(xs, 0.9, method, hp, max_spikes=4)
        n = IFNeuron(torch.tensor(0.9, dtype=torch.float64), method, hp, max_spikes=4)
        out = steps(n, xs)
        assert out == pytest.approx(ref, abs=1e-9) and max(o / 0.9 for o in out) > 1.5  # bursts happened
        assert sum(out) == pytest.approx(0.9 * (sum(x / 0.9 for x in xs) - float(n.v)), abs=1e-9)
        assert float(n.v) == pytest.approx(ref_v, abs=1e-9)


def test_burst_in_api_and_energy_counts_every_spike():
    torch.manual_seed(0)
    m = msat.create_model("vgg16", 5, 1, 0.125).eval()
    x = torch.randn(4, 1, 16, 16)
    snn = msat.convert(m, [x], method="const", max_spikes=4)
    assert all(n.max_spikes == 4 for n in snn.neurons)
    from msat.spiking.monitors import FiringMonitor

    fm = FiringMonitor(20)
    counts = []
    spy = type("C", (), {"on_step": lambda s, n, t, th, f, e: counts.append(float(e.sum()))})()
    L = len(snn.neurons)
    with snn.monitor(20, counts=[fm] + [None] * (L - 1), spy=[spy] + [None] * (L - 1)) as mons:
        mons.begin_batch()
        msat.simulate(snn, x, 20)
    assert float(fm.state["spikes"].sum()) == pytest.approx(sum(counts))
    with pytest.raises(ValueError, match="max_spikes"):
        msat.convert(m, [x], method="const", max_spikes=0)


# ----------------------------------------------------------------- PLIF with multiple thresholds
def plif_run(deltas, xs):
    p = PLIF(deltas)  # tau = 2: H = V/2 + X/2
    p.steps = len(xs)
    return p(torch.tensor(xs, dtype=torch.float64).view(len(xs), 1)).view(-1).tolist()


def test_mt_forward_hand_computed():
    # H: 0.5 -> 1 aux spike (0.5 >= 0.5), V = 0.5; 1.75 -> 3 spikes, V = 0; 0.25 -> 0, V = 0.25;
    # 0.125 + 1.1 = 1.225 -> main + lower = 2, V = 0
    assert plif_run([-0.5, 0.5], [1.0, 3.0, 0.5, 2.2]) == [1.0, 3.0, 0.0, 2.0]
    assert plif_run([], [1.0, 3.0, 0.5, 2.2]) == [0.0, 1.0, 0.0, 1.0]


def test_deltas_empty_reduces_mt_to_st():
    torch.manual_seed(0)
    xs = (torch.rand(50) * 3).tolist()
    st = plif_run([], xs)
    mt = plif_run([-0.5, 0.5], xs)
    # the membrane only resets on the main spike, so ST's spikes are MT's main spikes (MT >= 2)
    assert st == [float(v >= 2) for v in mt]


def test_surrogate_gradient_of_each_threshold():
    p = PLIF([-0.5, 0.5])  # thresholds 0.5, 1, 1.5; rectangular window of width 1
    H = torch.tensor([0.9, 1.6, 0.2, 2.2, 1.0])
    X = (2 * H).requires_grad_(True)  # T = 1, tau = 2: H = X / 2
    p(X).sum().backward()
    # dOut/dH = sum over thresholds of 1{|H - thr| <= 0.5}: 0.9 -> 2 (0.5, 1), 1.6 -> 1 (1.5), 0.2 -> 1 (0.5),
    # 2.2 -> 0, 1.0 -> 3; dH/dX = 1/tau = 1/2
    assert X.grad.tolist() == pytest.approx([1.0, 0.5, 0.5, 0.0, 1.5])
    x = torch.tensor([-0.6, -0.5, 0.0, 0.5, 0.6], requires_grad=True)
    RectHeaviside.apply(x, 1.0).sum().backward()
    assert x.grad.tolist() == [0.0, 1.0, 1.0, 1.0, 0.0]


def test_bad_deltas():
    with pytest.raises(ValueError, match="coincide"):
        check_deltas([0.5, 0.5])
    with pytest.raises(ValueError, match="coincide"):
        check_deltas([0.0])
    with pytest.raises(ValueError, match="at or below 0"):
        check_deltas([-1.0])
    assert check_deltas([-0.5, 0.5]) == [-0.5, 0.5]


# ----------------------------------------------------------------- train_snn.py
SNN = ["dataset=digits", "dataset.image_size=16", "snn.width=0.125", "train.batch_size=64", "train.lr=0.05",
       "dataset.augment.rotation=0", "dataset.augment.translate=0", "dataset.augment.flip=false",
       "dataset.augment.crop_padding=2", "neuron.T=2", "eval.T=3"]


def snn_cfg(root, *extra):
    return compose(SNN + list(extra), root, config_name="snn")


@pytest.mark.e2e  # trains twice
def test_train_snn_tau_above_one_and_resume_exact(tmp_path):
    from msat.models import create_model

    cfg = snn_cfg(tmp_path / "a", "train.epochs=2")
    run_train_snn(cfg)
    ck = load_ann_checkpoint(tmp_path / "a/checkpoints/digits/mt_vgg9_w0.125_mt_T2_s0/last.pt", kind="mt_snn")
    model = create_model(**ck["model_spec"])
    model.load_state_dict(ck["model"])
    taus = [float(p.tau) for p in model.plif_layers()]
    assert taus and min(taus) > 1.0 and any(abs(t - 2.0) > 1e-4 for t in taus)  # learned, still above 1
    with pytest.raises(TrainingInterrupted):
        run_train_snn(snn_cfg(tmp_path / "b", "train.epochs=2", "train.interrupt_after_steps=30"))
    run_train_snn(snn_cfg(tmp_path / "b", "train.epochs=2", "resume=true"))
    b = load_ann_checkpoint(tmp_path / "b/checkpoints/digits/mt_vgg9_w0.125_mt_T2_s0/last.pt", kind="mt_snn")
    assert all(torch.equal(ck["model"][k], b["model"][k]) for k in ck["model"])
    # evaluate.py --config-name snn: accuracy after every t up to eval.T
    res = run_evaluate(snn_cfg(tmp_path / "a", "train.epochs=2"))
    assert len(res["acc"]) == 3 and res["method"] == "mt-snn" and res["trained_T"] == 2
    (pred_file,) = (tmp_path / "a").rglob("predictions.pt")  # per-image results, for msat.report's paired tests
    pred = torch.load(pred_file, weights_only=True)
    assert pred["steps"] == [1, 2, 3] and pred["correct"].shape == (res["n_samples"], 3)
    torch.testing.assert_close(100.0 * pred["correct"].double().mean(0), torch.tensor(res["acc"], dtype=torch.float64))


def test_tau_stays_above_one_during_training():
    torch.manual_seed(0)
    m = msat.create_model("mt_vgg9", 4, 1, 0.125, T=2, input_size=8)
    opt = torch.optim.SGD(m.parameters(), lr=0.5)
    x, y = torch.randn(16, 1, 8, 8), torch.randint(0, 4, (16,))
    seen = []
    for _ in range(30):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(m(x), y).backward()
        opt.step()
        seen += [float(p.tau) for p in m.plif_layers()]
    assert min(seen) > 1.0


@pytest.mark.parametrize("override,match", [
    ("neuron.T=0", "neuron.T"),
    ("neuron.deltas=[0.5,0.5]", "coincide"),
    ("neuron.deltas=[-1.5]", "at or below 0"),
])
def test_bad_train_snn_input(tmp_path, override, match):
    with pytest.raises(ValueError, match=match):
        run_train_snn(snn_cfg(tmp_path, "train.epochs=1", override))


def test_checkpoint_kinds_are_not_mixed(tmp_path, digits_run):
    run_train_snn(snn_cfg(tmp_path, "train.epochs=1"))
    mt_ckpt = tmp_path / "checkpoints/digits/mt_vgg9_w0.125_mt_T2_s0/last.pt"
    # a train_snn checkpoint handed to convert.py
    ann_dir = tmp_path / "checkpoints/digits/vgg16_w0.25_s0"
    ann_dir.mkdir(parents=True)
    shutil.copy(mt_ckpt, ann_dir / "last.pt")
    with pytest.raises(CheckpointError, match="'mt_snn' checkpoint .*train_snn.py.*not a 'ann'"):
        run_convert(compose(["experiment=demo"], tmp_path))
    # an ANN checkpoint handed to the MT evaluator
    src, _ = digits_run
    shutil.copy(src / "checkpoints/digits/vgg16_w0.25_s0/last.pt", mt_ckpt)
    with pytest.raises(CheckpointError, match="'ann' checkpoint .*train_ann.py.*not a 'mt_snn'"):
        run_evaluate(snn_cfg(tmp_path, "train.epochs=1"))


def test_method_max_spikes_below_one_is_an_error(ckpt_root):
    tmp_path = ckpt_root
    with pytest.raises(ValueError, match="max_spikes must be an integer >= 1"):
        run_evaluate(compose(["experiment=demo", "method=burst", "method.max_spikes=0", "eval.T=8",
                              "eval.checkpoints=[8]", "sin.T=8", "eval.max_samples=10"], tmp_path))


def test_multistep_evaluation_keeps_each_images_correctness():
    from msat.harness.evaluation import evaluate_multistep

    torch.manual_seed(0)
    m = msat.create_model("mt_vgg9", 4, 1, 0.125, T=2, input_size=8)
    data = torch.utils.data.TensorDataset(torch.randn(23, 1, 8, 8), torch.randint(0, 4, (23,)))
    r = evaluate_multistep(m, data, T=3, batch_size=5, device=torch.device("cpu"), progress=False, record_at=[1, 3])
    assert r["per_image"].shape == (23, 2)
    torch.testing.assert_close(r["per_image"].sum(0), r["correct"][[0, 2]])
    with torch.no_grad():  # image 17 (in the fourth batch) on its own
        want = torch.cumsum(m.forward_steps(data[17][0].unsqueeze(0), 3), 0).argmax(-1)[:, 0] == data[17][1]
    assert r["per_image"][17].tolist() == want[[0, 2]].double().tolist()
    with pytest.raises(ValueError, match="record_at"):
        evaluate_multistep(m, data, T=3, batch_size=5, device=torch.device("cpu"), progress=False, record_at=[4])
