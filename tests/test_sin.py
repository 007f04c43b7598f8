"""SIN statistics and spike confidence on a hand-built two-layer net (spec section 3)."""

import pytest
import torch
from torch import nn

import msat
from msat.conversion.prepare import prepare_ann
from msat.conversion.sin import sin_statistics, spike_confidence
from reference import run_neuron

T = 20


def two_layer_net():
    """x = 1. Layer 1: pre = [1.0, 0.3, -1.0] (A fires every step, B every ~3 steps, C never).
    Layer 2: N1 = A - 5 B (pre -0.5: inactivated, but A's early spikes make it fire before
    B's inhibition arrives), N2 = 0.5 A + B (pre 0.8, active), N3 = -A (pre -1: never fires)."""
    net = nn.Sequential(nn.Linear(1, 3, bias=False), nn.ReLU(), nn.Linear(3, 3, bias=False), nn.ReLU(),
                        nn.Linear(3, 1, bias=False)).double().eval()
    with torch.no_grad():
        net[0].weight.copy_(torch.tensor([[1.0], [0.3], [-1.0]]))
        net[2].weight.copy_(torch.tensor([[1.0, -5.0, 0.0], [0.5, 1.0, 0.0], [-1.0, 0.0, 0.0]]))
        net[4].weight.fill_(1.0)
    return net


def hand_layer2_spikes():
    """Spike trains of layer 2 from the scalar reference (const threshold, lam1 = 1, lam2 = 0.8)."""
    a, _, _ = run_neuron([1.0] * T, 1.0, "const")
    b, _, _ = run_neuron([0.3] * T, 1.0, "const")
    n1, _, _ = run_neuron([ai - 5 * bi for ai, bi in zip(a, b)], 0.8, "const")
    n2, _, _ = run_neuron([0.5 * ai + bi for ai, bi in zip(a, b)], 0.8, "const")
    return [o > 0 for o in n1], [o > 0 for o in n2]


def test_sin_ratio_and_ans_match_hand_computation():
    net = two_layer_net()
    x = torch.ones(1, 1, dtype=torch.float64)
    snn = msat.convert(net, [x], method="const")
    assert [float(v) for v in snn.lam] == pytest.approx([1.0, 0.8])
    n1, n2 = hand_layer2_spikes()
    assert n1[0] and not any(n1[3:6]), "the construction: N1 fires at t=1, then B's inhibition silences it"

    ratios = msat.measure_sin(net, snn, x, T)
    assert len(ratios) == 2 and all(r.shape == (T,) and r.dtype == torch.float32 for r in ratios)
    # layer 1: C is inactivated but never fires (constant negative input): no SIN
    assert torch.equal(ratios[0], torch.zeros(T))
    # layer 2: N1 has SIN from t=1 on, N3 never fires: 1 of 3 neurons
    assert torch.allclose(ratios[1], torch.full((T,), 1 / 3))

    mons = sin_statistics(prepare_ann(net), snn, x, T)
    assert mons[1].ans() == pytest.approx(float(sum(n1)))  # SIN spikes per neuron with SIN (one neuron)
    fired_by_t = [float(any(n1[:t]) + any(n2[:t])) for t in range(1, T + 1)]
    assert mons[1].fired_count.tolist() == fired_by_t
    among = mons[1].ratio_among_fired()
    assert among[0] == pytest.approx(1.0) and among[-1] == pytest.approx(0.5)  # N1 alone at t=1, then N1 and N2
    # spike confidence at E: r = SIN / fired (default) or SIN / all neurons
    E = 5
    assert spike_confidence(mons, E, "fired")[1] == pytest.approx(1 - 1 / fired_by_t[E - 1])
    assert spike_confidence(mons, E, "all")[1] == pytest.approx(1 - 1 / 3)
    assert spike_confidence(mons, E)[0] == 1.0


