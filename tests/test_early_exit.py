"""Early exit (msat.simulate_adaptive): exact against the definitions on msat.simulate's output, in
float64; images that leave the batch change nothing for those that stay; the rules' fitting and the
operating point (msat.analysis.exits)."""

import pytest
import torch
from torch import nn

import msat
from msat.analysis import exits
from msat.spiking.early_exit import ExitRule, Progress


def _net(seed=0):
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(8, 8, 3, padding=1),
                        nn.ReLU(), nn.Flatten(), nn.Linear(8 * 4 * 4, 10)).double().eval()
    with torch.no_grad():
        net[-1].weight.mul_(20)  # confident enough to exit within a few steps
    return net, torch.randn(48, 3, 8, 8, dtype=torch.float64)


def _by_definition(out: torch.Tensor, rule: str, threshold, min_steps: int, d: int):
    """The exit steps and predictions of the README's definitions, from msat.simulate's output alone."""
    T, B = out.shape[:2]
    steps = torch.full((B,), T, dtype=torch.long)
    pred = out[T - 1].argmax(-1)
    for b in range(B):
        for t in range(max(min_steps, d + 1), T):
            m = out[t - 1, b] / (t - d)
            if rule == "confidence":
                go = float(torch.softmax(m, 0).max()) >= threshold
            elif rule == "margin":
                top = m.sort(descending=True).values
                go = float(top[0] - top[1]) >= threshold
            else:  # schedule
                go = float(torch.softmax(m, 0).max()) >= threshold[min(t, len(threshold)) - 1]
            if go:
                steps[b], pred[b] = t, out[t - 1, b].argmax()
                break
    return pred, steps


@pytest.mark.parametrize("method", ["const", "msat", "msat_sc", "ltb"])
@pytest.mark.parametrize("rule,threshold", [("confidence", 0.5), ("margin", 1.0), ("schedule", [2.0, 0.7, 0.6, 0.5])])
def test_the_adaptive_run_is_exact_in_float64(method, rule, threshold):
    """For every image, (pred, steps) of the compacted run equal the definitions applied to
    msat.simulate's full output, with delayed readout, min_steps and spike confidence's draws."""
    net, x = _net()
    snn = msat.convert(net, [x], msat.METHODS[method].for_model("vgg16"))
    T, d, k = 24, 2, 3
    full = msat.simulate(snn, x, T, readout_start=d)
    want_pred, want_steps = _by_definition(full, rule, threshold, k, d)
    got = msat.simulate_adaptive(snn, x, T, rule=rule, threshold=threshold, min_steps=k, readout_start=d)
    assert torch.equal(got.steps, want_steps) and torch.equal(got.pred, want_pred)
    assert 1 < len(set(got.steps.tolist()))  # images left at different steps
    replayed = msat.replay(msat.record_run(snn, x, T, readout_start=d), rule, threshold, k)
    assert torch.equal(replayed.steps, got.steps) and torch.equal(replayed.pred, got.pred)


@pytest.mark.parametrize("target,hidden", [("settled", 0), ("right", 0), ("settled", 6)])
def test_the_learned_rule_is_exact_against_its_own_definition(target, hidden):
    """The learned rule's features (README) computed live in the compacted run and from a recorded
    full run give the same decisions, for either target and a logistic or one-hidden-layer model."""
    net, x = _net()
    snn = msat.convert(net, [x], msat.METHODS["msat"].for_model("vgg16"))
    trace = msat.record_run(snn, x, 20, layers=True)
    y = trace["S"][-1].argmax(-1).roll(1)  # labels that are sometimes right
    predictor = exits.fit_predictor(trace, y, target=target, hidden=hidden)
    assert len(predictor.layers) == (2 if hidden else 1)
    assert predictor.names[-1] == f"rate_{len(snn.neurons) - 1}"
    got = msat.simulate_adaptive(snn, x, 20, rule="learned", threshold=0.3, predictor=predictor)
    replayed = msat.replay(trace, "learned", 0.3, predictor=predictor)
    assert torch.equal(got.steps, replayed.steps) and torch.equal(got.pred, replayed.pred)
    restored = msat.ExitPredictor.from_dict(predictor.to_dict())
    assert torch.equal(msat.replay(trace, "learned", 0.3, predictor=restored).steps, got.steps)
    if not hidden:  # a logistic model as results.json stored it before the "layers" form
        d = predictor.to_dict()
        (w, b), = d.pop("layers")
        old = msat.ExitPredictor.from_dict({**d, "weight": w, "bias": b})
        assert torch.equal(msat.replay(trace, "learned", 0.3, predictor=old).steps, got.steps)


