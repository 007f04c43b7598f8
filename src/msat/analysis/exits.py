"""Choosing and judging early-exit rules (:mod:`msat.spiking.early_exit`) on recorded runs.

Everything here works on a recorded fixed run (:func:`~msat.spiking.early_exit.record_run`) and
the labels: the decisions of a rule at any threshold follow from it (:func:`replay`), so a whole
accuracy-against-mean-steps curve costs one run. Rules are fitted and their thresholds chosen on
training images held out from calibration, never on test images:

- :func:`fit_schedule`: a confidence threshold per step, for a target precision q: at each step
  the lowest threshold whose newly exiting images are at least q right (over the images not yet
  exited), or none;
- :func:`fit_predictor`: a small model (logistic, or one tanh hidden layer; L2, float64, L-BFGS)
  on the features of every image and step (with or without the per-layer firing rates), of one
  of two targets (:data:`TARGETS`): ``settled``
  (``eval.exit.target``'s default; ``fit_predictor``'s own default is ``right``), "the
  prediction at step t is already the one at T_max and stays so", which needs no label, or
  ``right``, "the prediction at step t is right and stays right until T_max". With
  ``right`` an image the net gets wrong even at T_max is never a positive example, so the model
  learns to keep exactly the images that gain nothing from more steps; ``settled`` lets them go
  as soon as their answer stops changing (on the CIFAR-10 VGG16 of docs/results/early_exit, 1,000
  test images: 86.1% at a mean of 48.9 steps with ``right`` against 86.8% at 18.3 with ``settled``);
- :func:`choose`: the setting with the fewest mean steps whose accuracy is within ``max_drop``
  points of the ANN on the same images (the most accurate one when none is);
- :func:`oracle`: each image exits at the first step from which its prediction stays right until
  T_max (an image wrong at T_max exits at the first step it may: it is wrong anyway), the bound no
  exit signal can beat.
"""

from __future__ import annotations

from typing import Any, Mapping, Optional, Sequence

import torch

from ..spiking.early_exit import ExitPredictor, ExitResult, Progress, check_exit, feature_names, mlp_logit, replay

# the thresholds each simple rule's curve is drawn at (the schedule's: target precisions)
CONFIDENCE_GRID = (0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.85, 0.9, 0.93, 0.95, 0.97, 0.98, 0.99, 0.995, 0.999, 0.9999, 1.0)
PRECISION_GRID = (0.5, 0.6, 0.7, 0.75, 0.8, 0.85, 0.88, 0.9, 0.92, 0.94, 0.96, 0.98, 0.99, 1.0)
TARGETS = ("right", "settled")
PROBABILITY_GRID = (0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.85, 0.9, 0.93, 0.95, 0.97, 0.98, 0.99, 0.995)


def stats(result: ExitResult, y: torch.Tensor) -> dict:
    """Accuracy (%) and the distribution of exit steps of an early-exit run."""
    steps = result.steps.double()
    hist = torch.bincount(result.steps.cpu()).tolist()
    return {"accuracy": 100.0 * float((result.pred == y).double().mean()), "n": int(len(y)),
            "mean_steps": float(steps.mean()), "median_steps": float(steps.median()),
            "p90_steps": float(torch.quantile(steps, 0.9)), "histogram": {str(t): c for t, c in enumerate(hist) if c}}


def right_until_end(trace: Mapping[str, Any], y: torch.Tensor, T_max: int) -> torch.Tensor:
    """``[T_max, B]``: the prediction at step t is right and stays right until T_max."""
    right = trace["S"][:T_max].argmax(-1) == y  # [T, B]
    return right.flip(0).int().cumprod(0).flip(0).bool()


def settled(trace: Mapping[str, Any], T_max: int) -> torch.Tensor:
    """``[T_max, B]``: the prediction at step t is already the one at T_max and stays so (no label)."""
    top = trace["S"][:T_max].argmax(-1)  # [T, B]
    return right_until_end(trace, top[T_max - 1], T_max)


def first_allowed(min_steps: int, readout_start: int) -> int:
    return max(min_steps, readout_start + 1)


def oracle(trace: Mapping[str, Any], y: torch.Tensor, min_steps: int = 1, T_max: Optional[int] = None) -> ExitResult:
    """Each image exits at the first allowed step from which it stays right (module docstring)."""
    T_max, min_steps, d = check_exit(T_max or trace["S"].shape[0], min_steps, trace.get("readout_start", 0))
    stays = right_until_end(trace, y, T_max)
    t0 = first_allowed(min_steps, d)
    stays[: t0 - 1] = False
    right_end = stays[T_max - 1]
    first = torch.where(stays.any(0), stays.int().argmax(0) + 1, torch.full_like(y, T_max))
    steps = torch.where(right_end, first, torch.full_like(y, t0))
    pred = trace["S"][T_max - 1].argmax(-1)
    return ExitResult(pred, steps.long())


