"""Spiking neurons of the converted SNN (spec sections 1.4, 2 and 3).

``IFNeuron`` is an integrate-and-fire neuron with soft reset whose threshold follows
one of four rules:

- ``const``: ``theta = frac`` (in units of ``lam``; ``frac=1`` is max-norm IF);
- ``msat``: ``theta_1 = 1``, then ``sigmoid(DTT_t + DET_t)``;
- ``dtt`` / ``det``: ``theta_1 = 1``, then ``sigmoid(DTT_t)`` / ``sigmoid(DET_t)``.

Everything runs in units of the layer scale ``lam``: ``x_t = input_t / lam``, and the
output is ``spike * theta_t * lam``. A call processes ``steps`` time steps at once
(``steps=1`` for the one-step API); the input then holds the steps stacked along the
batch dimension, ``[steps * B, ...]``, or a single ``[B, ...]`` tensor when the input
is the same at every step (``static_input``).
"""

from __future__ import annotations

import math
from typing import Mapping, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

THRESHOLD_RULES = ("msat", "dtt", "det", "const")
HPARAM_KEYS = ("alpha", "k_a", "k_i", "C", "tau_mp", "tau_rd")
SC_RESET_MODES = ("fired", "emitted")
LN2 = math.log(2.0)

# Table 2 of the paper, one row per architecture.
TABLE2 = {
    "vgg16": dict(alpha=0.03, k_a=1.0, k_i=1.0, C=5.0, tau_mp=1.0, tau_rd=1.0),
    "resnet20": dict(alpha=0.3, k_a=1.0, k_i=1.0, C=5.0, tau_mp=0.5, tau_rd=0.5),
    "resnet34": dict(alpha=1.0, k_a=1.0, k_i=1.0, C=5.0, tau_mp=0.5, tau_rd=0.5),
}


def check_threshold_args(method: str, hparams: Optional[Mapping[str, float]]) -> dict:
    """Validate a threshold rule and its hyperparameters; returns a clean dict."""
    if method not in THRESHOLD_RULES:
        raise ValueError(f"unknown method {method!r}; choose one of {', '.join(THRESHOLD_RULES)}")
    hp = dict(hparams or {})
    if method == "const":
        hp.setdefault("frac", 1.0)
        if not hp["frac"] > 0:
            raise ValueError(f"const threshold needs frac > 0, got {hp['frac']}")
        return {"frac": float(hp["frac"])}
    if hparams is None:
        raise ValueError(
            f"method {method!r} needs the Table 2 hyperparameters {HPARAM_KEYS}; pass hparams= "
            f"(e.g. msat.TABLE2['vgg16'])"
        )
    missing = [k for k in HPARAM_KEYS if k not in hp]
    if missing:
        raise ValueError(f"method {method!r}: missing Table 2 hyperparameters {missing}")
    unknown = set(hp) - set(HPARAM_KEYS) - {"V_T", "tau_rd_twice", "frac"}
    if unknown:
        raise ValueError(f"method {method!r}: unknown hyperparameters {sorted(unknown)}")
    if hp["k_i"] == 0 or hp["C"] == 0:
        raise ValueError("k_i and C must be non-zero")
    out = {k: float(hp[k]) for k in HPARAM_KEYS}
    out["V_T"] = float(hp.get("V_T", -1.0))
    out["tau_rd_twice"] = bool(hp.get("tau_rd_twice", False))
    return out


def softplus(z: torch.Tensor) -> torch.Tensor:
    """ln(1 + e^z), overflow-free: max(z, 0) + ln(1 + e^-|z|).

    On CPU, log1p (inside F.softplus) runs ~9x slower than log2 in PyTorch's kernels, so
    the log is taken as ln2 * log2(1 + e^-|z|), whose argument lies in (1, 2]: the result
    matches F.softplus to a few ulp (absolute error < 1e-7 in float32, tested)."""
    if z.is_cuda:
        return F.softplus(z)
    return torch.exp(z.abs().neg_()).add_(1.0).log2_().mul_(LN2).add_(z.clamp(min=0))


