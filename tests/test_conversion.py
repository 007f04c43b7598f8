import pytest
import torch
import torch.nn.functional as F
from torch import nn

import msat
from msat import ConversionError
from msat.conversion.lam import LamObserver, calibrate
from msat.conversion.prepare import prepare_ann
from msat.spiking.pooling import LIPool


def randomize_bn(model: nn.Module, seed: int = 0) -> nn.Module:
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            c = m.num_features
            m.running_mean.copy_(torch.rand(c, generator=g) * 0.4 - 0.2)
            m.running_var.copy_(torch.rand(c, generator=g) * 1.5 + 0.5)
            m.weight.data.copy_(torch.rand(c, generator=g) + 0.5)
            m.bias.data.copy_(torch.rand(c, generator=g) * 0.4 - 0.2)
    return model.eval()


class AllReLUKinds(nn.Module):
    """nn.ReLU, F.relu, torch.relu, Tensor.relu, and one nn.ReLU object used at two sites."""

    def __init__(self):
        super().__init__()
        self.c1 = nn.Conv2d(1, 4, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(4)
        self.act = nn.ReLU(inplace=True)
        self.c2 = nn.Conv2d(4, 4, 3, padding=1)
        self.c3 = nn.Conv2d(4, 4, 3, padding=1)
        self.c4 = nn.Conv2d(4, 4, 3, padding=1)
        self.shared = nn.ReLU()
        self.c5 = nn.Conv2d(4, 4, 3, padding=1)
        self.fc = nn.Linear(4 * 4 * 4, 3)

    def forward(self, x):
        x = self.act(self.bn1(self.c1(x)))
        x = F.relu(self.c2(x), inplace=True)
        x = torch.relu(self.c3(x))
        x = self.c4(x).relu()
        x = self.shared(x)  # shared object, first site
        x = F.max_pool2d(x, 2)
        x = self.shared(self.c5(x))  # shared object, second site
        return self.fc(torch.flatten(x, 1))


class LambdaLayer(nn.Module):
    def __init__(self, fn):
        super().__init__()
        self.fn = fn

    def forward(self, x):
        return self.fn(x)


class OptionABlock(nn.Module):
    """A torchvision-style CIFAR BasicBlock with F.relu and a zero-padding shortcut."""

    def __init__(self, c_in, c_out, stride):
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.shortcut = nn.Identity()
        if stride != 1 or c_in != c_out:
            pad = (c_out - c_in) // 2
            self.shortcut = LambdaLayer(lambda x: F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, pad, pad)))

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        out += self.shortcut(x)
        return F.relu(out)


class OptionAResNet(nn.Module):
    def __init__(self, num_classes=10):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 4, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(4)
        self.layers = nn.Sequential(OptionABlock(4, 4, 1), OptionABlock(4, 8, 2), OptionABlock(8, 16, 2))
        self.linear = nn.Linear(16, num_classes)

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.layers(out)
        out = F.avg_pool2d(out, out.size()[3])
        return self.linear(out.view(out.size(0), -1))


# ----------------------------------------------------------------- BN folding and sites
@pytest.mark.parametrize("name,size", [("vgg16", 32), ("resnet20", 16), ("resnet34", 32)])
def test_bn_folding_keeps_outputs(name, size):
    torch.manual_seed(0)
    model = randomize_bn(msat.create_model(name, 10, 3, 0.25))
    x = torch.randn(4, 3, size, size)
    ann = prepare_ann(model)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in ann.modules())
    with torch.no_grad():
        ref = model(x)
        # folding reorders float rounding; the error grows with depth and scale, not with the CPU
        torch.testing.assert_close(ann(x), ref, rtol=1e-5, atol=1e-5 * float(ref.abs().max()))


