"""Early exit: every image stops when it is sure, and leaves the batch (``msat.simulate_adaptive``).

Definitions (the tests check them exactly, in float64). ``S_t`` is the classifier output summed over
steps ``readout_start+1..t`` (what :func:`msat.simulate` returns at step t) and ``m_t = S_t / (t -
readout_start)`` its mean. An image may exit at a step t with ``t >= min_steps`` and ``t >
readout_start``; it exits at the first such t where its rule says so, or at ``T_max``. Its
prediction is ``argmax S_t`` at its exit step (ties to the first class).

Rules (:data:`EXIT_RULES`, one registered class each):

- ``confidence``: ``max softmax(m_t) >= threshold`` (threshold in (0, 1]);
- ``margin``: the top-1 minus the top-2 entry of ``m_t`` ``>= threshold`` (> 0, in the output's units);
- ``schedule``: ``max softmax(m_t) >= threshold[t - 1]``, one threshold per step (the last one
  holds after the schedule ends; a value above 1 means nobody exits at that step);
- ``learned``: ``P >= threshold`` from an :class:`ExitPredictor`, a small model (logistic, or one
  tanh hidden layer) on the run's features at step t (:func:`feature_names`); what P predicts is
  the target it was fitted to (:func:`msat.analysis.exits.fit_predictor`), with or without the
  per-layer firing rates (``rates=False``: the run then counts no spikes, and costs less).

The features of an image at step t (:class:`Progress`): the confidence, margin and entropy of
``softmax(m_t)``; ``log(1 + h)`` with h the number of consecutive readout steps, ending at t, whose
``argmax S`` is the same; ``log t``; the top-1 minus top-2 entry of the window mean ``w_t = (S_t -
S_{t-W}) / min(W, t - readout_start)`` over the last W = 8 steps (``S`` is 0 up to the readout
start); whether ``argmax w_t == argmax S_t``; ``log(1 + top-1 minus top-2 of S_t)``; ``log(1 +
c)`` with c the number of readout steps so far at which ``argmax S`` changed; the fraction of the
last ``min(W, t - readout_start)`` steps whose own output ``S_s - S_{s-1}`` has the argmax of
``S_t``; and for every spiking layer the spikes it emitted for the image in steps 1..t per
neuron and step.

Images that exit are removed from the batch (:meth:`SpikingNetwork.keep_rows`): neuron, pool,
spike-confidence and monitor state are compacted, so the remaining steps cost less, and each
remaining image runs on as it would have (spike-confidence draws are made for the whole batch and
picked, so they are the draws of the fixed run).
"""

from __future__ import annotations

import math
from typing import Any, Mapping, NamedTuple, Optional, Sequence

import torch

from ..util import registrar
from .network import SpikingNetwork
from .simulation import check_readout_start, check_T, start_run

WINDOW = 8
BASE_FEATURES = ("confidence", "margin", "entropy", "log1p_held", "log_t", "window_margin", "window_agrees",
                 "log1p_sum_margin", "log1p_changes", "steps_agree")


def feature_names(layers: int) -> list[str]:
    """The names of the features of a net with ``layers`` spiking layers."""
    return list(BASE_FEATURES) + [f"rate_{i}" for i in range(layers)]


class ExitResult(NamedTuple):
    pred: torch.Tensor  # LongTensor[B]: argmax S_t at the exit step
    steps: torch.Tensor  # LongTensor[B]: the exit step


# ----------------------------------------------------------------- what a run has seen so far
class LayerSpikes:
    """A step hook: the spikes a layer emitted per image and step (the learned rule's firing features)."""

    def __init__(self):
        self.count: Optional[torch.Tensor] = None  # spikes in steps 1..t, per image
        self.neurons = 0

    def on_step(self, neuron, t, theta, fired, emitted) -> None:
        # summed in the simulation's dtype, then widened: the counts are whole numbers far below 2**24, so
        # the float32 sum is exact, and it costs a sixth of a float64 one
        per_image = emitted.reshape(emitted.shape[0], -1).sum(1).double()
        self.neurons = emitted[0].numel()
        self.count = per_image if self.count is None else self.count + per_image

    def keep_rows(self, rows: torch.Tensor) -> None:
        if self.count is not None:
            self.count = self.count.index_select(0, rows)