# ----------------------------------------------------------------- fused (torch.compile) update
def _fused_const(v, s, inp, lam, theta: float):
    """One step with a scalar threshold (const, and t=1 of the adaptive rules)."""
    v = v + inp / lam
    fired = (v >= theta).to(v.dtype)
    y = fired * theta
    v = v - y
    return v, (None if s is None else s + v), fired, y * lam


def _fused_adaptive(v, s, inp, lam, inv_tm1, hp: tuple, use_dtt: bool, use_det: bool):
    """One step of MSAT / DTT / DET for t >= 2 (spec section 2), as one fused kernel."""
    alpha, V_T, k_a, k_i, tau_mp, tau_rd, C = hp
    x = inp / lam
    z = torch.zeros_like(x)
    if use_dtt:
        d = v - s * inv_tm1
        dk = d / k_i
        sp = torch.log2(torch.exp(-dk.abs()) + 1.0) * LN2 + dk.clamp(min=0)
        z = z + tau_mp * (alpha * d + V_T + k_a * sp)
    if use_det:
        z = z + tau_rd * torch.exp(-x / C)
    theta = torch.sigmoid(z)
    v = v + x
    fired = (v >= theta).to(v.dtype)
    y = fired * theta
    v = v - y
    return v, (None if s is None else s + v), fired, theta, y * lam


_COMPILED: dict = {}


def _compiled(fn):
    if fn not in _COMPILED:
        _COMPILED[fn] = torch.compile(fn, dynamic=True)
    return _COMPILED[fn]


def _charge(spikes: torch.Tensor, theta, dtype: torch.dtype) -> torch.Tensor:
    """spikes * theta as a float tensor of ``dtype`` (spikes: bool or a float count)."""
    if isinstance(theta, torch.Tensor) or (spikes.dtype == dtype) or (
        spikes.dtype == torch.bool and dtype == torch.get_default_dtype()
    ):
        return spikes * theta
    return spikes.to(dtype) * theta


class StepModule(nn.Module):
    """A stateful module that processes ``steps`` time steps per call."""

    steps: int = 1

    def reset(self, seed: Optional[int] = None, keep_running_state: bool = False) -> None:
        raise NotImplementedError

    def _split_steps(self, x: torch.Tensor, static: bool) -> tuple[int, Sequence[torch.Tensor] | torch.Tensor]:
        """Return (batch size, per-step inputs) for a stacked or a static input."""
        if static:
            return x.shape[0], x
        K = self.steps
        if x.shape[0] % K:
            raise RuntimeError(f"input batch {x.shape[0]} is not a multiple of steps={K}")
        return x.shape[0] // K, x.view(K, x.shape[0] // K, *x.shape[1:])


