"""The per-layer error split (msat.layer_errors): known answers, the zero-activation case,
the Pythagorean identity and batching."""

import pytest
import torch
from torch import nn

import msat
from msat.analysis.errors import first_layer_over


def _one_layer(lam=1.0, n=6):
    torch.manual_seed(0)
    lin = nn.Linear(n, n, bias=False)
    with torch.no_grad():
        lin.weight.copy_(torch.eye(n))
    return nn.Sequential(lin, nn.ReLU(), nn.Linear(n, 3)).double().eval()


class _Sum:
    total = 0

    def on_step(self, neuron, t, theta, fired, emitted):
        self.total = self.total + emitted * theta * neuron.lam


def test_const_v_init_half_rate_error_is_within_lam_over_2T():
    """Inputs within [0, lam] and v_init 0.5: every neuron's |r_T - a| <= lam / (2T), so
    qc <= sqrt(N) lam / (2T) / ||a||."""
    net = _one_layer()
    x = torch.rand(16, 6, dtype=torch.float64) * 0.999  # a = x in [0, lam), lam = 1
    snn = msat.convert(net, [x], method="const", lam=[torch.tensor(1.0, dtype=torch.float64)], v_init=0.5)
    for T in (4, 16, 64):
        rec = _Sum()
        handle = snn.neurons[0].register_step_hook(rec)
        msat.simulate(snn, x, T)
        handle.remove()
        r = rec.total / T
        assert float((r - x).abs().max()) <= 1.0 / (2 * T) + 1e-12
        e = msat.layer_errors(net, snn, x, T=T)
        bound = (x.numel() ** 0.5) * (1.0 / (2 * T)) / float(x.norm())
        assert float(e["qc"][0][T - 1]) <= bound * (1 + 1e-6)
        assert float(e["sin"][0][T - 1]) == 0.0  # no inactivated neuron: pre >= 0 everywhere


def test_a_layer_that_never_activates_gets_undivided_norms_and_no_nan():
    net = _one_layer()
    with torch.no_grad():
        net[0].weight.neg_()  # every pre-activation < 0 on positive inputs: a = 0
    x = torch.rand(8, 6, dtype=torch.float64) + 0.1
    snn = msat.convert(net, [x], method="const", lam=[torch.tensor(1.0, dtype=torch.float64)], v_init=0.5)
    e = msat.layer_errors(net, snn, x, T=8)
    assert e["a_norm"][0] == 0.0
    for k in ("rel_l2", "qc", "sin"):
        assert torch.isfinite(e[k][0]).all()
    # undivided: the SNN never fires either, so every norm is 0 exactly
    assert float(e["rel_l2"][0].abs().max()) == 0.0


class _Res(nn.Module):
    def __init__(self):
        super().__init__()
        self.c1 = nn.Conv2d(3, 6, 3, padding=1)
        self.c2 = nn.Conv2d(6, 6, 3, padding=1)
        self.c3 = nn.Conv2d(6, 6, 3, padding=1)
        self.r1, self.r2, self.r3 = nn.ReLU(), nn.ReLU(), nn.ReLU()
        self.fc = nn.Linear(6 * 8 * 8, 4)

    def forward(self, x):
        h = self.r1(self.c1(x))
        h = self.r3(self.c3(self.r2(self.c2(h))) + h)
        return self.fc(h.flatten(1))


def test_rel_l2_squared_is_qc_squared_plus_sin_squared_on_a_residual_net():
    torch.manual_seed(1)
    net = _Res().double().eval()
    x = torch.randn(6, 3, 8, 8, dtype=torch.float64)
    snn = msat.convert(net, [x], method="msat", hparams=msat.TABLE2["resnet20"])
    e = msat.layer_errors(net, snn, x, T=24)
    assert len(e["rel_l2"]) == 3
    for rel, qc, sin in zip(e["rel_l2"], e["qc"], e["sin"]):
        torch.testing.assert_close(rel.double() ** 2, qc.double() ** 2 + sin.double() ** 2, rtol=1e-5, atol=1e-9)
    assert any(float(s.max()) > 0 for s in e["sin"])  # MSAT's early spikes of inactivated neurons are seen


def test_two_batches_give_the_numbers_of_one_batch_holding_both():
    torch.manual_seed(2)
    net = _Res().double().eval()
    x = torch.randn(8, 3, 8, 8, dtype=torch.float64)
    snn = msat.convert(net, [x], method="const")
    both = msat.layer_errors(net, snn, x, T=12)
    split = msat.layer_errors(net, snn, [x[:3], x[3:]], T=12)
    for k in ("rel_l2", "qc", "sin"):
        for a, b in zip(both[k], split[k]):
            torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-9)


def test_first_layer_over_and_bad_input():
    e = {"qc": [torch.tensor([0.5, 0.1]), torch.tensor([0.9, 0.4])]}
    assert first_layer_over(e, "qc", 2, 0.3) == 1
    assert first_layer_over(e, "qc", 2, 0.5) is None
    net = _one_layer()
    x = torch.rand(4, 6, dtype=torch.float64)
    snn = msat.convert(net, [x], method="const")
    with pytest.raises(ValueError, match="T"):
        msat.layer_errors(net, snn, x, T=0)
    with pytest.raises(ValueError, match="does not fit the ANN"):
        msat.layer_errors(net, snn, torch.rand(4, 5, dtype=torch.float64), T=4)