class Progress:
    """What the exit rules read at step t, per image: ``S_t``, the window, how long ``argmax S`` has
    held and (with ``layers``) the spikes per layer so far. Fed with ``S_t`` step by step, by the live
    run and by a replay of a recorded run alike, so both compute the same features."""

    def __init__(self, readout_start: int = 0, layer_monitors: Optional[Sequence[LayerSpikes]] = None):
        self.d = readout_start
        self.layers = list(layer_monitors or [])
        self.S: Optional[torch.Tensor] = None
        self.t = 0
        self.history: list[torch.Tensor] = []  # S of the last WINDOW steps (S_d = 0)
        self.held: Optional[torch.Tensor] = None
        self.changes: Optional[torch.Tensor] = None
        self.top: Optional[torch.Tensor] = None
        self.step_tops: list[torch.Tensor] = []  # argmax of the last WINDOW steps' own outputs
        self.rates: Optional[torch.Tensor] = None

    def observe(self, S: torch.Tensor, t: int, rates: Optional[torch.Tensor] = None) -> None:
        """``S_t`` (zeros up to the readout start) and, for the learned rule, the firing rates
        ``[B, L]`` so far (read from the layer monitors when not given)."""
        self.S, self.t = S, t
        if t <= self.d:
            return
        top = S.argmax(-1)
        if self.held is None:
            self.held, self.changes = torch.ones_like(top), torch.zeros_like(top)
        else:
            same = top == self.top
            self.held = torch.where(same, self.held + 1, torch.ones_like(self.held))
            self.changes = self.changes + (~same).long()
        self.top = top
        self.step_tops.append((S - self.history[-1] if self.history else S).argmax(-1))
        self.history.append(S)
        if len(self.history) > WINDOW + 1:
            self.history.pop(0)
        if len(self.step_tops) > WINDOW:
            self.step_tops.pop(0)
        if rates is None and self.layers:
            rates = torch.stack([m.count / (m.neurons * t) for m in self.layers], 1)
        self.rates = rates

    def keep_rows(self, rows: torch.Tensor) -> None:
        for name in ("S", "held", "changes", "top", "rates"):
            v = getattr(self, name)
            if v is not None:
                setattr(self, name, v.index_select(0, rows))
        self.history = [h.index_select(0, rows) for h in self.history]
        self.step_tops = [h.index_select(0, rows) for h in self.step_tops]

    # ------------------------------------------------------------------ the features
    def mean(self) -> torch.Tensor:
        return self.S / (self.t - self.d)

    def window(self) -> torch.Tensor:
        n = min(WINDOW, self.t - self.d)
        past = self.history[-1 - n] if len(self.history) > n else torch.zeros_like(self.S)  # S_{t-n}, 0 at d
        return (self.S - past) / n

    def features(self, rates: bool = True) -> torch.Tensor:
        """``[B, F]`` float64, in the order of :func:`feature_names`; without the per-layer firing
        rates when ``rates`` is false (or none were observed)."""
        m = self.mean().double()
        p = torch.softmax(m, -1)
        top2 = m.topk(2, -1).values
        w = self.window().double()
        wtop2 = w.topk(2, -1).values
        stop2 = self.S.double().topk(2, -1).values
        agree = torch.stack([st == self.top for st in self.step_tops]).double().mean(0)
        cols = [p.amax(-1), top2[:, 0] - top2[:, 1], -(p * torch.log(p.clamp(min=1e-300))).sum(-1),
                torch.log1p(self.held.double()), torch.full_like(top2[:, 0], math.log(self.t)),
                wtop2[:, 0] - wtop2[:, 1], (w.argmax(-1) == self.top).double(),
                torch.log1p((stop2[:, 0] - stop2[:, 1]).clamp(min=0)), torch.log1p(self.changes.double()), agree]
        out = torch.stack(cols, 1)
        return torch.cat([out, self.rates.double()], 1) if rates and self.rates is not None else out


