import math

import pytest
import torch
import torch.nn.functional as F

import msat
import msat.spiking.fused
from msat.conversion.table2 import TABLE2
from msat.spiking.neuron import IFNeuron
from msat.spiking.pooling import LIPool
from msat.spiking.thresholds import check_threshold_args
from reference import run_neuron

VGG = TABLE2["vgg16"]
INPUTS = [1.2, 0.4, -0.6, 1.8, 0.2, 0.0, 0.9]  # raw inputs (lam = 2)

# Hand-checked sequences (spec section 2). MSAT, t=2: d=0, DTT=-1+ln2, DET=e^-0.04,
# theta=sigmoid(0.6539)=0.657897, v=0.8 fires, out=2*0.657897. t=3: d=0.142103-0.742103/2,
# DTT=0.03d-1+ln(1+e^d)=-0.421682, DET=e^0.06, theta=0.654794, v=-0.157897: silent.
EXPECTED = {
    "const": ([0.0, 0.0, 0.0, 2.0, 0.0, 0.0, 0.0], [1.0] * 7, 0.95),
    "msat": ([0.0, 1.315794, 0.0, 1.176621, 0.0, 0.0, 1.305808],
             [1.0, 0.657897, 0.654794, 0.588311, 0.658629, 0.673248, 0.652904], 0.050888),
    "dtt": ([0.0, 0.847766, 0.0, 0.782049, 0.895462, 0.0, 0.819029],
            [1.0, 0.423883, 0.409843, 0.391025, 0.447731, 0.406753, 0.409514], 0.277847),
    "det": ([0.0, 1.44656, 0.0, 0.0, 1.454295, 0.0, 0.0],
            [1.0, 0.72328, 0.743041, 0.697468, 0.727148, 0.731059, 0.713804], 0.499573),
}


class ThetaLog:
    def __init__(self):
        self.theta = []

    def on_step(self, neuron, t, theta, fired, emitted):
        self.theta.append(float(theta) if not isinstance(theta, torch.Tensor) else float(theta.flatten()[0]))


def run(neuron, inputs, dtype=torch.float64):
    log = ThetaLog()
    neuron.register_step_hook(log)
    outs = [float(neuron(torch.tensor([[v]], dtype=dtype))) for v in inputs]
    return outs, log.theta, float(neuron.v)


@pytest.mark.parametrize("method", ["const", "msat", "dtt", "det"])
def test_hand_computed_sequences(method):
    n = IFNeuron(2.0, method, None if method == "const" else VGG).double()
    n.lam = n.lam.double()
    outs, thetas, v = run(n, INPUTS)
    exp_out, exp_theta, exp_v = EXPECTED[method]
    assert outs == pytest.approx(exp_out, abs=2e-6)
    assert thetas == pytest.approx(exp_theta, abs=2e-6)
    assert v == pytest.approx(exp_v, abs=2e-6)


@pytest.mark.parametrize("method", ["const", "msat", "dtt", "det"])
@pytest.mark.parametrize("arch", ["vgg16", "resnet20", "resnet34"])
def test_matches_scalar_reference_on_random_sequences(method, arch):
    g = torch.Generator().manual_seed(1)
    inputs = (torch.randn(300, generator=g) * 0.8 + 0.25).tolist()
    hp = TABLE2[arch]
    ref_out, ref_theta, ref_v = run_neuron(inputs, 1.7, method, hp, frac=0.5)
    n = IFNeuron(torch.tensor(1.7, dtype=torch.float64), method, {"frac": 0.5} if method == "const" else hp)
    outs, thetas, v = run(n, inputs)
    assert outs == pytest.approx(ref_out, abs=1e-9)
    assert thetas == pytest.approx(ref_theta, abs=1e-9)
    assert v == pytest.approx(ref_v, abs=1e-9)