def fixed_steps_for(curve: Sequence[float], accuracy: float) -> Optional[int]:
    """The fewest steps at which a fixed-T accuracy curve (``curve[t - 1]`` at step t) reaches
    ``accuracy`` (in the curve's units), or None when it never does: the fixed T an early-exit
    result is compared with."""
    return next((t + 1 for t, a in enumerate(curve) if a >= accuracy - 1e-9), None)


def fixed(trace: Mapping[str, Any], y: torch.Tensor, T: int) -> torch.Tensor:
    """Per image, right after T steps of the fixed run."""
    return trace["S"][T - 1].argmax(-1) == y


# ----------------------------------------------------------------- fitting
def fit_schedule(trace: Mapping[str, Any], y: torch.Tensor, precision: float, min_steps: int = 1,
                 T_max: Optional[int] = None) -> list[float]:
    """One confidence threshold per step: the lowest one whose newly exiting images are at least
    ``precision`` right; above 1 (none exits) where no threshold is."""
    T_max, min_steps, d = check_exit(T_max or trace["S"].shape[0], min_steps, trace.get("readout_start", 0))
    S = trace["S"]
    out, left = [], torch.ones(len(y), dtype=torch.bool, device=y.device)
    progress = Progress(d)
    for t in range(1, T_max + 1):
        progress.observe(S[t - 1], t)
        if t < first_allowed(min_steps, d) or not bool(left.any()):
            out.append(2.0)
            continue
        conf = torch.softmax(progress.mean(), -1).amax(-1)[left]
        right = (S[t - 1].argmax(-1) == y)[left]
        order = conf.argsort(descending=True)
        c, r = conf[order], right[order].double()
        acc = r.cumsum(0) / torch.arange(1, len(r) + 1, device=r.device, dtype=r.dtype)
        last_of_tie = torch.ones_like(c, dtype=torch.bool)  # a threshold takes every image tied with it
        last_of_tie[:-1] = c[:-1] != c[1:]
        ok = (acc >= precision) & last_of_tie
        threshold = float(c[ok.nonzero()[-1, 0]]) if bool(ok.any()) else 2.0
        out.append(threshold)
        left[left.clone()] &= ~(conf >= threshold)
    return out


def fit_mlp(X: torch.Tensor, Y: torch.Tensor, hidden: int = 0, l2: float = 1e-3, iterations: int = 300,
            seed: int = 0) -> tuple[list[tuple[torch.Tensor, torch.Tensor]], torch.Tensor, torch.Tensor]:
    """The model behind :func:`fit_predictor`, on any feature matrix ``X`` ``[N, F]`` (float64) and
    0/1 targets ``Y`` ``[N]``: the features standardised, one tanh layer of ``hidden`` units (0:
    logistic regression), L2 on the weights, full-batch L-BFGS from a seeded start. Returns
    ``(layers, mean, std)`` as :class:`ExitPredictor` takes them (the last layer's weight a vector,
    its bias a scalar)."""
    mean, std = X.mean(0), X.std(0).clamp(min=1e-12)
    Z = (X - mean) / std
    g = torch.Generator().manual_seed(seed)
    sizes = [Z.shape[1]] + ([hidden] if hidden else []) + [1]
    params = []
    for k in range(len(sizes) - 1):
        w = (torch.randn(sizes[k], sizes[k + 1], generator=g, dtype=torch.float64) / sizes[k] ** 0.5) if k < len(sizes) - 2 \
            else torch.zeros(sizes[k], sizes[k + 1], dtype=torch.float64)
        params += [w.requires_grad_(True), torch.zeros(sizes[k + 1], dtype=torch.float64, requires_grad=True)]
    opt = torch.optim.LBFGS(params, max_iter=iterations, line_search_fn="strong_wolfe")
    pairs = list(zip(params[::2], params[1::2]))

    def loss():
        opt.zero_grad()
        value = torch.nn.functional.binary_cross_entropy_with_logits(mlp_logit(Z, pairs)[:, 0], Y)
        value = value + l2 * sum((w * w).sum() for w in params[::2])
        value.backward()
        return value

    with torch.enable_grad():
        opt.step(loss)
    layers = [(params[k].detach(), params[k + 1].detach()) for k in range(0, len(params), 2)]
    layers[-1] = (layers[-1][0][:, 0], layers[-1][1][0])
    return layers, mean, std


