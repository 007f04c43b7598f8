"""A whole network against an oracle written from the spec alone, in float64; the spec's
energy check against the paper's Table 8; and the MT-SNN neuron (mt.md) on random sequences.

The oracle below uses no part of ``msat``: it runs the ANN's own layers (BatchNorm unfolded,
in eval mode) on spike outputs, keeps the neuron state of spec section 2 in plain tensors,
does LIPooling by the running-sum rule of section 1.4, and sums the classifier over time
(section 1.5). ``lam`` is the maximum ReLU output over the calibration batch (section 1.3).
The net mixes every ReLU call form the spec names, a ReLU module used at two sites, a
residual addition, a concatenation, a non-overlapping and an overlapping max pool, and a
channel that never fires.
"""

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import msat

HP = msat.TABLE2["resnet20"]


class Net(nn.Module):
    def __init__(self, classes=5):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(3, 6, 3, padding=1), nn.BatchNorm2d(6)
        self.conv2, self.bn2 = nn.Conv2d(6, 6, 3, padding=1, bias=False), nn.BatchNorm2d(6)
        self.conv3 = nn.Conv2d(12, 8, 3, padding=1)
        self.conv4 = nn.Conv2d(8, 8, 1)
        self.relu = nn.ReLU()  # used at two call sites: two spiking layers
        self.pool = nn.MaxPool2d(2)
        self.opool = nn.MaxPool2d(3, stride=2, padding=1)  # overlapping windows
        self.fc = nn.Linear(8, classes)

    def forward(self, x):
        a = self.relu(self.bn1(self.conv1(x)))  # layer 1
        b = F.relu(self.bn2(self.conv2(a)) + a)  # layer 2, after a residual addition
        c = torch.relu(self.conv3(torch.cat([a, b], 1)))  # layer 3, on a concatenation
        c = self.pool(c)
        d = self.conv4(c).relu()  # layer 4
        d = self.relu(self.opool(d) * 2.0 - 0.1)  # layer 5: the shared module's second site
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(d, 1), 1))


def make_net():
    torch.manual_seed(3)
    net = Net()
    with torch.no_grad():
        for bn in (net.bn1, net.bn2):
            bn.running_mean.uniform_(-0.3, 0.3)
            bn.running_var.uniform_(0.5, 2.0)
            bn.weight.uniform_(0.5, 1.5)
            bn.bias.uniform_(-0.2, 0.2)
        net.bn1.bias[0] = -50.0  # channel 0 of layer 1 never fires (the layer's lam is still > 0)
        net.fc.weight.uniform_(-3.0, 3.0)  # so that the samples' outputs differ clearly
    return net.eval().double()


def relu_inputs(net, x):
    """The pre-activations of the five ReLU sites, by running the ANN's forward by hand."""
    p1 = net.bn1(net.conv1(x))
    a = F.relu(p1)
    p2 = net.bn2(net.conv2(a)) + a
    b = F.relu(p2)
    p3 = net.conv3(torch.cat([a, b], 1))
    c = net.pool(F.relu(p3))
    p4 = net.conv4(c)
    p5 = net.opool(F.relu(p4)) * 2.0 - 0.1
    return [p1, p2, p3, p4, p5]


class OracleNeurons:
    """Spec section 2, per layer: v, the previous residual u, the running sum s, step t."""

    def __init__(self, lam, method):
        self.lam, self.method, self.t = lam, method, 0
        self.v = self.u = self.s = self.fired_by = None
        self.fired_by_t = []  # per step: which neurons have fired in steps 1..t

    def step(self, inp):
        if self.v is None:
            self.v, self.u, self.s = (torch.zeros_like(inp) for _ in range(3))
        self.t += 1
        t, x = self.t, inp / self.lam
        if self.method == "const" or t == 1:
            theta = torch.ones_like(x)
        else:
            d = self.u - self.s / (t - 1)
            dtt = HP["tau_mp"] * (HP["alpha"] * d - 1.0 + HP["k_a"] * F.softplus(d / HP["k_i"]))
            det = HP["tau_rd"] * torch.exp(-x / HP["C"])
            z = {"msat": dtt + det, "dtt": dtt, "det": det}[self.method]
            theta = torch.sigmoid(z)
        self.v = self.v + x
        spike = (self.v >= theta).double()
        self.fired_by = spike > 0 if self.fired_by is None else self.fired_by | (spike > 0)
        self.fired_by_t.append(self.fired_by)
        self.v = self.v - theta * spike
        self.u, self.s = self.v, self.s + self.v
        return spike * theta * self.lam