class IFNeuron(StepModule):
    """IF neuron with soft reset and a multistage adaptive threshold (spec section 2).

    Args:
        lam: the calibrated layer scale, a scalar or one value per channel (shape
            ``[C, 1, 1]`` for conv maps, ``[F]`` for linear features).
        method: ``msat``, ``dtt``, ``det`` or ``const``.
        hparams: output of :func:`check_threshold_args`.
        v_init: initial membrane in units of ``lam`` (paper: 0).
        max_spikes: spikes allowed per step (burst firing, thresholds theta..Gamma*theta).
    """

    def __init__(
        self,
        lam: torch.Tensor | float,
        method: str = "msat",
        hparams: Optional[Mapping[str, float]] = None,
        v_init: float = 0.0,
        max_spikes: int = 1,
    ):
        super().__init__()
        self.method = method
        self.hp = check_threshold_args(method, hparams)
        if int(max_spikes) != max_spikes or max_spikes < 1:
            raise ValueError(f"max_spikes must be an integer >= 1, got {max_spikes}")
        self.max_spikes = int(max_spikes)
        self.v_init = float(v_init)
        lam = torch.as_tensor(lam)
        self.register_buffer("lam", (lam if lam.is_floating_point() else lam.float()).clone())
        self.static_input = False
        self.steps = 1
        # spike confidence (spec section 3): probability of keeping a spike in steps 1..E
        self.sc_p: Optional[float] = None
        self.sc_steps = 0
        self.sc_reset = "fired"
        self.sc_seed = 0
        self.sc_seed_batch = 0
        self._generator: Optional[torch.Generator] = None
        self.monitors: list = []
        self.compiled = False  # torch.compile'd update (sim.compile)
        self._dead: Optional[torch.Tensor] = None
        self.v: Optional[torch.Tensor] = None
        self.s: Optional[torch.Tensor] = None  # running sum of residuals (DTT)
        self.t = 0

    # ------------------------------------------------------------------ state
    def reset(self, seed: Optional[int] = None, keep_running_state: bool = False) -> None:
        """Restore the initial state. ``keep_running_state`` reproduces the released
        code's quirk: only the membrane is reset; step counter and running mean are kept."""
        self.v = None
        if not keep_running_state:
            self.s = None
            self.t = 0
        self._generator = None
        self.sc_seed_batch = self.sc_seed if seed is None else int(seed)

    def configure_sc(self, p: Optional[float], early_steps: int, reset: str = "fired", seed: int = 0) -> None:
        if p is not None and not 0.0 <= p <= 1.0:
            raise ValueError(f"spike confidence p must lie in [0, 1], got {p}")
        if reset not in SC_RESET_MODES:
            raise ValueError(f"sc reset must be one of {SC_RESET_MODES}, got {reset!r}")
        if early_steps < 0:
            raise ValueError(f"early_steps must be >= 0, got {early_steps}")
        self.sc_p = None if p is None else float(p)
        self.sc_steps = int(early_steps)
        self.sc_reset = reset
        self.sc_seed = int(seed)
        self.sc_seed_batch = int(seed)

    @property
    def uses_running_mean(self) -> bool:
        return self.method in ("msat", "dtt")

    # --------------------------------------------------------------- dynamics
    def _theta(self, x: torch.Tensor, t: int) -> torch.Tensor | float:
        """theta_t in units of lam (spec section 2); ``self.v`` still holds the previous residual."""
        hp = self.hp
        if self.method == "const":
            return hp["frac"]
        if t == 1:
            return 1.0
        z = None
        if self.method in ("msat", "dtt"):
            # d = u - s/(t-1): previous residual minus the mean residual so far
            d = torch.add(self.v, self.s, alpha=-1.0 / (t - 1))
            sp = softplus(d if hp["k_i"] == 1.0 else d / hp["k_i"])
            # DTT = tau_mp * (alpha*d + V_T + k_a*ln(1 + exp(d/k_i)))   (Eq. 17)
            z = d.mul_(hp["alpha"]).add_(hp["V_T"]).add_(sp, alpha=hp["k_a"])
            if hp["tau_mp"] != 1.0:
                z.mul_(hp["tau_mp"])
        if self.method in ("msat", "det"):
            # DET = tau_rd * exp(-x_t / C)   (Eq. 18; tau_rd once, as the released code)
            det = torch.exp(x * (-1.0 / hp["C"]))
            tau = hp["tau_rd"] * hp["tau_rd"] if hp["tau_rd_twice"] else hp["tau_rd"]
            z = det.mul_(tau) if z is None else z.add_(det, alpha=tau)
        return z.sigmoid_()

    def _sc_draw(self, shape, like: torch.Tensor) -> torch.Tensor:
        if self._generator is None or self._generator.device != like.device:
            self._generator = torch.Generator(device=like.device)
            self._generator.manual_seed(self.sc_seed_batch)
        return torch.rand(shape, generator=self._generator, device=like.device, dtype=torch.float32)

    def step(self, inp: torch.Tensor, out: Optional[torch.Tensor] = None) -> torch.Tensor:
        """One time step on an input of shape [B, ...]; returns spike * theta * lam."""
        lam = self.lam
        if self.v is None:
            # lam == 0 (a never-active layer or channel) must stay silent, never NaN
            self._dead = (lam == 0) if bool((lam == 0).any()) else None
            self.v = torch.full_like(inp, self.v_init)
            if self.uses_running_mean and self.s is None:
                self.s = torch.zeros_like(inp)
        elif self.v.shape != inp.shape:
            raise RuntimeError(f"state shape {tuple(self.v.shape)} != input {tuple(inp.shape)}; call reset()")
        if self.s is not None and self.s.shape != inp.shape:  # quirk mode, smaller last batch
            self.s = self.s[: inp.shape[0]].contiguous()
        self.t += 1
        t = self.t
        if self.compiled and self._dead is None and self.max_spikes == 1 and (self.sc_p is None or t > self.sc_steps):
            return self._fused_step(inp, t, out)
        v = self.v
        if self.method in ("msat", "det") or self._dead is not None:
            x = inp / lam  # x_t, in units of lam
            if self._dead is not None:
                x = x.masked_fill(self._dead, 0)
            theta = self._theta(x, t)  # from the previous residual, so before integrating
            v.add_(x)
        else:  # const / DTT: x_t only enters the membrane
            theta = self._theta(None, t)
            v.addcdiv_(inp, lam)  # v + input / lam
        if self.max_spikes == 1:
            # 0/1 as floats: comparing into a float buffer is far cheaper than bool -> float on CPU
            fired = torch.ge(v, theta, out=torch.empty_like(v))
        else:
            fired = torch.floor(v / theta).clamp_(0, self.max_spikes)
        if self._dead is not None:
            fired.masked_fill_(self._dead, 0)
        emitted = fired
        if self.sc_p is not None and t <= self.sc_steps:
            if self.max_spikes == 1:
                keep = torch.lt(self._sc_draw(fired.shape, fired), self.sc_p, out=torch.empty_like(fired))
                emitted = fired * keep
            else:  # each of the m spikes is kept independently
                r = self._sc_draw((self.max_spikes, *fired.shape), fired) < self.sc_p
                idx = torch.arange(self.max_spikes, device=fired.device).view(-1, *([1] * fired.dim()))
                emitted = (r & (idx < fired.unsqueeze(0))).sum(0).to(inp.dtype)
        y = _charge(emitted, theta, inp.dtype)  # spike * theta (exact: spike is 0/1 or a count)
        if emitted is fired or self.sc_reset == "emitted":
            v.sub_(y)  # soft reset by the emitted charge
        else:  # released code: reset by the fired spike, even when SC suppressed it
            v.sub_(_charge(fired, theta, inp.dtype))
        if self.s is not None:
            self.s.add_(v)
        for m in self.monitors:
            m.on_step(self, t, theta, fired, emitted)
        if out is not None:
            return torch.mul(y, lam, out=out)
        return y.mul_(lam) if torch.result_type(y, lam) == y.dtype else y * lam

    def _fused_step(self, inp: torch.Tensor, t: int, out: Optional[torch.Tensor]) -> torch.Tensor:
        hp = self.hp
        if self.method == "const" or t == 1:
            theta = hp["frac"] if self.method == "const" else 1.0
            self.v, s, fired, y = _compiled(_fused_const)(self.v, self.s, inp, self.lam, theta)
        else:
            inv = torch.full((), 1.0 / (t - 1), dtype=inp.dtype, device=inp.device)
            tau_rd = hp["tau_rd"] * hp["tau_rd"] if hp["tau_rd_twice"] else hp["tau_rd"]
            consts = (hp["alpha"], hp["V_T"], hp["k_a"], hp["k_i"], hp["tau_mp"], tau_rd, hp["C"])
            self.v, s, fired, theta, y = _compiled(_fused_adaptive)(
                self.v, self.s, inp, self.lam, inv, consts, self.method in ("msat", "dtt"), self.method in ("msat", "det"))
        if s is not None:
            self.s = s
        for m in self.monitors:
            m.on_step(self, t, theta, fired, fired)
        return y if out is None else out.copy_(y)

    def forward(self, inp: torch.Tensor) -> torch.Tensor:
        B, xs = self._split_steps(inp, self.static_input)
        K = self.steps
        if K == 1:
            return self.step(xs if self.static_input else xs[0])
        shape = inp.shape[1:]
        out = torch.empty((K * B, *shape), dtype=inp.dtype, device=inp.device)
        out_k = out.view(K, B, *shape)
        for k in range(K):
            self.step(xs if self.static_input else xs[k], out=out_k[k])
        return out

    def extra_repr(self) -> str:
        extra = f", max_spikes={self.max_spikes}" if self.max_spikes > 1 else ""
        sc = f", sc_p={self.sc_p:.3f}, sc_steps={self.sc_steps}" if self.sc_p is not None else ""
        return f"method={self.method}, lam_shape={tuple(self.lam.shape)}{extra}{sc}"


