"""FTBC (msat.conversion.corrections.ftbc): a per-layer, per-channel, per-step input bias found in
forward passes; a correction like the others, and a named method (method=ftbc)."""

import torch
from torch import nn

import msat


def _net():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.MaxPool2d(2),
                        nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 4 * 4, 10))
    with torch.no_grad():
        net[1].running_mean.uniform_(-0.2, 0.2)
        net[1].running_var.uniform_(0.5, 2.0)
    return net.double().eval(), torch.randn(64, 3, 8, 8, dtype=torch.float64)


def test_ftbc_fits_a_bias_per_layer_channel_and_step_that_shrinks_the_step_errors():
    net, x = _net()
    T = 12
    snn = msat.convert(net, [x] * 4, msat.METHODS["ftbc"].replace(correction_T=T))
    report = snn.conversion["correction_report"]
    assert report["batches"] == 4 and report["T"] == T
    for n in snn.neurons:
        assert n.bias_per_step and n.bias.shape[0] == T and n.bias.shape[1] == n.lam.numel() or n.lam.dim() == 0
    # the same batch four times: each pass starts from the last one's biases, and its errors are smaller
    for first, last in zip(report["error_first_batch"], report["error_last_batch"]):
        assert last < first


def test_an_ftbc_artifact_rebuilds_the_same_network():
    net, x = _net()
    conv = msat.Converter(msat.METHODS["ftbc"].replace(correction_T=8))
    snn = conv.run(net, [x, x])
    state = conv.state(snn)
    assert state["correction_state"]["bias_per_step"] == [True, True]
    _, again = msat.Converter(msat.Recipe.from_dict(state["recipe"])).restore(net, state)
    torch.testing.assert_close(msat.simulate(again, x, 20), msat.simulate(snn, x, 20), rtol=0, atol=0)
