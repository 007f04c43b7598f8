"""A recipe: the one description of a conversion.

A :class:`Recipe` names the threshold rule and its hyperparameters, where ``lam`` comes from,
the initial membrane, the spike cap, the correction and its target T, and spike confidence.
It is immutable; :meth:`Recipe.validate` is the only place a contradictory setting is
refused; :meth:`Recipe.to_dict` / :meth:`Recipe.from_dict` are its plain form (conversion
artifacts, fingerprints, ``results.json``). ``msat.convert(ann, data, recipe)`` runs one, and
so does every entry script (the Hydra ``method`` and ``calibration`` groups become a recipe
in :mod:`msat.harness.settings`).
"""

from __future__ import annotations

import dataclasses
from types import MappingProxyType
from typing import Any, Mapping, Optional

import torch.fx as fx

from ..spiking.thresholds import THRESHOLD_RULES, make_rule
from .corrections import CORRECTIONS, check_correction, check_options
from .lam import BALANCING
from .prepare import is_qcfs
from .sin import check_sc
from .table2 import table2_row

FORMAT = 1  # of the plain form


def _frozen(value: Any) -> Any:
    """A read-only copy: mappings become read-only mappings, lists tuples."""
    if isinstance(value, Mapping):
        return MappingProxyType({k: _frozen(v) for k, v in value.items()})
    if isinstance(value, (list, tuple)):
        return tuple(_frozen(v) for v in value)
    return value


def _plain(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, tuple):
        return [_plain(v) for v in value]
    return value