def test_a_learned_rule_without_firing_rates_reads_the_output_alone(monkeypatch):
    """fit_predictor(rates=False): the model's features are the output's only; its adaptive run
    counts no spikes (no layer monitor is attached) and equals its replay on a recorded run that
    has the rates, in float64."""
    from msat.spiking.early_exit import BASE_FEATURES, LayerSpikes

    net, x = _net()
    snn = msat.convert(net, [x], msat.METHODS["msat"].for_model("vgg16"))
    trace = msat.record_run(snn, x, 20, layers=True)
    predictor = exits.fit_predictor(trace, trace["S"][-1].argmax(-1), target="settled", rates=False)
    assert predictor.names == list(BASE_FEATURES) and not predictor.uses_rates
    assert predictor.layers[0][0].shape[0] == len(BASE_FEATURES)
    bare = {k: v for k, v in trace.items() if k != "rates"}  # a recording without rates fits too
    assert exits.fit_predictor(bare, trace["S"][-1].argmax(-1), target="settled", rates=False).names == predictor.names

    def no_counting(self, *args):
        raise AssertionError("a rule without rates counted spikes")

    monkeypatch.setattr(LayerSpikes, "on_step", no_counting)
    got = msat.simulate_adaptive(snn, x, 20, rule="learned", threshold=0.5, predictor=predictor)
    replayed = msat.replay(trace, "learned", 0.5, predictor=predictor)
    assert torch.equal(got.steps, replayed.steps) and torch.equal(got.pred, replayed.pred)
    assert 1 < len(set(got.steps.tolist()))
    restored = msat.ExitPredictor.from_dict(predictor.to_dict())
    assert not restored.uses_rates and torch.equal(msat.replay(trace, "learned", 0.5, predictor=restored).steps,
                                                   got.steps)


class _Scripted(ExitRule):
    """Image b leaves at step 2 + b % 5, and every step the remaining images' S and the last
    layer's membrane are compared with the full run."""

    name = "scripted"

    def __init__(self, snn, full_S, full_v):
        self.snn, self.full_S, self.full_v = snn, full_S, full_v
        self.alive = torch.arange(full_S.shape[1])
        self.checked = 0

    def exits(self, progress: Progress) -> torch.Tensor:
        t = progress.t
        torch.testing.assert_close(progress.S, self.full_S[t - 1][self.alive], rtol=0, atol=0)
        torch.testing.assert_close(self.snn.neurons[-1].v, self.full_v[t - 1][self.alive], rtol=0, atol=0)
        self.checked += 1
        leave = (2 + self.alive % 5) <= t
        self.alive = self.alive[~leave]
        return leave


@pytest.mark.parametrize("method", ["msat", "msat_sc"])
def test_images_that_leave_change_nothing_for_those_that_stay(method):
    net, x = _net(1)
    snn = msat.convert(net, [x], msat.METHODS[method].for_model("vgg16"))
    T = 10
    vs = []
    hook = snn.neurons[-1].register_forward_hook(lambda m, a, o: vs.append(m.v.clone()))
    full_S = msat.simulate(snn, x, T)
    hook.remove()
    rule = _Scripted(snn, full_S, torch.stack(vs))
    res = msat.simulate_adaptive(snn, x, T, rule=rule)
    assert torch.equal(res.steps, 2 + torch.arange(x.shape[0]) % 5) and rule.checked >= 5