def test_const_fraction_and_v_init():
    # frac = 0.5, v_init = 0.5: x = 0.3 per step -> v: 0.8 fire (0.3), 0.6 fire (0.1), 0.4, 0.7 fire (0.2), 0.5 fire
    n = IFNeuron(1.0, "const", {"frac": 0.5}, v_init=0.5).double()
    outs, _, v = run(n, [0.3] * 5)
    assert outs == pytest.approx([0.5, 0.5, 0.0, 0.5, 0.5])
    assert v == pytest.approx(0.0, abs=1e-12)


@pytest.mark.parametrize("method", ["const", "msat", "dtt", "det"])
@pytest.mark.parametrize("channelwise", [False, True])
def test_charge_conservation(method, channelwise):
    torch.manual_seed(0)
    lam = torch.rand(4, 1, 1) + 0.5 if channelwise else torch.tensor(1.3)
    n = IFNeuron(lam, method, None if method == "const" else TABLE2["resnet20"]).double()
    n.lam = n.lam.double()
    xs = torch.randn(40, 3, 4, 5, 5, dtype=torch.float64) * 0.7 + 0.2
    total = sum(n(x) for x in xs)
    # sum of outputs = lam * (sum of inputs / lam - final membrane)
    expected = n.lam * (xs.sum(0) / n.lam - n.v)
    assert torch.allclose(total, expected, atol=1e-10)


@pytest.mark.parametrize("method", ["const", "msat"])
def test_reset_restores_initial_state(method):
    torch.manual_seed(0)
    a, b = torch.randn(3, 6) + 0.3, torch.randn(3, 6) + 0.3
    n = IFNeuron(1.0, method, None if method == "const" else VGG)
    alone = []
    for x in (a, b):
        n.reset()
        alone.append(torch.stack([n(x) for _ in range(20)]))
    n.reset()
    first = torch.stack([n(a) for _ in range(20)])
    n.reset()
    second = torch.stack([n(b) for _ in range(20)])
    assert torch.equal(first, alone[0]) and torch.equal(second, alone[1])


def test_lam_zero_is_silent_and_finite():
    lam = torch.tensor([0.0, 1.0, 0.0]).view(3, 1, 1)
    for method in ["const", "msat", "dtt", "det"]:
        n = IFNeuron(lam, method, None if method == "const" else VGG, v_init=0.9)
        for _ in range(30):
            y = n(torch.full((2, 3, 2, 2), 0.7))
            assert torch.isfinite(y).all()
            assert (y[:, 0] == 0).all() and (y[:, 2] == 0).all()
        assert torch.isfinite(n.v).all()
    n = IFNeuron(0.0, "msat", VGG)
    for _ in range(10):
        y = n(torch.randn(4, 5))
        assert torch.isfinite(y).all() and (y == 0).all()


def test_extreme_inputs_give_no_nan():
    n = IFNeuron(1.0, "msat", VGG)
    for x in [1e30, -1e30, 0.0, 1e-30, -3e4, 3e4]:
        y = n(torch.full((1, 4), x))
        assert torch.isfinite(n.v).all() or abs(x) >= 1e30
        assert not torch.isnan(y).any()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_the_exp_floor_changes_no_bit(dtype, monkeypatch):
    """exp's argument is floored at -60 (speed: no subnormal results); where that matters, exp
    is added to a number >= 1, so theta keeps every bit, from d and x far beyond exp's range."""
    from msat.spiking import thresholds

    g = torch.Generator().manual_seed(0)
    vals = torch.cat([torch.randn(20000, generator=g, dtype=dtype) * sc for sc in (0.3, 3, 30, 300, 3000)]
                     + [torch.linspace(-1000, 1000, 20001, dtype=dtype)])
    x = vals[torch.randperm(len(vals), generator=g)]
    for row in TABLE2.values():
        for rule in (thresholds.MSAT(**row), thresholds.DTT(**row), thresholds.DET(**row)):
            floored = rule.theta(x.clone(), vals.clone())
            monkeypatch.setattr(thresholds, "_EXP_FLOOR", -math.inf)
            exact = rule.theta(x.clone(), vals.clone())
            monkeypatch.undo()
            assert torch.equal(floored, exact), type(rule).__name__


