"""Spiking neurons of the converted SNN (spec sections 2 and 3): charge -> fire -> reset.

An :class:`IFNeuron` integrates ``x_t = input_t / lam`` (everything runs in units of the
layer scale ``lam``), fires when the membrane reaches the threshold ``theta_t`` and resets
by subtraction; a spike carries ``theta_t * lam`` to the next layer. Three pieces compose:

- the **threshold rule** (:class:`ThresholdRule`, in :mod:`msat.spiking.thresholds`), with one method,
  ``theta(x, d)``. ``const`` (``frac``; 1 = max-norm IF), ``msat``, ``dtt``, ``det``;
  a new rule is one registered subclass;
- **firing**: one spike per step, or a burst of up to ``max_spikes`` (spec ``mt.md`` 1);
- the **spike-confidence gate** (:class:`SpikeGate`), which drops early spikes.

The step maths (:func:`if_step`) exists once. The fast path is the same function compiled
with ``torch.compile`` into one pass over memory (``compile=True``); eager mode runs it as
written. State is registered once and :meth:`StepModule.reset` restores all of it.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any, Callable, Mapping, Optional

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

from .fused import compiled, describe_mismatch, fused_failed, rounding_tolerance, run_guarded
from .thresholds import ThresholdRule, make_rule

SC_RESET_MODES = ("fired", "emitted")


# ----------------------------------------------------------------- the step maths
def _fire(v: torch.Tensor, theta, max_spikes: int) -> torch.Tensor:
    """Spikes emitted by membrane ``v`` at threshold ``theta``: 0/1, or a burst count."""
    if max_spikes > 1:  # thresholds theta .. max_spikes * theta (spec mt.md section 1)
        return torch.floor(v / theta).clamp_(0, max_spikes)
    if torch.compiler.is_compiling():
        return (v >= theta).to(v.dtype)
    return torch.ge(v, theta, out=torch.empty_like(v))  # straight into a float buffer: one pass on CPU


def if_step(rule: ThresholdRule, max_spikes: int, v: torch.Tensor, s: Optional[torch.Tensor], inp: torch.Tensor,
            lam: torch.Tensor, inv_tm1: Optional[torch.Tensor], dead: Optional[torch.Tensor] = None,
            bias: Optional[torch.Tensor] = None, gate: Optional[Callable] = None, reset_by_emitted: bool = True,
            inv_lam: Optional[torch.Tensor] = None):
    """One time step of the IF neuron, in place on ``v`` (and ``s``), spec section 2.

    ``inv_tm1`` is ``1 / (t - 1)`` as a 0-d tensor, or None at t = 1 (theta = ``rule.first``);
    ``inv_lam`` is ``1 / lam`` (computed here when not given). The adaptive rules divide by
    neither: a vector division costs several times a multiplication, and the threshold is
    compute-bound (the results differ from dividing in the last bit only).
    ``dead`` masks channels whose ``lam`` is 0 (they stay silent); ``bias`` is added to the
    input (a bias correction, in the input's units); ``gate`` maps fired spikes to emitted
    ones (spike confidence). Returns ``(out, emitted, fired, theta)`` with
    ``out = emitted * theta * lam``.
    """
    if bias is not None:
        inp = inp + bias
    x = None
    if rule.needs_input or dead is not None:
        x = inp * (lam.reciprocal() if inv_lam is None else inv_lam)  # x_t, in units of lam
        if dead is not None:
            x = x.masked_fill(dead, 0)
    if inv_tm1 is None:
        theta = rule.first
    else:  # from the previous residual, so before the charge
        d = v - s * inv_tm1 if rule.needs_mean else None  # u - s/(t-1)
        theta = rule.theta(x, d)
    if x is None:
        v.addcdiv_(inp, lam)  # charge: v + input / lam
    else:
        v.add_(x)
    fired = _fire(v, theta, max_spikes)
    if dead is not None:
        fired = fired.masked_fill(dead, 0)
    emitted = fired if gate is None else gate(fired)
    unit = isinstance(theta, float) and theta == 1.0  # a spike of theta = 1 carries lam itself

    def charge(spikes):
        return spikes if unit else spikes * theta

    y = charge(emitted)
    v.sub_(y if (emitted is fired or reset_by_emitted) else charge(fired))  # reset by subtraction
    if s is not None:
        s.add_(v)  # running sum of residuals
    return y * lam, emitted, fired, theta


_COMPILED: dict = {}


def _step_fn(with_stats: bool) -> Callable:
    """``if_step`` as a function of plain arguments: ``(out, fired, theta)`` or ``(out,)``."""

    def step(rule, max_spikes, v, s, inp, lam, inv_tm1, dead, bias, inv_lam):
        out, emitted, fired, theta = if_step(rule, max_spikes, v, s, inp, lam, inv_tm1, dead, bias, inv_lam=inv_lam)
        return (out, fired, theta) if with_stats else (out,)

    return step


def _compiled_step(with_stats: bool):
    """``if_step`` compiled (one fused kernel per rule class and shape rank); the rule's
    floats and ``t - 1`` are dynamic inputs, so one compilation serves every layer."""
    if with_stats not in _COMPILED:
        # one compiled variant per rule class, burst, bias, dead mask and first step: a sweep over
        # the levers in one process (msat.search) needs more than dynamo's default of 8 before it
        # would fall back to eager for the rest
        import torch._dynamo.config as dynamo_config

        dynamo_config.recompile_limit = max(dynamo_config.recompile_limit, 64)
        _COMPILED[with_stats] = compiled(_step_fn(with_stats))
    return _COMPILED[with_stats]


def _step_agrees(args, res, e_args, e_res, before) -> Optional[str]:
    """The guard's comparison of a compiled neuron step with the eager one (msat.spiking.fused): the same
    spikes, except where the eager membrane lies within rounding of a threshold, and membranes,
    running sums and outputs within rounding."""
    max_spikes, lam = args[1], args[5]
    out_e, fired_e, theta_e = e_res
    v_e, v_c = e_args[2], args[2]
    theta = torch.as_tensor(theta_e, dtype=v_e.dtype, device=v_e.device)
    charged = v_e + fired_e * theta  # the eager membrane before it fired
    scale = before[2].abs() + charged.abs() + theta.abs() * max_spikes
    tol = rounding_tolerance(v_e.dtype) * scale
    k = torch.arange(1, max_spikes + 1, dtype=v_e.dtype, device=v_e.device).view(-1, *([1] * v_e.dim()))
    near = ((charged - k * theta).abs() <= tol).any(0)  # a spike rounding may flip
    dv, dout = (v_c - v_e).abs(), (res[0] - out_e).abs()
    ok = (dv <= tol) & (dout <= tol * lam.abs())
    diffs = {"v": dv, "out": dout}
    if before.get(3) is not None:
        ds = (args[3] - e_args[3]).abs()
        ok &= ds <= tol + rounding_tolerance(v_e.dtype) * e_args[3].abs()
        diffs["s"] = ds
    bad = ~(ok | near)
    bad |= (~torch.isfinite(v_c) & torch.isfinite(v_e)) | (~torch.isfinite(res[0]) & torch.isfinite(out_e))
    return describe_mismatch(bad, diffs)


def _run_compiled(neuron: "IFNeuron", inp, lam, inv_tm1, bias):
    """The fused step, or None (and eager from then on) when the compiled step fails here or
    disagrees with eager on its first call (see :mod:`msat.spiking.fused`)."""
    stats = bool(neuron._hooks)
    args = (neuron.rule, neuron.max_spikes, neuron.v, neuron.s, inp, lam, inv_tm1, neuron._dead, bias, neuron._inv_lam)
    res = run_guarded("neuron update", _compiled_step(with_stats=stats), _step_fn(True), args, (2, 3), _step_agrees,
                      pick=lambda r: r if stats else r[:1])
    if res is None or fused_failed():
        neuron.compiled = False
    return res


# ----------------------------------------------------------------- state
class StepModule(nn.Module):
    """A stateful module that processes ``steps`` time steps per call (stacked along the
    batch dimension, ``[steps * B, ...]``, or one ``[B, ...]`` tensor when the input is the
    same at every step: ``static_input``). State is declared once with
    :meth:`register_state`; :meth:`reset` restores it."""

    def __init__(self):
        super().__init__()
        self.steps = 1
        self.static_input = False
        self._state_init: dict[str, tuple[Any, bool]] = {}
        self._per_sample: set[str] = set()

    def register_state(self, name: str, init: Any = None, running: bool = False, per_sample: bool = False) -> None:
        """``running`` state survives ``reset(keep_running_state=True)`` (the released code's quirk);
        ``per_sample`` state has the batch in its first dimension (:meth:`keep_rows` compacts it)."""
        self._state_init[name] = (init, running)
        if per_sample:
            self._per_sample.add(name)
        setattr(self, name, init)

    def reset(self, seed: Optional[int] = None, keep_running_state: bool = False) -> None:
        for name, (init, running) in self._state_init.items():
            if not (running and keep_running_state):
                setattr(self, name, init)

    def keep_rows(self, rows: torch.Tensor) -> None:
        """Keep only the samples ``rows`` of the batch (early exit: the others have left)."""
        for name in self._per_sample:
            value = getattr(self, name)
            if value is not None:
                setattr(self, name, value.index_select(0, rows))

    def _split_steps(self, x: torch.Tensor):
        """Per-step inputs of a call: the same tensor K times (static) or K views."""
        K = self.steps
        if self.static_input:
            return [x] * K
        if x.shape[0] % K:
            raise RuntimeError(f"input batch {x.shape[0]} is not a multiple of steps={K}")
        return x.view(K, x.shape[0] // K, *x.shape[1:]).unbind(0)

    def step(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, inp: torch.Tensor) -> torch.Tensor:
        xs = self._split_steps(inp)
        if len(xs) == 1:
            return self.step(xs[0])
        return torch.cat([self.step(x) for x in xs], 0)


class SpikeGate:
    """Keeps each spike with probability ``p`` in steps 1..``early_steps`` (spec section 3).

    Draws come from a generator seeded per batch (``reset(seed)``), one independent draw
    per neuron, step and spike of a burst. ``reset="fired"`` (released code) reduces the
    membrane by the fired spike even when it is dropped; ``"emitted"`` (paper Eq. 20) only
    by what was emitted."""

    def __init__(self, p: float, early_steps: int, reset: str = "fired", seed: int = 0):
        if not 0.0 <= float(p) <= 1.0:
            raise ValueError(f"spike confidence p must lie in [0, 1], got {p}")
        if reset not in SC_RESET_MODES:
            raise ValueError(f"sc reset must be one of {SC_RESET_MODES}, got {reset!r}")
        if early_steps < 0:
            raise ValueError(f"early_steps must be >= 0, got {early_steps}")
        self.p, self.early_steps, self.reset_mode = float(p), int(early_steps), reset
        self.seed = self.batch_seed = int(seed)
        self._generator: Optional[torch.Generator] = None
        self._rows: Optional[torch.Tensor] = None  # after early exits: the batch rows still running
        self._batch: Optional[int] = None  # the batch size the draws are made for

    def reset(self, seed: Optional[int] = None) -> None:
        self._generator = None
        self._rows = self._batch = None
        self.batch_seed = self.seed if seed is None else int(seed)

    def keep_rows(self, rows: torch.Tensor) -> None:
        """Only ``rows`` of the current batch run on. The draws are still made for the whole batch
        and then picked, so every image gets the draws it gets in a run without exits."""
        self._rows = rows if self._rows is None else self._rows.index_select(0, rows)

    def active(self, t: int) -> bool:
        return t <= self.early_steps

    def _draw(self, shape, like: torch.Tensor, batch_dim: int = 0) -> torch.Tensor:
        if self._generator is None or self._generator.device != like.device:
            self._generator = torch.Generator(device=like.device)
            self._generator.manual_seed(self.batch_seed)
        if self._batch is None:
            self._batch = shape[batch_dim]
        if self._rows is None:
            return torch.rand(shape, generator=self._generator, device=like.device, dtype=torch.float32)
        full = list(shape)
        full[batch_dim] = self._batch
        r = torch.rand(full, generator=self._generator, device=like.device, dtype=torch.float32)
        return r.index_select(batch_dim, self._rows)

    def gate(self, max_spikes: int) -> Callable[[torch.Tensor], torch.Tensor]:
        def keep(fired: torch.Tensor) -> torch.Tensor:
            if max_spikes == 1:
                return fired * torch.lt(self._draw(fired.shape, fired), self.p).to(fired.dtype)
            r = self._draw((max_spikes, *fired.shape), fired, 1) < self.p  # each of the m spikes on its own
            idx = torch.arange(max_spikes, device=fired.device).view(-1, *([1] * fired.dim()))
            return (r & (idx < fired.unsqueeze(0))).sum(0).to(fired.dtype)

        return keep


# ----------------------------------------------------------------- the neuron
class IFNeuron(StepModule):
    """IF neuron with soft reset and a multistage adaptive threshold (spec section 2).

    Args:
        lam: the calibrated layer scale, a scalar or one value per channel (shape
            ``[C, 1, 1]`` for conv maps, ``[F]`` for linear features); kept in its dtype.
        method: a registered threshold rule, ``msat``, ``dtt``, ``det`` or ``const``.
        hparams: the rule's hyperparameters (Table 2 keys; ``frac`` for const).
        v_init: initial membrane in units of ``lam`` (paper: 0); a float, or a tensor that
            broadcasts over one sample (e.g. ``[C, 1, 1]``, the potential correction).
        max_spikes: spikes allowed per step (burst firing, thresholds theta..Gamma*theta).
        rule: a :class:`ThresholdRule` object instead of ``method`` and ``hparams``.
    """

    def __init__(self, lam: torch.Tensor | float, method: str = "msat", hparams: Optional[Mapping[str, float]] = None,
                 v_init: float = 0.0, max_spikes: int = 1, rule: Optional[ThresholdRule] = None):
        super().__init__()
        self.rule = rule if rule is not None else make_rule(method, hparams)
        if isinstance(max_spikes, bool) or int(max_spikes) != max_spikes or max_spikes < 1:
            raise ValueError(f"max_spikes must be an integer >= 1, got {max_spikes}")
        self.max_spikes = int(max_spikes)
        self.set_v_init(v_init)
        lam = torch.as_tensor(lam)
        self.register_buffer("lam", (lam if lam.is_floating_point() else lam.float()).clone())
        self.register_buffer("bias", None)  # input bias correction (SNN Calibration, RTS, FTBC)
        self.bias_per_step = False
        self.sc: Optional[SpikeGate] = None
        self.compiled = False  # run the fused (torch.compile'd) step where it applies
        self._hooks: OrderedDict[int, Any] = OrderedDict()
        self.register_state("v", per_sample=True)  # membrane, in units of lam
        self.register_state("s", running=True, per_sample=True)  # running sum of residuals (DTT)
        self.register_state("t", 0, running=True)  # steps since the last reset
        self.register_state("_dead")
        self.register_state("_lam")  # lam with dead channels set to 1, and its reciprocal (per batch)
        self.register_state("_inv_lam")

    @property
    def method(self) -> str:
        return self.rule.name

    @property
    def hp(self) -> dict:
        return self.rule.hparams()

    @property
    def sc_p(self) -> Optional[float]:
        return None if self.sc is None else self.sc.p

    # ------------------------------------------------------------------ state
    def reset(self, seed: Optional[int] = None, keep_running_state: bool = False) -> None:
        super().reset(seed, keep_running_state)
        if self.sc is not None:
            self.sc.reset(seed)

    def keep_rows(self, rows: torch.Tensor) -> None:
        super().keep_rows(rows)
        if self.sc is not None:
            self.sc.keep_rows(rows)
        for hook in self._hooks.values():  # monitors that keep per-sample state
            if hasattr(hook, "keep_rows"):
                hook.keep_rows(rows)

    def configure_sc(self, p: Optional[float], early_steps: int, reset: str = "fired", seed: int = 0) -> None:
        """Spike confidence on this layer (``p=None``: off)."""
        sc = SpikeGate(p if p is not None else 1.0, early_steps, reset, seed)
        self.sc = sc if p is not None else None

    def set_v_init(self, v_init) -> None:
        """The initial membrane in units of lam: a float, or a tensor broadcasting over one sample."""
        if "v_init" in self._buffers:
            del self._buffers["v_init"]
        elif hasattr(self, "v_init"):
            del self.v_init
        if isinstance(v_init, torch.Tensor) and v_init.dim() > 0:
            self.register_buffer("v_init", v_init.detach().clone())
        else:
            self.v_init = float(v_init)

    def set_bias(self, bias: Optional[torch.Tensor], per_step: bool = False) -> None:
        """A correction added to the neuron's input (the preceding layer's bias shift, in the
        input's units); None removes it. ``per_step``: ``bias`` is a schedule ``[S, ...]`` whose row
        t-1 is added at step t, its last row from step S on."""
        self.bias = None if bias is None else bias.detach().to(self.lam.dtype).clone()
        self.bias_per_step = bool(per_step) and bias is not None

    def bias_at(self, t: int) -> Optional[torch.Tensor]:
        """The input bias of step t (1-based)."""
        if self.bias is None or not self.bias_per_step:
            return self.bias
        return self.bias[min(t, self.bias.shape[0]) - 1]

    def register_step_hook(self, hook) -> RemovableHandle:
        """``hook.on_step(neuron, t, theta, fired, emitted)`` runs after every step."""
        handle = RemovableHandle(self._hooks)
        self._hooks[handle.id] = hook
        return handle

    # --------------------------------------------------------------- dynamics
    def step(self, inp: torch.Tensor) -> torch.Tensor:
        """One time step on an input of shape [B, ...]; returns spike * theta * lam."""
        if self.v is None:
            dead = self.lam == 0  # a never-active layer or channel stays silent, never NaN
            self._dead = dead if bool(dead.any()) else None
            self._lam = self.lam if self._dead is None else self.lam.masked_fill(self._dead, 1.0)
            self._inv_lam = self._lam.reciprocal()  # once per batch: the step multiplies by it
            v0 = self.v_init
            self.v = torch.full_like(inp, v0) if isinstance(v0, float) else v0.to(inp.dtype).expand_as(inp).clone()
            if self.rule.needs_mean and self.s is None:
                self.s = torch.zeros_like(inp)
        elif self.v.shape != inp.shape:
            raise RuntimeError(f"state shape {tuple(self.v.shape)} != input {tuple(inp.shape)}; call reset()")
        if self.s is not None and self.s.shape != inp.shape:  # quirk mode, smaller last batch
            self.s = self.s[: inp.shape[0]].contiguous()
        self.t += 1
        t = self.t
        lam = self._lam
        inv_tm1 = None if t == 1 else torch.full((), 1.0 / (t - 1), dtype=inp.dtype, device=inp.device)
        gated = self.sc is not None and self.sc.active(t)
        bias = self.bias_at(t)
        res = None
        if self.compiled and not gated:
            res = _run_compiled(self, inp, lam, inv_tm1, bias)
        if res is not None:
            out, fired, theta = res if len(res) == 3 else (res[0], None, None)
            emitted = fired
        else:
            gate = self.sc.gate(self.max_spikes) if gated else None
            by_emitted = not gated or self.sc.reset_mode == "emitted"
            out, emitted, fired, theta = if_step(self.rule, self.max_spikes, self.v, self.s, inp, lam, inv_tm1,
                                                 self._dead, bias, gate, by_emitted, self._inv_lam)
        for hook in self._hooks.values():
            hook.on_step(self, t, theta, fired, emitted)
        return out

    def extra_repr(self) -> str:
        extra = f", max_spikes={self.max_spikes}" if self.max_spikes > 1 else ""
        sc = f", sc_p={self.sc.p:.3f}, sc_steps={self.sc.early_steps}" if self.sc is not None else ""
        return f"method={self.method}, lam_shape={tuple(self.lam.shape)}{extra}{sc}"