def fit_predictor(trace: Mapping[str, Any], y: torch.Tensor, min_steps: int = 1, T_max: Optional[int] = None,
                  hidden: int = 0, l2: float = 1e-3, iterations: int = 300, seed: int = 0,
                  target: str = "right", rates: bool = True) -> ExitPredictor:
    """An exit model (:func:`fit_mlp`) on every (image, allowed step) of a recorded run: one tanh layer of ``hidden``
    units (0: logistic regression), L2 on the weights, full-batch L-BFGS in float64 from a seeded
    start, the features standardised (module docstring). ``rates=False`` leaves out the per-layer
    firing rates: the model reads the output alone, and its runs count no spikes."""
    if rates and trace.get("rates") is None:
        raise ValueError("the learned rule's features include each layer's firing rate: record_run(..., layers=True), "
                         "or fit_predictor(..., rates=False)")
    T_max, min_steps, d = check_exit(T_max or trace["S"].shape[0], min_steps, trace.get("readout_start", 0))
    if target not in TARGETS:
        raise ValueError(f"unknown exit target {target!r}; one of {', '.join(TARGETS)}")
    labels = right_until_end(trace, y, T_max) if target == "right" else settled(trace, T_max)
    rows, targets = [], []
    progress = Progress(d)
    for t in range(1, T_max + 1):
        progress.observe(trace["S"][t - 1], t, trace["rates"][t - 1] if rates else None)
        if t >= first_allowed(min_steps, d):
            rows.append(progress.features(rates=rates))
            targets.append(labels[t - 1].double())
    layers, mean, std = fit_mlp(torch.cat(rows).cpu(), torch.cat(targets).cpu(), hidden, l2, iterations, seed)
    return ExitPredictor(layers, mean, std, feature_names(trace["rates"].shape[-1] if rates else 0))


# ----------------------------------------------------------------- curves and the operating point
def curve(trace: Mapping[str, Any], y: torch.Tensor, rule: str, settings: Sequence[Any], min_steps: int = 1,
          T_max: Optional[int] = None, predictor: Optional[ExitPredictor] = None,
          fit_on: Optional[tuple[Mapping[str, Any], torch.Tensor]] = None) -> list[dict]:
    """Accuracy and exit steps of ``rule`` at every setting (a threshold; for ``schedule`` a target
    precision, its schedule fitted on ``fit_on`` = (trace, labels), default this one)."""
    points = []
    for s in settings:
        threshold = s
        if rule == "schedule":
            ft, fy = fit_on or (trace, y)
            threshold = fit_schedule(ft, fy, s, min_steps, T_max)
        res = replay(trace, rule, threshold, min_steps, T_max, predictor)
        points.append({"setting": s, "threshold": threshold, **stats(res, y)})
    return points


def choose(points: Sequence[dict], ann_acc: float, max_drop: float) -> dict:
    """The point with the fewest mean steps whose accuracy is at least ``ann_acc - max_drop``; when
    none is, the most accurate (``within_drop`` says which)."""
    ok = [p for p in points if p["accuracy"] >= ann_acc - max_drop]
    if ok:
        return {**min(ok, key=lambda p: (p["mean_steps"], -p["accuracy"])), "within_drop": True}
    return {**max(points, key=lambda p: (p["accuracy"], -p["mean_steps"])), "within_drop": False}


def margin_grid(trace: Mapping[str, Any], T_max: Optional[int] = None) -> list[float]:
    """Margin thresholds spread over the margins the run shows (quantiles of the top-1 minus top-2 of
    the mean output at every step)."""
    S = trace["S"][: T_max or trace["S"].shape[0]]
    d = int(trace.get("readout_start", 0))
    ts = torch.arange(1, S.shape[0] + 1, dtype=S.dtype, device=S.device).view(-1, 1, 1)
    m = (S[d:] / (ts[d:] - d)).double()
    top2 = m.topk(2, -1).values
    margins = (top2[..., 0] - top2[..., 1]).flatten()
    qs = torch.tensor([0.2, 0.4, 0.5, 0.6, 0.7, 0.8, 0.85, 0.9, 0.93, 0.95, 0.97, 0.98, 0.99, 0.995, 0.999],
                      dtype=torch.float64)
    values = torch.quantile(margins.cpu()[: 2_000_000], qs)
    return sorted({float(v) for v in values if v > 0})