def test_a_dtt_power_above_one_gives_no_nan():
    # tau_mp * k_a > 1: (1 + e^d)^power overflows for a large d; theta's limit there is 1, not inf/inf
    from msat.spiking import thresholds

    rule = thresholds.MSAT(**dict(VGG, k_a=1.3, k_i=0.7))
    d = torch.tensor([-1e4, -50.0, 0.0, 50.0, 100.0, 1e4])
    theta = rule.theta(torch.zeros(6), d.clone())
    assert not theta.isnan().any()
    assert theta[-2:].tolist() == [1.0, 1.0]


def test_threshold_argument_errors():
    with pytest.raises(ValueError, match="unknown method"):
        check_threshold_args("adaptive", VGG)
    with pytest.raises(ValueError, match="missing Table 2"):
        check_threshold_args("msat", {"alpha": 0.03, "k_a": 1})
    with pytest.raises(ValueError, match="needs the Table 2"):
        check_threshold_args("msat", None)
    with pytest.raises(ValueError, match="frac"):
        check_threshold_args("const", {"frac": 0})
    with pytest.raises(ValueError, match="max_spikes"):
        IFNeuron(1.0, "const", max_spikes=0)


def test_tau_rd_twice_option():
    hp = dict(TABLE2["resnet20"], tau_rd_twice=True)
    n = IFNeuron(1.0, "det", hp).double()
    n.lam = n.lam.double()
    _, thetas, _ = run(n, [0.5, 0.4])
    assert thetas[1] == pytest.approx(1 / (1 + math.exp(-(0.5 * 0.5 * math.exp(-0.4 / 5)))))


# ----------------------------------------------------------------- spike confidence
def _sc_run(p, E=6, reset="fired", seed=3, steps=12):
    torch.manual_seed(0)
    x = torch.rand(8, 50) * 0.9
    n = IFNeuron(1.0, "msat", VGG)
    if p is not None:
        n.configure_sc(p, E, reset, seed)
    n.reset()
    return torch.stack([n(x) for _ in range(steps)]), n


def test_sc_p1_is_bit_identical_to_no_sc():
    a, _ = _sc_run(None)
    b, _ = _sc_run(1.0)
    assert torch.equal(a, b)


def test_sc_p0_silences_first_E_steps():
    out, _ = _sc_run(0.0, E=6)
    assert (out[:6] == 0).all()
    assert (out[6:] != 0).any()


def test_sc_same_seed_same_output_and_other_seed_differs():
    a, _ = _sc_run(0.5, seed=3)
    b, _ = _sc_run(0.5, seed=3)
    c, _ = _sc_run(0.5, seed=4)
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def test_sc_reset_modes():
    # const threshold 1, x = 1 every step, p = 0 for E = 3 steps
    def go(reset):
        n = IFNeuron(1.0, "const")
        n.configure_sc(0.0, 3, reset, 0)
        n.reset()
        outs = [float(n(torch.ones(1, 1))) for _ in range(5)]
        return outs, float(n.v)

    # fired: the membrane is reduced by theta even though the spike is suppressed
    outs, v = go("fired")
    assert outs == [0, 0, 0, 1, 1] and v == 0.0
    # emitted (paper Eq. 20): suppressed charge stays: v = 1, 2, 3, then 4 -> fire -> 3, 4 -> 3
    outs, v = go("emitted")
    assert outs == [0, 0, 0, 1, 1] and v == 3.0


def test_sc_argument_errors():
    n = IFNeuron(1.0, "const")
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        n.configure_sc(1.5, 16)
    with pytest.raises(ValueError, match="reset"):
        n.configure_sc(0.5, 16, reset="both")