class LIPool(StepModule):
    """Lateral-inhibition pooling (Li & Zeng 2022), the spiking MaxPool2d (spec 1.4).

    Each pooling window keeps the running sum ``S`` of its inputs, outputs ``max(S)`` and
    subtracts that output from the whole window. With ``X`` the cumulative input and ``Y``
    the window's cumulative output, ``S = X - Y`` for every position of the window, so
    ``max(S) = maxpool(X) - Y``: this is computed with the native max-pool, for
    overlapping windows too (every window keeps its own ``Y``). The sum of the outputs up
    to any step equals the max-pool of the summed inputs.
    """

    def __init__(self, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False):
        super().__init__()
        self.kernel_size = kernel_size
        self.stride = stride if stride is not None else kernel_size
        self.padding = padding
        self.dilation = dilation
        self.ceil_mode = bool(ceil_mode)
        self.steps = 1
        self.static_input = False
        self.X: Optional[torch.Tensor] = None  # cumulative input
        self.Y: Optional[torch.Tensor] = None  # cumulative output per window

    @classmethod
    def from_maxpool(cls, pool: nn.MaxPool2d) -> "LIPool":
        if pool.return_indices:
            raise ValueError("MaxPool2d(return_indices=True) cannot be converted")
        return cls(pool.kernel_size, pool.stride, pool.padding, pool.dilation, pool.ceil_mode)

    def reset(self, seed: Optional[int] = None, keep_running_state: bool = False) -> None:
        self.X = None
        self.Y = None

    def _pool(self, x: torch.Tensor) -> torch.Tensor:
        return F.max_pool2d(x, self.kernel_size, self.stride, self.padding, self.dilation, self.ceil_mode)

    def step(self, x: torch.Tensor, out: Optional[torch.Tensor] = None) -> torch.Tensor:
        if self.X is None:
            self.X = x.clone()
            m = self._pool(self.X)
            self.Y = m
            return m if out is None else out.copy_(m)
        self.X.add_(x)
        m = self._pool(self.X)  # the max of each window's cumulative input
        y = torch.sub(m, self.Y, out=out) if out is not None else m - self.Y
        self.Y = m
        return y

    def forward(self, inp: torch.Tensor) -> torch.Tensor:
        B, xs = self._split_steps(inp, self.static_input)
        K = self.steps
        if K == 1:
            return self.step(xs if self.static_input else xs[0])
        outs = [self.step(xs if self.static_input else xs[k]) for k in range(K)]
        return torch.cat(outs, 0)

    def extra_repr(self) -> str:
        return f"kernel_size={self.kernel_size}, stride={self.stride}, padding={self.padding}, ceil_mode={self.ceil_mode}"
