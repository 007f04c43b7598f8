"""The entry scripts' settings, typed once at the door.

Each task turns its Hydra config into these in one call (:func:`convert_settings`,
:func:`eval_settings`), every value checked before a checkpoint or a dataset is read; the
library below receives the typed settings and plain arguments, never the config. The
``method`` and ``calibration`` groups become a :class:`~msat.conversion.recipe.Recipe`
(:func:`recipe_from_config`); :data:`OVERRIDES` maps a recipe's fields back to the command
line (``msat.reproduce`` and ``msat.search`` write their variants with it).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping, Optional

import torch
from omegaconf import DictConfig, OmegaConf

from ..conversion.corrections import CORRECTIONS
from ..conversion.recipe import Recipe
from ..conversion.sin import SC_KEYS, check_sc
from ..spiking.simulation import check_readout_start, check_T, resolve_chunk, resolve_compile, sim_dtype
from ..spiking.thresholds import THRESHOLD_RULES
from .evaluation import check_steps
from .exit_eval import ExitSettings, exit_settings

# a recipe field -> its Hydra key (the rest of a recipe: method.hparams, method.sc, and the
# named method itself, method=<name>)
OVERRIDES = {
    "threshold": "method.threshold", "v_init": "method.v_init", "max_spikes": "method.max_spikes",
    "correction": "method.correction", "correction_T": "method.correction_T",
    "balancing": "calibration.balancing", "percentile": "calibration.percentile",
    "channelwise": "calibration.channelwise", "passes": "calibration.passes", "num_batches": "calibration.num_batches",
}


def plain(cfg: Any) -> Any:
    """A resolved plain container; a missing mandatory value (``???``) is an error naming the key."""
    if isinstance(cfg, DictConfig):
        return OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True)
    return cfg


def recipe_from_config(method: Mapping[str, Any], calibration: Mapping[str, Any]) -> Recipe:
    """The conversion that the ``method`` and ``calibration`` groups describe (spike confidence
    included when ``method.sc.enabled``), validated, with its defaults spelt out."""
    m, cal = plain(method), plain(calibration)
    threshold = m["threshold"]
    rule = THRESHOLD_RULES.get(threshold)  # an unknown rule is refused by validate()
    hparams = dict(m["hparams"]) if rule is not None and rule.table2 else {"frac": m["frac"]}
    correction = m.get("correction")
    options = dict(m.get("correction_options") or {})
    if correction in CORRECTIONS and "batches_used" in CORRECTIONS[correction].options:
        options.setdefault("batches_used", int(cal["correction_batches"]))
    sc = {k: v for k, v in m["sc"].items() if k in SC_KEYS} if m["sc"]["enabled"] else None
    recipe = Recipe(threshold=threshold, hparams=hparams, balancing=m.get("balancing") or cal["balancing"],
                    percentile=float(cal["percentile"]), channelwise=bool(cal["channelwise"]), passes=int(cal["passes"]),
                    num_batches=cal["num_batches"], v_init=m.get("v_init"), max_spikes=m["max_spikes"],
                    correction=correction, correction_T=m.get("correction_T") if correction else None,
                    correction_options=options, sc=sc)
    return recipe.validate().canonical()


def recipe_overrides(recipe: Recipe, base_name: str, base: Recipe) -> list[str]:
    """The command-line overrides that make the named method ``base_name`` (whose recipe is
    ``base``) run ``recipe``: ``method=<base_name>`` and one override per field that differs."""
    out = [f"method={base_name}"]
    for field, value in recipe.differences(base).items():
        if field not in OVERRIDES:
            raise ValueError(f"a recipe differing from {base_name!r} in {field!r} has no override; name a method "
                             f"whose recipe has it")
        out.append(f"{OVERRIDES[field]}={'null' if value is None else value}")
    return out


@dataclasses.dataclass(frozen=True)
class ConvertSettings:
    """What ``convert.py`` does: the recipe (spike confidence aside: it is applied when
    evaluating, from the artifact's SIN record), where the calibration images come from, and
    the SIN measurement."""

    recipe: Recipe
    method: str  # the named method (method.name): the artifact's file name and the record
    checkpoint: str
    batch_size: int
    seed: int
    artifact: Optional[str]
    sin: bool
    sin_T: int
    sin_batch_size: int

    def fingerprint_fields(self) -> dict:
        """What determines the artifact (its file name carries a hash of it)."""
        return {"recipe": self.recipe.replace(sc=None).to_dict(), "batch_size": self.batch_size, "seed": self.seed}


def convert_settings(cfg: DictConfig) -> ConvertSettings:
    cal = cfg.calibration
    if int(cal.batch_size) < 1:
        raise ValueError(f"calibration.batch_size must be >= 1, got {cal.batch_size}")
    return ConvertSettings(recipe=recipe_from_config(cfg.method, cal), method=str(cfg.method.name),
                           checkpoint=str(cal.checkpoint), batch_size=int(cal.batch_size), seed=int(cfg.seed),
                           artifact=cal.get("artifact"), sin=bool(cfg.sin.enabled), sin_T=check_T(cfg.sin.T),
                           sin_batch_size=int(cfg.sin.batch_size))


@dataclasses.dataclass(frozen=True)
class EvalSettings:
    """What ``evaluate.py`` does (``eval`` and ``sim``), with the conversion it evaluates."""

    convert: ConvertSettings
    T: int
    steps: list  # the report steps (eval.checkpoints)
    tol: float
    batch_size: int
    max_samples: Optional[int]
    subset_seed: int
    readout_start: Any  # an integer, or "auto"
    dtype: torch.dtype
    chunk: Any
    compile: Any
    channels_last: bool
    sin: bool
    threshold_traces: bool  # eval.theta_traces: traces of the threshold theta_t * lam
    firing_rates: bool
    diagnostics: bool
    quirk_no_reset: bool
    resume: bool
    plots: bool
    save_predictions: bool
    convert_if_missing: bool
    sc: Optional[dict]  # method.sc when enabled (E, p, layers, ..., seeds)
    exit: Optional[ExitSettings]  # early exit (eval.exit), or None

    @property
    def recipe(self) -> Recipe:
        return self.convert.recipe


def eval_settings(cfg: DictConfig) -> EvalSettings:
    """The evaluation's settings, every one checked before a checkpoint is read."""
    ev, sim = cfg.eval, cfg.sim
    T = check_T(ev.T)
    if int(ev.batch_size) < 1:
        raise ValueError(f"eval.batch_size must be >= 1, got {ev.batch_size}")
    if ev.max_samples is not None and int(ev.max_samples) < 1:
        raise ValueError(f"eval.max_samples must be >= 1 or null, got {ev.max_samples}")
    resolve_chunk(sim.chunk, torch.device("cpu"))  # validates the value
    resolve_compile(sim.compile, torch.device("cpu"), 0)
    rs = ev.readout_start
    # spike confidence's values are checked with it off too: an out-of-range value is a mistake either way
    sc_cfg = plain(cfg.method.sc)
    check_sc({k: v for k, v in sc_cfg.items() if k in SC_KEYS})
    sc = sc_cfg if sc_cfg["enabled"] else None
    if sc and sc["early_steps"] != "auto" and int(sc["early_steps"]) > T:
        raise ValueError(f"spike confidence E={sc['early_steps']} is larger than T={T}")
    return EvalSettings(
        convert=convert_settings(cfg), T=T, steps=check_steps(ev.checkpoints, T, clip=True), tol=float(ev.tol),
        batch_size=int(ev.batch_size), max_samples=ev.max_samples, subset_seed=int(ev.subset_seed),
        readout_start=rs if rs == "auto" else check_readout_start(rs, T), dtype=sim_dtype(sim.dtype),
        chunk=sim.chunk, compile=sim.compile, channels_last=bool(sim.channels_last), sin=bool(ev.sin),
        threshold_traces=bool(ev.theta_traces), firing_rates=bool(ev.firing_rates), diagnostics=bool(ev.diagnostics),
        quirk_no_reset=bool(ev.quirk_no_reset), resume=bool(ev.resume), plots=bool(ev.plots),
        save_predictions=bool(ev.save_predictions), convert_if_missing=bool(ev.convert_if_missing), sc=sc,
        exit=exit_settings(ev, T, rs))