@dataclasses.dataclass(frozen=True)
class Recipe:
    """How a ReLU ANN becomes an SNN (README, "Python API" and "Methods").

    - ``threshold``: a registered threshold rule (``msat``, ``dtt``, ``det``, ``const``, ...);
      ``hparams`` its hyperparameters (the Table 2 keys; ``frac`` for ``const``). ``None``
      for an adaptive rule means "the Table 2 row of the model" (:meth:`for_model`).
    - ``balancing``: where the layer scales ``lam`` come from, a registered balancing (``max``,
      ``ltb``, ``trained``), with ``percentile`` and ``channelwise`` (``max``), ``passes``
      (``ltb``), on at most ``num_batches`` calibration batches. A QCFS net's ``max`` is its
      trained ``lam``.
    - ``v_init``: the initial membrane in units of lam; None: the balancing's default (0, or
      0.5 for ``ltb`` and ``trained``).
    - ``max_spikes``: spikes a neuron may emit per step (burst firing).
    - ``correction``: a registered correction, for ``correction_T`` steps, with its options.
    - ``sc``: spike confidence (the keys of ``msat.convert``'s ``sc``), or None.
    """

    threshold: str = "msat"
    hparams: Optional[Mapping[str, Any]] = None
    balancing: str = "max"
    percentile: float = 1.0
    channelwise: bool = False
    passes: int = 20
    num_batches: Optional[int] = None
    v_init: Optional[float] = None
    max_spikes: int = 1
    correction: Optional[str] = None
    correction_T: Optional[int] = None
    correction_options: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    sc: Optional[Mapping[str, Any]] = None

    def __post_init__(self):
        for f in ("hparams", "correction_options", "sc"):
            v = getattr(self, f)
            if v is not None:
                object.__setattr__(self, f, _frozen(dict(v)))

    # ------------------------------------------------------------------ checks
    def validate(self, ann: Optional[fx.GraphModule] = None) -> "Recipe":
        """Refuse every contradictory or out-of-range setting (given the prepared ANN, also those
        it cannot serve); returns the recipe."""
        if self.threshold not in THRESHOLD_RULES:
            raise ValueError(f"unknown method {self.threshold!r}; choose one of {', '.join(THRESHOLD_RULES)}")
        make_rule(self.threshold, self.hparams)
        if self.balancing not in BALANCING:
            raise ValueError(f"unknown balancing {self.balancing!r}; choose one of {', '.join(BALANCING)}")
        BALANCING[self.balancing_used(ann)]().check(self, ann)
        if self.num_batches is not None and (isinstance(self.num_batches, bool) or int(self.num_batches) < 1):
            raise ValueError(f"num_batches must be >= 1 or None, got {self.num_batches}")
        mx = self.max_spikes
        if isinstance(mx, bool) or int(mx) != mx or mx < 1:
            raise ValueError(f"max_spikes must be an integer >= 1, got {mx}")
        if self.v_init is not None and not isinstance(self.v_init, (int, float)):
            raise ValueError(f"v_init must be a number (in units of lam) or None, got {self.v_init!r}")
        check_correction(self.correction, self.correction_T)
        check_options(self.correction, dict(self.correction_options))
        if self.sc is not None:
            check_sc(dict(self.sc))
        return self

    def balancing_used(self, ann: Optional[fx.GraphModule] = None) -> str:
        """The balancing that runs: ``max`` on a QCFS net is its trained ``lam`` (unless the recipe
        asks for what only a calibration pass gives, which ``validate`` refuses)."""
        if ann is not None and self.balancing == "max" and is_qcfs(ann):
            return "trained"
        return self.balancing

    def initial_membrane(self, ann: Optional[fx.GraphModule] = None) -> float:
        """``v_init``, or the default of the balancing that runs."""
        if self.v_init is not None:
            return float(self.v_init)
        return BALANCING[self.balancing_used(ann)].v_init

    # ------------------------------------------------------------------ derived recipes
    def replace(self, **changes) -> "Recipe":
        return dataclasses.replace(self, **changes)

    def for_model(self, model: str) -> "Recipe":
        """With the Table 2 row of ``model`` where an adaptive rule leaves ``hparams`` open."""
        if self.hparams is not None or not THRESHOLD_RULES[self.threshold].table2:
            return self
        return self.replace(hparams=table2_row(model))

    def rule(self):
        return make_rule(self.threshold, self.hparams)

    def canonical(self) -> "Recipe":
        """The same recipe with the defaults spelt out (the rule's hyperparameters, the
        correction's options, spike confidence's settings), so that equal conversions compare equal."""
        sc = None if self.sc is None else check_sc(dict(self.sc))
        options = {**CORRECTIONS[self.correction].options, **self.correction_options} if self.correction else {}
        return self.replace(hparams=self.rule().hparams(), sc=sc, correction_options=options)

    # ------------------------------------------------------------------ plain form
    def to_dict(self) -> dict:
        d = {f.name: _plain(getattr(self, f.name)) for f in dataclasses.fields(self)}
        d["format"] = FORMAT
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "Recipe":
        d = dict(d)
        fmt = d.pop("format", None)
        if fmt != FORMAT:
            raise ValueError(f"a recipe of format {fmt!r}; this version reads format {FORMAT}")
        unknown = set(d) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise ValueError(f"unknown recipe fields {sorted(unknown)}")
        return cls(**d)

    @classmethod
    def from_keywords(cls, method: str = "msat", hparams: Optional[Mapping[str, Any]] = None, percentile: float = 1.0,
                      channelwise: bool = False, num_batches: Optional[int] = None, sc: Optional[Mapping] = None,
                      max_spikes: int = 1, v_init: Optional[float] = None, balancing: str = "max", passes: int = 20,
                      correction: Optional[str] = None, T: Optional[int] = None,
                      correction_options: Optional[Mapping[str, Any]] = None) -> "Recipe":
        """The recipe of ``msat.convert``'s documented keywords (``method`` is the threshold rule,
        ``T`` the correction's target)."""
        return cls(threshold=method, hparams=hparams, balancing=balancing, percentile=float(percentile),
                   channelwise=bool(channelwise), passes=passes, num_batches=num_batches, v_init=v_init,
                   max_spikes=max_spikes, correction=correction, correction_T=T,
                   correction_options=dict(correction_options or {}), sc=sc)

    def differences(self, other: "Recipe") -> dict[str, Any]:
        """The fields whose values differ from ``other``'s (plain form)."""
        a, b = self.to_dict(), other.to_dict()
        return {k: a[k] for k in a if a[k] != b[k]}


__all__ = ["Recipe", "CORRECTIONS", "BALANCING"]