class OracleLIPool:
    """Running sum S of the input; y = maxpool(S); S -= y on its window (section 1.4). The
    overlapping pool keeps one running sum per window (the input unfolded)."""

    def __init__(self, k, stride, padding):
        self.k, self.stride, self.padding, self.S = k, stride, padding, None

    def step(self, z):
        B, C, H, W = z.shape
        cols = F.unfold(z, self.k, padding=self.padding, stride=self.stride)  # B, C*k*k, L
        cols = cols.view(B, C, self.k * self.k, -1)
        if self.padding:  # padded positions never win: -inf, as max_pool2d pads
            ones = F.unfold(torch.ones(1, 1, H, W, dtype=z.dtype), self.k, padding=self.padding, stride=self.stride)
            cols = cols.masked_fill(ones.view(1, 1, self.k * self.k, -1) == 0, float("-inf"))
        self.S = cols if self.S is None else self.S + cols
        y = self.S.max(2).values  # B, C, L
        self.S = self.S - y.unsqueeze(2)
        Ho = (H + 2 * self.padding - self.k) // self.stride + 1
        return y.view(B, C, Ho, -1)


def oracle(net, x, calib, method, T):
    lams = [float(p.clamp(min=0).max()) for p in relu_inputs(net, calib)]
    neurons = [OracleNeurons(lam, method) for lam in lams]
    pool, opool = OracleLIPool(2, 2, 0), OracleLIPool(3, 2, 1)
    total, outs = 0, []
    for _ in range(T):
        a = neurons[0].step(net.bn1(net.conv1(x)))
        b = neurons[1].step(net.bn2(net.conv2(a)) + a)
        c = pool.step(neurons[2].step(net.conv3(torch.cat([a, b], 1))))
        d = neurons[3].step(net.conv4(c))
        e = neurons[4].step(opool.step(d) * 2.0 - 0.1)
        total = total + net.fc(torch.flatten(F.adaptive_avg_pool2d(e, 1), 1))
        outs.append(total)
    return torch.stack(outs), lams, neurons


@pytest.mark.parametrize("method", ["const", "msat", "dtt", "det"])
@torch.no_grad()
def test_whole_network_matches_a_spec_oracle_in_float64(method):
    net = make_net()
    calib, x = (torch.randn(n, 3, 12, 12, dtype=torch.float64) + torch.randn(n, 3, 1, 1, dtype=torch.float64)
                for n in (16, 6))
    T = 48
    want, lams, _ = oracle(net, x, calib, method, T)
    snn = msat.convert(net, [calib], method=method, hparams=None if method == "const" else HP)
    assert len(snn.neurons) == 5
    torch.testing.assert_close(torch.tensor([float(n.lam) for n in snn.neurons], dtype=torch.float64),
                               torch.tensor(lams, dtype=torch.float64), rtol=1e-12, atol=0.0)
    got = msat.simulate(snn, x, T)
    assert got.shape == want.shape == (T, 6, 5)
    torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-9)
    assert torch.equal(got.argmax(-1), want.argmax(-1))
    # not a trivial agreement: the net fires, and the samples' outputs differ
    assert float((want[-1] - T * net.fc.bias).abs().max()) > 1e-2
    assert float((want[-1] - want[-1].mean(0)).abs().max()) > 1e-2


def oracle_sin(net, x, calib, T):
    """SIN ratio per layer and step, and the SIN and fired counts (spec section 3)."""
    _, _, neurons = oracle(net, x, calib, "msat", T)
    inactive = [p < 0 for p in relu_inputs(net, x)]
    sin = [torch.tensor([float((neg & f).sum()) for f in n.fired_by_t], dtype=torch.float64)
           for neg, n in zip(inactive, neurons)]
    fired = [torch.tensor([float(f.sum()) for f in n.fired_by_t], dtype=torch.float64) for n in neurons]
    return [s / neg.numel() for s, neg in zip(sin, inactive)], sin, fired, [neg.numel() for neg in inactive]