# ----------------------------------------------------------------- LIPool
@pytest.mark.parametrize(
    "kw,shape",
    [
        (dict(kernel_size=2), (2, 3, 8, 8)),
        (dict(kernel_size=3, stride=2, padding=1), (2, 3, 9, 9)),  # ResNet34 stem pool (overlapping)
        (dict(kernel_size=2, stride=2, ceil_mode=True), (2, 3, 7, 5)),
        (dict(kernel_size=3, stride=1), (1, 2, 6, 6)),
    ],
)
def test_lipool_sum_equals_maxpool_of_sum(kw, shape):
    torch.manual_seed(0)
    pool = LIPool(**kw)
    xs = torch.rand(30, *shape, dtype=torch.float64) * (torch.rand(30, *shape, dtype=torch.float64) > 0.6)
    total = sum(pool(x) for x in xs)
    ref = F.max_pool2d(xs.sum(0), **kw)
    assert torch.allclose(total, ref, atol=1e-12)
    # the identity holds after every step, not only at the end
    pool.reset()
    running = torch.zeros_like(ref)
    for t, x in enumerate(xs):
        running = running + pool(x)
        assert torch.allclose(running, F.max_pool2d(xs[: t + 1].sum(0), **kw), atol=1e-12)


@pytest.mark.e2e
@pytest.mark.compile
def test_fused_lipool_gives_the_same_bits_as_eager():
    """sim.compile also fuses the LIPool step (add, window max, difference): max and
    subtraction round as in eager mode, so the outputs are identical, overlapping windows,
    padding and ceil_mode included."""
    from msat.spiking.simulation import compile_available

    if not compile_available(torch.device("cpu")):
        pytest.skip("torch.compile has no working backend here")
    for kw, shape in [(dict(kernel_size=2), (2, 3, 8, 8)), (dict(kernel_size=3, stride=2, padding=1), (2, 3, 9, 9)),
                      (dict(kernel_size=2, stride=2, ceil_mode=True), (2, 3, 7, 5))]:
        xs = torch.rand(12, *shape) * (torch.rand(12, *shape) > 0.6)
        eager, fused = LIPool(**kw), LIPool(**kw)
        fused.compiled = True
        a = torch.stack([eager(x) for x in xs])
        b = torch.stack([fused(x) for x in xs])
        assert torch.equal(a, b), kw
    status = msat.spiking.fused.compile_status()
    assert status["ran_compiled"] and not status["guard_fell_back"]  # it ran fused, no fallback
    assert fused.compiled


def test_a_fused_step_that_cannot_compile_falls_back_to_eager(monkeypatch):
    """Where torch.compile fails (no compiler), the first fused call's half-done update is
    undone, one warning says so, and neurons and LIPool run eager with the eager results."""
    import msat.spiking.neuron as neurons
    import msat.spiking.pooling as pooling

    def broken(state_arg):  # a half-done in-place update of the state, then the failure
        def fused(*args):
            args[state_arg].add_(1.0)
            raise RuntimeError("no compiler")

        return fused

    msat.spiking.fused.reset_guard()
    monkeypatch.setattr(neurons, "_compiled_step", lambda with_stats: broken(2))  # (rule, max_spikes, v, ...)
    monkeypatch.setattr(pooling, "_fused_pool_step", lambda: broken(0))  # (X, Y, x, ...)
    torch.manual_seed(1)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
                              torch.nn.Flatten(), torch.nn.Linear(4 * 3 * 3, 5)).double().eval()
    x = torch.randn(2, 3, 6, 6, dtype=torch.float64)
    snn = msat.convert(net, [x], method="msat", hparams=msat.TABLE2["vgg16"])
    snn.set_compile(False)
    eager = msat.simulate(snn, x, 6)
    snn.set_compile(True)
    with pytest.warns(RuntimeWarning, match="could not be compiled") as caught:
        fallen = msat.simulate(snn, x, 6)
    assert len([w for w in caught if "could not be compiled" in str(w.message)]) == 1
    assert torch.equal(fallen, eager) and msat.spiking.fused.compile_status()["guard_fell_back"]
    assert not any(m.compiled for m in snn.modules() if isinstance(m, (neurons.IFNeuron, LIPool)))
    # a pool alone: its cumulative input is restored too
    msat.spiking.fused.reset_guard()
    xs = torch.rand(4, 1, 2, 4, 4, dtype=torch.float64)
    plain, failing = LIPool(2), LIPool(2)
    failing.compiled = True
    a = torch.stack([plain(x) for x in xs])
    with pytest.warns(RuntimeWarning, match="compiled LIPool step could not be compiled"):
        b = torch.stack([failing(x) for x in xs])
    assert torch.equal(a, b) and not failing.compiled


