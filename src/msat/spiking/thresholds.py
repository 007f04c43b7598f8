"""Threshold rules of the converted SNN's neurons (spec section 2): ``theta(x, d)``, the
threshold in units of the layer scale lam, from the input ``x`` and the tracking term ``d``.

``const`` (``frac``; 1 = max-norm IF), ``msat`` (DTT x DET), ``dtt``, ``det``. A new rule is
one subclass registered with :func:`register_rule`; :mod:`msat.spiking.neuron` runs any of them.
"""

from __future__ import annotations

from typing import Any, Mapping, Optional

import torch

from ..util import registrar

HPARAM_KEYS = ("alpha", "k_a", "k_i", "C", "tau_mp", "tau_rd")



# exp's argument never goes below this: exp(-60) ~ 9e-27 added to a number >= 1 (``1 + exp(d)``,
# ``P + exp(e)``) leaves it unchanged in float16, float32 and float64 alike, so the floor changes
# no result. It keeps exp from producing subnormal numbers, which x86 handles in microcode at
# many times the cost of a normal one, when the membranes of silent neurons drift far below zero
# (d < -87 in float32): on a random-weight thin ResNet-20 at T=160 it saved 1.5-6.5% of the time
# (benchmarks/update_cost.py, part 4).
_EXP_FLOOR = -60.0


# ----------------------------------------------------------------- threshold rules
THRESHOLD_RULES: dict[str, type["ThresholdRule"]] = {}


register_rule = registrar(THRESHOLD_RULES, "threshold rule",
                          "Class decorator: make a :class:`ThresholdRule` available as ``method=name``.")


class ThresholdRule:
    """The firing threshold ``theta_t`` in units of ``lam``.

    ``theta(x, d)`` gives it for steps t >= 2 from this step's input ``x`` and
    ``d = u - s/(t-1)`` (the previous residual minus the mean residual so far; only
    computed when ``needs_mean``). Step 1 uses ``first``. ``theta`` may modify ``d`` (a
    temporary) in place and returns a tensor, or a float for a state-free threshold.
    """

    name = "?"
    first = 1.0
    needs_mean = False
    needs_input = False
    table2 = False  # its hyperparameters are a row of the paper's Table 2 (per architecture)

    @classmethod
    def from_hparams(cls, hparams: Optional[Mapping[str, Any]]) -> "ThresholdRule":
        return cls(**dict(hparams or {}))

    def hparams(self) -> dict:
        return {}

    def theta(self, x: torch.Tensor, d: Optional[torch.Tensor]):
        raise NotImplementedError


@register_rule("const")
class Const(ThresholdRule):
    """A constant fraction of ``lam`` (``frac=1``: the classic max-norm IF neuron)."""

    def __init__(self, frac: float = 1.0):
        if not float(frac) > 0:
            raise ValueError(f"const threshold needs frac > 0, got {frac}")
        self.frac = self.first = float(frac)

    @classmethod
    def from_hparams(cls, hparams):
        hp = dict(hparams or {})
        return cls(hp.get("frac", 1.0))  # the Table 2 keys of a shared config do not apply

    def hparams(self) -> dict:
        return {"frac": self.frac}

    def theta(self, x, d):
        return self.frac