@pytest.mark.parametrize("kw,match", [
    (dict(rule="confidence", threshold=1.5), r"probability in \(0, 1\]"),
    (dict(rule="confidence", threshold=0.0), r"probability in \(0, 1\]"),
    (dict(rule="margin", threshold=0), "> 0"),
    (dict(rule="schedule", threshold=0.9), "one confidence threshold per step"),
    (dict(rule="learned", threshold=0.9), "needs predictor"),
    (dict(rule="vote"), "unknown exit rule 'vote'"),
    (dict(T_max=0), "positive integer"),
    (dict(min_steps=9), r"min_steps must be an integer in 1..T_max=8"),
    (dict(readout_start=8), "readout_start"),
])
def test_bad_exit_settings_are_refused_before_any_work(kw, match):
    net, x = _net()
    snn = msat.convert(net, [x], msat.METHODS["const"])
    args = {"T_max": 8, **kw}
    with pytest.raises(ValueError, match=match):
        msat.simulate_adaptive(snn, torch.empty(0), args.pop("T_max"), **args)


# ----------------------------------------------------------------- fitting and choosing
def _trace_and_labels():
    net, x = _net(2)
    snn = msat.convert(net, [x], msat.METHODS["const"])
    trace = msat.record_run(snn, x, 30, layers=True)
    y = trace["S"][-1].argmax(-1).clone()
    y[::4] = (y[::4] + 1) % 10  # a quarter wrong at T_max
    return trace, y


def test_the_oracle_exits_where_the_prediction_stays_right():
    trace, y = _trace_and_labels()
    res = exits.oracle(trace, y, min_steps=2)
    right = trace["S"].argmax(-1) == y
    for b in range(len(y)):
        t = int(res.steps[b])
        if right[-1, b]:
            assert right[t - 1:, b].all() and (t == 2 or not right[t - 2:, b].all())
        else:
            assert t == 2
    assert exits.stats(res, y)["accuracy"] == pytest.approx(100 * float(right[-1].double().mean()))


def test_the_settled_target_marks_steps_from_which_the_answer_no_longer_changes():
    trace, _ = _trace_and_labels()
    top = trace["S"].argmax(-1)  # [T, B]
    got = exits.settled(trace, top.shape[0])
    for b in range(top.shape[1]):
        for t in range(top.shape[0]):
            assert bool(got[t, b]) == bool((top[t:, b] == top[-1, b]).all())
    with pytest.raises(ValueError, match="unknown exit target"):
        exits.fit_predictor(trace, top[-1], target="stable")


def test_a_fitted_schedule_lets_out_images_at_its_precision():
    trace, y = _trace_and_labels()
    schedule = exits.fit_schedule(trace, y, precision=0.9)
    res = msat.replay(trace, "schedule", schedule)
    early = res.steps < 30
    assert early.any() and float((res.pred[early] == y[early]).double().mean()) >= 0.9


def test_the_operating_point_is_the_fewest_steps_within_the_drop():
    points = [{"accuracy": 80.0, "mean_steps": 5.0}, {"accuracy": 84.5, "mean_steps": 9.0},
              {"accuracy": 85.2, "mean_steps": 20.0}]
    assert exits.choose(points, 85.0, 1.0)["mean_steps"] == 9.0
    far = exits.choose(points, 95.0, 1.0)
    assert far["mean_steps"] == 20.0 and not far["within_drop"]


def test_fixed_steps_for_is_the_first_step_that_reaches_the_accuracy():
    curve = [10.0, 50.0, 80.0, 79.0, 85.0]
    assert exits.fixed_steps_for(curve, 80.0) == 3 and exits.fixed_steps_for(curve, 84.0) == 5
    assert exits.fixed_steps_for(curve, 10.0) == 1 and exits.fixed_steps_for(curve, 90.0) is None