# ----------------------------------------------------------------- the rules
EXIT_RULES: dict[str, type["ExitRule"]] = {}


register_exit_rule = registrar(EXIT_RULES, "exit rule",
                               "Class decorator: make an :class:`ExitRule` available as ``rule=name``.")


class ExitRule:
    """Decides, per image, whether it exits at the current step."""

    name = "?"
    needs_layers = False

    def exits(self, progress: Progress) -> torch.Tensor:
        raise NotImplementedError

    def describe(self) -> dict:
        return {"rule": self.name}


def _probability(threshold, what: str) -> float:
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not 0.0 < float(threshold) <= 1.0:
        raise ValueError(f"the {what} rule's threshold is a probability in (0, 1], got {threshold!r}")
    return float(threshold)


@register_exit_rule("confidence")
class Confidence(ExitRule):
    def __init__(self, threshold: float = 0.9):
        self.threshold = _probability(threshold, "confidence")

    def exits(self, progress: Progress) -> torch.Tensor:
        return torch.softmax(progress.mean(), -1).amax(-1) >= self.threshold

    def describe(self) -> dict:
        return {"rule": self.name, "threshold": self.threshold}


@register_exit_rule("margin")
class Margin(ExitRule):
    def __init__(self, threshold: float = 1.0):
        if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not float(threshold) > 0:
            raise ValueError(f"the margin rule's threshold is the top-1 minus top-2 output it needs, > 0; got {threshold!r}")
        self.threshold = float(threshold)

    def exits(self, progress: Progress) -> torch.Tensor:
        top2 = progress.mean().topk(2, -1).values
        return top2[:, 0] - top2[:, 1] >= self.threshold

    def describe(self) -> dict:
        return {"rule": self.name, "threshold": self.threshold}


@register_exit_rule("schedule")
class Schedule(ExitRule):
    """A confidence threshold per step (values above 1: no exit at that step)."""

    def __init__(self, threshold: Sequence[float]):
        values = [float(v) for v in (threshold if isinstance(threshold, (list, tuple, torch.Tensor)) else [])]
        if not values or any(not v > 0 for v in values):
            raise ValueError("the schedule rule takes one confidence threshold per step (a non-empty sequence of "
                             f"values > 0; above 1 means no exit at that step), got {threshold!r}")
        self.thresholds = values

    def exits(self, progress: Progress) -> torch.Tensor:
        thr = self.thresholds[min(progress.t, len(self.thresholds)) - 1]
        return torch.softmax(progress.mean(), -1).amax(-1) >= thr

    def describe(self) -> dict:
        return {"rule": self.name, "threshold": self.thresholds}


def mlp_logit(z: torch.Tensor, layers: Sequence[tuple[torch.Tensor, torch.Tensor]]) -> torch.Tensor:
    """``layers`` of ``(weight, bias)`` applied to ``z``, tanh between them, none after the last."""
    for k, (w, b) in enumerate(layers):
        z = z @ w.to(z.device) + b.to(z.device)
        if k < len(layers) - 1:
            z = torch.tanh(z)
    return z