class Adaptive(ThresholdRule):
    """The MSAT family (spec section 2): ``sigmoid(DTT + DET)``, or one of the two terms."""

    use_dtt = True
    use_det = True
    table2 = True

    def __init__(self, alpha=None, k_a=None, k_i=None, C=None, tau_mp=None, tau_rd=None, V_T: float = -1.0,
                 tau_rd_twice: bool = False):
        given = dict(alpha=alpha, k_a=k_a, k_i=k_i, C=C, tau_mp=tau_mp, tau_rd=tau_rd)
        missing = [k for k, v in given.items() if v is None]
        if len(missing) == len(given):
            raise ValueError(f"method {self.name!r} needs the Table 2 hyperparameters {HPARAM_KEYS}; pass hparams= "
                             f"(e.g. msat.TABLE2['vgg16'])")
        if missing:
            raise ValueError(f"method {self.name!r}: missing Table 2 hyperparameters {missing}")
        if k_i == 0 or C == 0:
            raise ValueError("k_i and C must be non-zero")
        self.alpha, self.k_a, self.k_i, self.C = float(alpha), float(k_a), float(k_i), float(C)
        self.tau_mp, self.tau_rd, self.V_T = float(tau_mp), float(tau_rd), float(V_T)
        self.tau_rd_twice = bool(tau_rd_twice)
        self.needs_mean, self.needs_input = self.use_dtt, self.use_det

    @classmethod
    def from_hparams(cls, hparams):
        if hparams is None:
            return cls()
        unknown = set(hparams) - set(HPARAM_KEYS) - {"V_T", "tau_rd_twice"}
        if unknown:
            raise ValueError(f"method {cls.name!r}: unknown hyperparameters {sorted(unknown)}")
        return cls(**dict(hparams))

    def hparams(self) -> dict:
        hp = {k: getattr(self, k) for k in HPARAM_KEYS}
        hp.update(V_T=self.V_T, tau_rd_twice=self.tau_rd_twice)
        return hp

    def theta(self, x, d):
        # sigmoid(DTT + DET) = 1 / (1 + exp(-DTT - DET)) (Eq. 15-18), with
        #   exp(-DTT) = exp(-tau_mp * (alpha*d + V_T)) / P,   P = (1 + exp(d/k_i)) ** (tau_mp*k_a),
        # is theta = P / (P + exp(e)), e = -tau_mp*(alpha*d + V_T) - DET: the literal form's
        # function with three exp, no log and a single division per neuron (a vector division
        # costs several multiplications; the update is compute-bound). Limits: exp(e) = inf
        # gives 0; P is clamped to the largest finite value after the power, so that a d/k_i
        # beyond exp's range (about 88 in float32) gives 1, never inf/inf.
        e = None
        P = None
        if self.use_dtt:
            e = d.mul(self.alpha).add_(self.V_T).mul_(-self.tau_mp)  # -tau_mp * (alpha*d + V_T)
            z = d if self.k_i == 1.0 else d.mul_(1.0 / self.k_i)
            P = torch.exp(z.clamp_(min=_EXP_FLOOR)).add_(1.0)  # 1 + exp(d / k_i)
            power = self.tau_mp * self.k_a
            if power == 0.5:
                P.sqrt_()
            elif power != 1.0:
                P.pow_(power)
            P.clamp_(max=torch.finfo(P.dtype).max)  # after the power: inf ** power (> 1) is inf again
        if self.use_det:
            # DET = tau_rd * exp(-x_t / C)   (Eq. 18; tau_rd once, as the released code)
            tau = self.tau_rd * self.tau_rd if self.tau_rd_twice else self.tau_rd
            det = torch.exp(x * (-1.0 / self.C))
            e = det.mul_(-tau) if e is None else e.sub_(det.mul_(tau))
        en = torch.exp(e.clamp_(min=_EXP_FLOOR))
        if P is None:
            return en.add_(1.0).reciprocal_()
        return torch.div(P, en.add_(P), out=en)


@register_rule("msat")
class MSAT(Adaptive):
    pass


@register_rule("dtt")
class DTT(Adaptive):
    use_det = False


@register_rule("det")
class DET(Adaptive):
    use_dtt = False


def make_rule(method: str, hparams: Optional[Mapping[str, Any]] = None) -> ThresholdRule:
    if method not in THRESHOLD_RULES:
        raise ValueError(f"unknown method {method!r}; choose one of {', '.join(THRESHOLD_RULES)}")
    return THRESHOLD_RULES[method].from_hparams(hparams)


def check_threshold_args(method: str, hparams: Optional[Mapping[str, float]]) -> dict:
    """Validate a threshold rule and its hyperparameters; returns a clean dict."""
    return make_rule(method, hparams).hparams()