def test_measure_sin_needs_the_converted_model():
    net = two_layer_net()
    x = torch.ones(1, 1, dtype=torch.float64)
    snn = msat.convert(net, [x], method="const")
    other = nn.Sequential(nn.Linear(1, 2), nn.ReLU(), nn.Linear(2, 1)).double().eval()
    with pytest.raises(ValueError, match="ReLU sites"):
        msat.measure_sin(other, snn, x, 4)


# ----------------------------------------------------------------- spike confidence through the API
def small_vgg():
    torch.manual_seed(0)
    m = msat.create_model("vgg16", 5, 1, 0.125).eval()
    for mod in m.modules():
        if isinstance(mod, nn.BatchNorm2d):
            mod.running_var.uniform_(0.5, 1.5)
            mod.bias.data.uniform_(-0.1, 0.3)
    return m


def test_sc_p1_is_bit_identical_and_p0_silences_the_last_layer():
    m = small_vgg()
    x = torch.randn(6, 1, 16, 16)
    plain = msat.convert(m, [x], method="msat", hparams=msat.TABLE2["vgg16"])
    ones = msat.convert(m, [x], method="msat", hparams=msat.TABLE2["vgg16"], sc=dict(p=1.0, early_steps=10))
    assert torch.equal(msat.simulate(plain, x, 30), msat.simulate(ones, x, 30))

    zero = msat.convert(m, [x], method="msat", hparams=msat.TABLE2["vgg16"],
                        sc=dict(p=0.0, early_steps=10, layers="last"))
    seen = []

    class Spy:
        def on_step(self, neuron, t, theta, fired, emitted):
            seen.append((float(fired.sum()), float(emitted.sum())))

    with zero.monitor(30, spy=[None] * (len(zero.neurons) - 1) + [Spy()]):
        msat.simulate(zero, x, 30)
    assert all(e == 0 for _, e in seen[:10]) and any(f > 0 for f, _ in seen[:10])
    assert any(e > 0 for _, e in seen[10:])
    assert zero.sc_config["layers"] == [len(zero.neurons) - 1]


def test_sc_seeded_and_measured_p():
    m = small_vgg()
    x = torch.randn(6, 1, 16, 16)
    kw = dict(method="msat", hparams=msat.TABLE2["vgg16"])
    a = msat.convert(m, [x], **kw, sc=dict(p=0.5, early_steps=12, layers="all", seed=1))
    b = msat.convert(m, [x], **kw, sc=dict(p=0.5, early_steps=12, layers="all", seed=1))
    c = msat.convert(m, [x], **kw, sc=dict(p=0.5, early_steps=12, layers="all", seed=2))
    ya, yb, yc = (msat.simulate(s, x, 20) for s in (a, b, c))
    assert torch.equal(ya, yb) and not torch.equal(ya, yc)
    assert torch.equal(ya, msat.simulate(a, x, 20))  # simulate resets the generator too
    # p measured on one calibration batch: 1 - SIN/fired of the last layer at E
    d = msat.convert(m, iter([x, x]), **kw, sc=dict(early_steps=8))
    mons = sin_statistics(prepare_ann(m), msat.convert(m, [x], **kw), x, 8)
    assert d.sc_config["p"] == pytest.approx([spike_confidence(mons, 8)[-1]])
    e = msat.convert(m, [x], **kw, sc=dict(early_steps="auto", T=40))
    assert 1 <= e.sc_config["early_steps"] <= 40


def test_sc_bad_arguments():
    m = small_vgg()
    x = torch.randn(2, 1, 16, 16)
    kw = dict(method="msat", hparams=msat.TABLE2["vgg16"])
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        msat.convert(m, [x], **kw, sc=dict(p=1.5))
    with pytest.raises(ValueError, match="unknown spike-confidence keys"):
        msat.convert(m, [x], **kw, sc=dict(prob=0.5))
    with pytest.raises(ValueError, match="early_steps"):
        msat.convert(m, [x], **kw, sc=dict(p=0.5, early_steps=0))