class ExitPredictor:
    """A small model of the probability that an image may exit at step t (its target: see
    :func:`msat.analysis.exits.fit_predictor`) on the standardised features of :class:`Progress`
    (float64): ``layers`` of ``(weight, bias)``, tanh between them, a sigmoid at the end (one
    layer: logistic regression)."""

    def __init__(self, layers: Sequence[tuple[torch.Tensor, torch.Tensor]], mean: torch.Tensor, std: torch.Tensor,
                 names: Sequence[str]):
        self.layers = [(w.double(), torch.as_tensor(b, dtype=torch.float64)) for w, b in layers]
        self.mean, self.std, self.names = mean.double(), std.double(), list(names)

    @property
    def uses_rates(self) -> bool:
        """Whether the model reads the per-layer firing rates (the run must count spikes)."""
        return any(n.startswith("rate_") for n in self.names)

    def logit(self, features: torch.Tensor) -> torch.Tensor:
        z = (features.double() - self.mean.to(features.device)) / self.std.to(features.device)
        return mlp_logit(z, self.layers)

    def probability(self, features: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.logit(features))

    def to_dict(self) -> dict:
        return {"layers": [[w.tolist(), b.tolist()] for w, b in self.layers], "mean": self.mean.tolist(),
                "std": self.std.tolist(), "names": self.names}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "ExitPredictor":
        t = lambda v: torch.tensor(v, dtype=torch.float64)  # noqa: E731
        layers = d["layers"] if "layers" in d else [[d["weight"], d["bias"]]]  # a logistic model saved before "layers"
        return cls([(t(w), t(b)) for w, b in layers], t(d["mean"]), t(d["std"]), d["names"])


@register_exit_rule("learned")
class Learned(ExitRule):
    def __init__(self, threshold: float = 0.5, predictor: Optional[ExitPredictor] = None):
        self.threshold = _probability(threshold, "learned")
        if not isinstance(predictor, ExitPredictor):
            raise ValueError("the learned rule needs predictor= (an ExitPredictor: msat.analysis.exits.fit_predictor "
                             "fits one on held-out training images)")
        self.predictor = predictor
        # a predictor of the output's features only needs no spike counting in the run
        self.needs_layers = predictor.uses_rates

    def exits(self, progress: Progress) -> torch.Tensor:
        return self.predictor.probability(progress.features(rates=self.needs_layers)) >= self.threshold

    def describe(self) -> dict:
        return {"rule": self.name, "threshold": self.threshold, "predictor": self.predictor.to_dict()}


def make_exit_rule(rule: str | ExitRule, threshold: Any = None, predictor: Optional[ExitPredictor] = None) -> ExitRule:
    """An exit rule by name (with its threshold, and the predictor of ``learned``), or the rule given."""
    if isinstance(rule, ExitRule):
        return rule
    if rule not in EXIT_RULES:
        raise ValueError(f"unknown exit rule {rule!r}; choose one of {', '.join(EXIT_RULES)}")
    if rule == "learned":
        return Learned(0.5 if threshold is None else threshold, predictor)
    return EXIT_RULES[rule]() if threshold is None else EXIT_RULES[rule](threshold)


def check_exit(T_max: int, min_steps: int, readout_start: int) -> tuple[int, int, int]:
    T_max = check_T(T_max)
    if isinstance(min_steps, bool) or int(min_steps) != min_steps or not 1 <= int(min_steps) <= T_max:
        raise ValueError(f"min_steps must be an integer in 1..T_max={T_max}, got {min_steps!r}")
    return T_max, int(min_steps), check_readout_start(readout_start, T_max)