@torch.no_grad()
def test_sin_ratio_and_spike_confidence_match_the_oracle():
    net = make_net()
    calib, x = (torch.randn(n, 3, 12, 12, dtype=torch.float64) + torch.randn(n, 3, 1, 1, dtype=torch.float64)
                for n in (16, 6))
    T, E = 40, 16
    ratios, _, _, _ = oracle_sin(net, x, calib, T)
    snn = msat.convert(net, [calib], method="msat", hparams=HP)
    got = msat.measure_sin(net, snn, x, T)
    assert len(got) == 5
    for g, w in zip(got, ratios):
        torch.testing.assert_close(g.double(), w, rtol=1e-6, atol=0.0)
    assert float(ratios[0][-1]) == 0.0  # the first layer sees the analog image: no SIN can happen there
    assert float(ratios[2][-1]) > 0.001  # but it does further on
    # p = 1 - SIN by E / fired by E, measured on the first calibration batch; and the "all" variant
    _, sin, fired, sizes = oracle_sin(net, calib, calib, E)
    for r_def, denom in (("fired", [f[E - 1] for f in fired]), ("all", sizes)):
        want = [1.0 - float(s[E - 1]) / float(d) if float(d) > 0 else 1.0 for s, d in zip(sin, denom)]
        assert min(want) < 0.99
        sc = dict(p=None, early_steps=E, layers="all", r_definition=r_def)
        snn = msat.convert(net, [calib], method="msat", hparams=HP, sc=sc)
        torch.testing.assert_close(torch.tensor([n.sc_p for n in snn.neurons], dtype=torch.float64),
                                   torch.tensor(want, dtype=torch.float64), rtol=1e-12, atol=1e-12)


def test_energy_operation_counts_and_ratio_reproduce_table8():
    """Spec section 4's check: VGG16 for 100 classes has the paper's OP_ANN totals (Table 8:
    1.77M in the layer fed by the image, 311.48M after it), and Eq. 23 on Table 8's SNN totals
    gives its ratios, 0.716 (MSAT) and 0.934 (Burst)."""
    from msat.analysis.energy import energy_ratio, layer_ops
    from msat.conversion.prepare import prepare_ann

    layers = layer_ops(prepare_ann(msat.create_model("vgg16", num_classes=100).eval()), torch.randn(1, 3, 32, 32))
    first = sum(layer.ops for layer in layers if layer.sources is None)
    rest = sum(layer.ops for layer in layers if layer.sources is not None)
    assert round(first / 1e6, 2) == 1.77 and round(rest / 1e6, 2) == 311.48
    assert all(layer.sources for layer in layers if layer.sources is not None)  # every later layer is fed by spikes
    for op_snn, want in ((1137.53e6, 0.716), (1486.79e6, 0.934)):
        n = op_snn / rest  # the same mean spike count in every layer gives the same totals
        e = energy_ratio(layers, [n] * 13)
        torch.testing.assert_close(e["op_snn_rest"], op_snn, rtol=1e-9, atol=0.0)
        assert round(e["energy_ratio"], 3) == want


def test_plif_with_multiple_thresholds_matches_the_spec_on_random_sequences():
    """mt.md section 2: H = (1 - 1/tau) V + X / tau with tau = 1 + exp(-a); a main spike at
    V_th, one auxiliary spike per delta at V_th + d; hard reset to 0 by the main spike."""
    from msat.spiking.plif import PLIF

    torch.manual_seed(5)
    T, n = 12, 40
    xs = (torch.randn(T, n) * 1.2 + 0.8).double()
    for deltas, a in (([-0.5, 0.5], 0.3), ([], -0.7), ([-0.3, 0.4, 0.9], 1.1)):
        plif = PLIF(deltas).double()
        with torch.no_grad():
            plif.a.fill_(a)
        plif.steps = T
        got = plif(xs.reshape(T * n, 1)).view(T, n)
        tau = 1.0 + torch.exp(torch.tensor(-a, dtype=torch.float64))
        want = torch.zeros(T, n, dtype=torch.float64)
        for i in range(n):
            v = 0.0
            for t in range(T):
                h = (1 - 1 / float(tau)) * v + float(xs[t, i]) / float(tau)
                main = 1.0 if h >= 1.0 else 0.0
                want[t, i] = main + sum(1.0 for d in deltas if h >= 1.0 + d)
                v = 0.0 if main else h
        torch.testing.assert_close(got, want, rtol=0.0, atol=0.0)
        assert float(want.max()) == 1 + len(deltas) and float(want.min()) == 0.0