def test_lipool_multistep_matches_single_steps():
    torch.manual_seed(0)
    xs = torch.rand(8, 2, 3, 6, 6)
    a = LIPool(3, 2, 1)
    one = torch.stack([a(x) for x in xs])
    b = LIPool(3, 2, 1)
    b.steps = 8
    many = b(xs.reshape(16, 3, 6, 6)).view(8, 2, 3, 3, 3)
    assert torch.equal(one, many)


# ------------------------------------------------------------------ extending and compiling
def _small_net():
    torch.manual_seed(3)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv2d(8, 8, 3, padding=1),
                              torch.nn.ReLU(), torch.nn.Flatten(), torch.nn.Linear(8 * 6 * 6, 5))
    return net.double().eval(), torch.randn(4, 3, 6, 6, dtype=torch.float64)


def test_a_new_threshold_rule_is_one_registered_class():
    """Adding a rule touches one class (and, for the CLI, one conf/method file naming it in
    ``threshold:``): this one, a threshold that halves after the first step, runs through
    convert and simulate with no other change."""
    from msat import ThresholdRule, register_rule
    from msat.spiking.thresholds import THRESHOLD_RULES

    @register_rule("test_halving")
    class Halving(ThresholdRule):
        first = 1.0

        def theta(self, x, d):
            return 0.5

    try:
        net, x = _small_net()
        snn = msat.convert(net, [x], method="test_halving")
        ref = msat.convert(net, [x], method="const", hparams={"frac": 0.5})
        for n in ref.neurons:  # const 0.5 from step 1; the new rule uses 1.0 at step 1, then 0.5
            n.rule.first = 1.0
        torch.testing.assert_close(msat.simulate(snn, x, 12), msat.simulate(ref, x, 12), rtol=0, atol=0)
    finally:
        THRESHOLD_RULES.pop("test_halving", None)
    assert Halving.name == "test_halving"
    with pytest.raises(ValueError, match="non-empty name"):
        register_rule("")


@pytest.mark.e2e
@pytest.mark.compile
@pytest.mark.parametrize("method", ["const", "msat"])
def test_compile_changes_the_code_path_not_the_results(method, monkeypatch):
    """sim.compile / snn.set_compile(True) runs the fused step (torch.compile of the same
    if_step); in float64 const outputs are equal exactly, MSAT's up to the last bits of exp
    (the fused kernel's exp is not MKL's), with the same predictions at every step."""
    import msat.spiking.neuron as neurons
    from msat.spiking.simulation import compile_available

    if not compile_available(torch.device("cpu")):
        pytest.skip("torch.compile has no working backend here")
    calls = {"n": 0}
    real = neurons._run_compiled

    def counting(*a, **k):
        calls["n"] += 1
        return real(*a, **k)

    monkeypatch.setattr(neurons, "_run_compiled", counting)
    net, x = _small_net()
    hp = msat.TABLE2["vgg16"] if method == "msat" else None
    snn = msat.convert(net, [x], method=method, hparams=hp)
    snn.set_compile(False)
    eager = msat.simulate(snn, x, 20)
    assert calls["n"] == 0
    snn.set_compile(True)
    fused = msat.simulate(snn, x, 20)
    assert calls["n"] == 20 * len(snn.neurons)
    assert all(n.compiled for n in snn.neurons)  # it did not fall back to eager
    status = msat.spiking.fused.compile_status()
    assert status["ran_compiled"] and not status["guard_fell_back"], status
    tol = 0 if method == "const" else 1e-12
    torch.testing.assert_close(fused, eager, rtol=tol, atol=tol)
    assert torch.equal(fused.argmax(-1), eager.argmax(-1))