def test_every_relu_site_becomes_a_neuron():
    model = randomize_bn(AllReLUKinds())
    x = torch.randn(5, 1, 8, 8)
    ann = prepare_ann(model)
    assert len(ann.sites) == 6
    assert ann.sites[-2].name == "shared" and ann.sites[-1].name == "shared#1"
    with torch.no_grad():
        ref = model(x)
        torch.testing.assert_close(ann(x), ref, rtol=1e-5, atol=1e-5 * float(ref.abs().max()))
    snn = msat.convert(model, [x], method="const")
    assert len(snn.neurons) == 6 and len({id(n) for n in snn.neurons}) == 6
    assert sum(isinstance(m, LIPool) for m in snn.modules()) == 1  # F.max_pool2d -> LIPool
    assert msat.simulate(snn, x, 4).shape == (4, 5, 3)


def test_user_model_is_not_modified():
    model = randomize_bn(AllReLUKinds())
    before = {k: v.clone() for k, v in model.state_dict().items()}
    msat.convert(model, [torch.randn(2, 1, 8, 8)], method="msat", hparams=msat.TABLE2["vgg16"])
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert any(isinstance(m, nn.BatchNorm2d) for m in model.modules())


def test_option_a_resnet_with_functional_relu_converts():
    torch.manual_seed(0)
    model = randomize_bn(OptionAResNet())
    x = torch.randn(6, 3, 16, 16)
    snn = msat.convert(model, [x], method="const")
    assert len(snn.neurons) == 7
    out = msat.simulate(snn, x, 400)
    rate = out[-1] / 400
    with torch.no_grad():
        ref = model(x)
    # the max-norm SNN approaches the ANN as T grows
    assert (rate - ref).abs().max() < 0.1 * ref.abs().max()


def test_timm_resnet34_converts_with_overlapping_lipool():
    torch.manual_seed(0)
    model = randomize_bn(msat.create_model("resnet34", 10, 3, 0.125))
    x = torch.randn(2, 3, 32, 32)
    snn = msat.convert(model, [x], method="msat", hparams=msat.TABLE2["resnet34"])
    assert len(snn.neurons) == 33
    pools = [m for m in snn.modules() if isinstance(m, LIPool)]
    assert len(pools) == 1 and pools[0].kernel_size in (3, (3, 3)) and pools[0].stride in (2, (2, 2))
    assert msat.simulate(snn, x, 3).shape == (3, 2, 10)


class WithGELU(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1, self.act, self.fc2 = nn.Linear(4, 4), nn.GELU(), nn.Linear(4, 2)

    def forward(self, x):
        return self.fc2(torch.relu(self.act(self.fc1(x))))


class WithSigmoid(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(4, 4), nn.Linear(4, 2)

    def forward(self, x):
        return self.fc2(torch.sigmoid(F.relu(self.fc1(x))))


class WithControlFlow(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 2)

    def forward(self, x):
        if x.sum() > 0:
            return F.relu(self.fc(x))
        return self.fc(x)


def test_unconvertible_models_name_the_offending_node():
    x = torch.randn(2, 4)
    with pytest.raises(ConversionError, match=r"node 'act'.*GELU"):
        msat.convert(WithGELU().eval(), [x], method="const")
    with pytest.raises(ConversionError, match=r"node 'sigmoid'.*sigmoid"):
        msat.convert(WithSigmoid().eval(), [x], method="const")
    with pytest.raises(ConversionError, match="could not trace"):
        msat.convert(WithControlFlow().eval(), [x], method="const")
    with pytest.raises(ConversionError, match="no ReLU"):
        msat.convert(nn.Linear(4, 2).eval(), [x], method="const")


# ----------------------------------------------------------------- calibration
def test_calibration_max_percentile_and_channelwise():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 3, 3), nn.ReLU(), nn.Flatten(), nn.Linear(3 * 6 * 6, 2)).eval()
    batches = [torch.randn(7, 1, 8, 8) for _ in range(3)]
    with torch.no_grad():
        acts = torch.cat([F.relu(model[0](b)) for b in batches])
    ann = prepare_ann(model)
    assert torch.allclose(calibrate(ann, batches)[0], acts.max())
    for p in (0.5, 0.9, 0.999, 0.9999):
        lam = calibrate(ann, batches, percentile=p)[0]
        # reference in float64: torch.quantile's float32 interpolation is itself off by a few ulp
        ref = torch.quantile(acts.flatten().double(), p).float()
        torch.testing.assert_close(lam, ref, rtol=1e-6, atol=0.0, msg=str(p))
    lam_c = calibrate(ann, batches, channelwise=True)[0]
    assert lam_c.shape == (3, 1, 1)
    assert torch.allclose(lam_c.flatten(), acts.amax(dim=(0, 2, 3)))
    lam_cp = calibrate(ann, batches, percentile=0.99, channelwise=True)[0]
    ref = torch.quantile(acts.transpose(0, 1).reshape(3, -1).double(), 0.99, dim=1).float()
    torch.testing.assert_close(lam_cp.flatten(), ref, rtol=1e-6, atol=0.0)
    assert torch.allclose(calibrate(ann, [(b, torch.zeros(7)) for b in batches], num_batches=1)[0],
                          F.relu(model[0](batches[0])).max())