# ----------------------------------------------------------------- running it
@torch.no_grad()
def simulate_adaptive(snn: SpikingNetwork, x: torch.Tensor, T_max: int, *, rule: str | ExitRule = "confidence",
                      threshold: Any = 0.9, min_steps: int = 1, readout_start: int = 0,
                      predictor: Optional[ExitPredictor] = None, seed: Optional[int] = None) -> ExitResult:
    """Run the batch ``x`` until every image has exited (module docstring); images that exit leave
    the batch. Returns ``(pred, steps)``, both ``LongTensor[B]``. ``seed`` reseeds spike confidence
    as in :func:`msat.simulate`."""
    rule = make_exit_rule(rule, threshold, predictor)
    T_max, min_steps, d = check_exit(T_max, min_steps, readout_start)
    B = x.shape[0]
    pred = torch.zeros(B, dtype=torch.long, device=x.device)
    steps = torch.full((B,), T_max, dtype=torch.long, device=x.device)
    layers = [LayerSpikes() for _ in snn.neurons] if rule.needs_layers else None
    with snn.monitor(T_max, **({"exit_spikes": layers} if layers else {})):
        start_run(snn, x, T_max, seed)
        progress, alive, S = Progress(d, layers), torch.arange(B, device=x.device), None
        for t in range(1, T_max + 1):
            out = snn.advance(1)[0]
            if t > d:
                S = out.clone() if S is None else S + out
            progress.observe(S if S is not None else torch.zeros_like(out), t)
            if t < min_steps or t <= d:
                continue
            leave = torch.ones(len(alive), dtype=torch.bool, device=x.device) if t == T_max else rule.exits(progress)
            if not bool(leave.any()):
                continue
            pred[alive[leave]] = progress.S[leave].argmax(-1)
            steps[alive[leave]] = t
            keep = (~leave).nonzero().squeeze(1)
            if keep.numel() == 0:
                break
            snn.keep_rows(keep)
            progress.keep_rows(keep)
            S = progress.S
            alive = alive.index_select(0, keep)
    snn.reset()
    return ExitResult(pred, steps)


@torch.no_grad()
def record_run(snn: SpikingNetwork, x: torch.Tensor, T: int, readout_start: int = 0, layers: bool = False,
               seed: Optional[int] = None) -> dict:
    """A fixed run of T steps, with what the exit rules read: ``S`` (``[T, B, C]``, as
    :func:`msat.simulate`) and, with ``layers``, the per-image firing rates so far (``[T, B, L]``)."""
    T = check_T(T)
    d = check_readout_start(readout_start, T)
    mons = [LayerSpikes() for _ in snn.neurons] if layers else None
    S_all, rates, S = [], [], None
    with snn.monitor(T, **({"exit_spikes": mons} if mons else {})):
        start_run(snn, x, T, seed)
        for t in range(1, T + 1):
            out = snn.advance(1)[0]
            if t > d:
                S = out.clone() if S is None else S + out
            S_all.append(S if S is not None else torch.zeros_like(out))
            if mons:
                rates.append(torch.stack([m.count / (m.neurons * t) for m in mons], 1))
    snn.reset()
    return {"S": torch.stack(S_all), "rates": torch.stack(rates) if mons else None, "readout_start": d}


def replay(trace: Mapping[str, Any], rule: str | ExitRule, threshold: Any = None, min_steps: int = 1,
           T_max: Optional[int] = None, predictor: Optional[ExitPredictor] = None) -> ExitResult:
    """The decisions of a rule on a recorded run (:func:`record_run`): what
    :func:`simulate_adaptive` gives on the same images, computed from the full outputs."""
    rule = make_exit_rule(rule, threshold, predictor)
    S_all, rates, d = trace["S"], trace.get("rates"), int(trace.get("readout_start", 0))
    T_max, min_steps, d = check_exit(T_max or S_all.shape[0], min_steps, d)
    B = S_all.shape[1]
    pred = S_all[T_max - 1].argmax(-1)
    steps = torch.full((B,), T_max, dtype=torch.long, device=S_all.device)
    done = torch.zeros(B, dtype=torch.bool, device=S_all.device)
    progress = Progress(d)
    for t in range(1, T_max + 1):
        progress.observe(S_all[t - 1], t, None if rates is None else rates[t - 1])
        if t < min_steps or t <= d or t == T_max:
            continue
        leave = rule.exits(progress) & ~done
        pred[leave] = S_all[t - 1][leave].argmax(-1)
        steps[leave] = t
        done |= leave
    return ExitResult(pred, steps)