def test_lam_observer_streaming_quantile_matches_torch():
    torch.manual_seed(1)
    chunks = [torch.randn(n, 5) for n in (3, 50, 1, 17)]
    obs = LamObserver(percentile=0.97, total_samples=71)
    for c in chunks:
        obs(None, c)
    assert torch.allclose(obs.lam(), torch.quantile(F.relu(torch.cat(chunks)).flatten(), 0.97))


def test_bad_conversion_arguments():
    model = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2)).eval()
    x = [torch.randn(3, 4)]
    with pytest.raises(ValueError, match="percentile"):
        msat.convert(model, x, method="const", percentile=0.0)
    with pytest.raises(ValueError, match="percentile"):
        msat.convert(model, x, method="const", percentile=1.5)
    with pytest.raises(ValueError, match="unknown method"):
        msat.convert(model, x, method="fancy")
    with pytest.raises(ValueError, match="missing Table 2"):
        msat.convert(model, x, method="msat", hparams={"alpha": 0.03})
    with pytest.raises(ValueError, match="empty"):
        msat.convert(model, [], method="const")
    snn = msat.convert(model, x, method="const")
    for T in (0, -3, 2.5):
        with pytest.raises(ValueError, match="positive integer"):
            msat.simulate(snn, x[0], T)


# ----------------------------------------------------------------- API behaviour
def test_api_one_step_per_call_and_simulate_cumulative():
    torch.manual_seed(0)
    model = randomize_bn(msat.create_model("vgg16", 4, 1, 0.125))
    x = torch.randn(3, 1, 16, 16)
    snn = msat.convert(model, [x], method="msat", hparams=msat.TABLE2["vgg16"])
    msat.reset(snn)
    steps = torch.stack([snn(x) for _ in range(10)])
    cum = msat.simulate(snn, x, 10)
    assert cum.shape == (10, 3, 4)
    cs = torch.cumsum(steps, 0)
    torch.testing.assert_close(cs, cum, rtol=1e-5, atol=1e-6 * float(cs.abs().max()))
    # simulate resets first: a second call gives the same result
    assert torch.equal(cum, msat.simulate(snn, x, 10))


def test_lam_zero_layer_stays_silent_in_a_network():
    model = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2)).eval()
    with torch.no_grad():
        model[0].bias.fill_(-100.0)  # the ReLU is never active: lam = 0
    x = torch.randn(8, 4)
    snn = msat.convert(model, [x], method="msat", hparams=msat.TABLE2["vgg16"])
    assert float(snn.neurons[0].lam) == 0.0
    out = msat.simulate(snn, x, 20)
    assert torch.isfinite(out).all()
    assert torch.allclose(out[-1] / 20, model[2].bias.expand(8, 2))


@pytest.mark.parametrize("method", ["const", "msat"])
def test_layer_major_matches_step_by_step_float64(method):
    torch.manual_seed(0)
    model = randomize_bn(msat.create_model("vgg16", 10, 1, 0.125)).double()
    x = torch.randn(4, 1, 16, 16, dtype=torch.float64)
    snn = msat.convert(model, [x], method=method, hparams=msat.TABLE2["vgg16"])
    ref = msat.simulate(snn, x, 40, chunk=1)
    for chunk in (3, 8, 40):
        assert torch.equal(msat.simulate(snn, x, 40, chunk=chunk), ref)
