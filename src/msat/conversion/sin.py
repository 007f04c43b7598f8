"""Spikes of inactivated neurons (SIN) and spike confidence (spec section 3).

A neuron is *inactivated* for a sample when its ANN pre-activation (the ReLU input after
BN folding) is negative; it has *SIN by step t* when it is inactivated and has emitted at
least one spike in steps 1..t. The ANN and the SNN run side by side on the same batch,
through the network's monitor mechanism (:meth:`SpikingNetwork.monitor`).
"""

from __future__ import annotations

import itertools
from typing import Any, Iterable, Mapping, Optional

import torch
from torch import nn

from ..spiking.monitors import SINMonitor
from ..spiking.network import SpikingNetwork, sc_layer_indices
from ..spiking.simulation import check_T, iterate_steps
from ..util import batches, device_of
from .prepare import ann_pre_activations, check_pair, prepare_ann

SC_KEYS = {"p", "early_steps", "layers", "reset", "seed", "r_definition", "T"}
SC_DEFAULTS = dict(p=None, early_steps=16, layers="last", reset="fired", seed=0, r_definition="fired", T=256)








@torch.no_grad()
def sin_statistics(ann, snn: SpikingNetwork, x: torch.Tensor, T: int, chunk: int = 1) -> list[SINMonitor]:
    """Run a prepared ANN and the SNN side by side on one batch; one SIN monitor per layer."""
    T = check_T(T)
    check_pair(ann, snn)
    pre, _ = ann_pre_activations(ann, x)
    with snn.monitor(T, sin=True, device=x.device) as mons:
        mons.begin_batch(pre)
        del pre
        for _ in iterate_steps(snn, x, T, chunk):
            pass
        mons.end_batch()
    return mons.sin


def measure_sin(model: nn.Module, snn: SpikingNetwork, x: torch.Tensor, T: int) -> list[torch.Tensor]:
    """SIN ratio of every spiking layer after each of T steps, for one input batch.

    ``model`` is the ANN and ``snn`` the result of :func:`msat.convert` on it. Returns one
    float tensor of length T per spiking layer, in graph order.
    """
    ann = prepare_ann(model)
    device = device_of(snn)
    ann.to(device)
    monitors = sin_statistics(ann, snn, x.to(device), T)
    return [m.ratio().float() for m in monitors]


def auto_early_steps(ratio: torch.Tensor, fraction: float = 0.9) -> int:
    """Smallest t (1-based) at which the SIN ratio reaches ``fraction`` of its final value."""
    final = float(ratio[-1])
    hit = (ratio >= fraction * final).nonzero()
    return int(hit[0]) + 1 if len(hit) else len(ratio)


def confidence_from_counts(sin: torch.Tensor, fired: torch.Tensor, neurons: torch.Tensor,
                           r_definition: str = "fired") -> torch.Tensor:
    """p = 1 - r, with r = neurons with SIN by E / neurons that fired by E (``"fired"``), or /
    all neurons (``"all"``); counts of one step E, one entry per layer."""
    if r_definition not in ("fired", "all"):
        raise ValueError(f"r_definition must be 'fired' or 'all', got {r_definition!r}")
    denom = fired if r_definition == "fired" else neurons
    return 1.0 - torch.where(denom > 0, sin / denom.clamp(min=1), torch.zeros((), dtype=sin.dtype))


def spike_confidence(monitors: list[SINMonitor], early_steps: int, r_definition: str = "fired") -> list[float]:
    """p[l] = 1 - r[l] for every layer, from the SIN monitors of one measurement."""
    for m in monitors:
        if early_steps > m.T:
            raise ValueError(f"E={early_steps} is beyond the {m.T} measured steps")
    sin = torch.tensor([float(m.sin_count[early_steps - 1]) for m in monitors], dtype=torch.float64)
    fired = torch.tensor([float(m.fired_count[early_steps - 1]) for m in monitors], dtype=torch.float64)
    neurons = torch.tensor([m.neurons for m in monitors], dtype=torch.float64)
    return confidence_from_counts(sin, fired, neurons, r_definition).tolist()


def check_sc(sc: Mapping[str, Any]) -> dict:
    """Validate spike-confidence settings (API keys); returns them with defaults filled in."""
    unknown = set(sc) - SC_KEYS
    if unknown:
        raise ValueError(f"unknown spike-confidence keys {sorted(unknown)}; allowed: {sorted(SC_KEYS)}")
    out = dict(SC_DEFAULTS)
    out.update({k: v for k, v in sc.items() if v is not None or k == "p"})
    E = out["early_steps"]
    if E != "auto" and (isinstance(E, bool) or int(E) != E or int(E) < 1):
        raise ValueError(f"sc early_steps must be a positive integer or 'auto', got {E!r}")
    if out["reset"] not in ("fired", "emitted"):
        raise ValueError(f"sc reset must be 'fired' or 'emitted', got {out['reset']!r}")
    if out["r_definition"] not in ("fired", "all"):
        raise ValueError(f"sc r_definition must be 'fired' or 'all', got {out['r_definition']!r}")
    p = out["p"]
    values = [] if p is None else ([p] if isinstance(p, (int, float)) else list(p.values()) if isinstance(p, Mapping) else list(p))
    for v in values:
        if not 0.0 <= float(v) <= 1.0:
            raise ValueError(f"spike confidence p must lie in [0, 1], got {v}")
    return out


def apply_spike_confidence(snn: SpikingNetwork, ann, calibration_data: Iterable, sc: Mapping[str, Any]) -> dict:
    """Configure SC on ``snn``; p (and E='auto') are measured on the first calibration batch
    when not given. Returns the resolved settings."""
    sc = check_sc(sc)
    E = sc["early_steps"]
    if sc["p"] is None or E == "auto":
        x = next(iter(batches(calibration_data, 1)), None)
        if x is None:
            raise ValueError("spike confidence needs one calibration batch to measure p")
        snn.clear_sc()
        T_meas = int(sc["T"]) if E == "auto" else int(E)
        monitors = sin_statistics(ann, snn, x.to(device_of(snn)), T_meas)
        layers = sc_layer_indices(sc["layers"], len(monitors))
        if E == "auto":
            E = auto_early_steps(monitors[layers[-1]].ratio())
        if sc["p"] is None:
            sc["p"] = spike_confidence(monitors, E, sc["r_definition"])
    sc["early_steps"] = int(E)
    snn.configure_sc(sc["p"], sc["early_steps"], sc["layers"], sc["reset"], int(sc["seed"]))
    return sc


def one_shot_safe(data: Iterable, num_batches: Optional[int]) -> Iterable:
    """Materialise a one-shot iterator so that it can be read twice (calibration, then SC)."""
    if iter(data) is data:
        return list(itertools.islice(data, num_batches))
    return data






def resolve_sc(sc_cfg: Mapping[str, Any], sin: Optional[Mapping[str, Any]], n_layers: int, T: Optional[int],
               required: bool = True) -> Optional[dict]:
    """Spike-confidence settings from a config (``method.sc``): E (or 'auto') and p per layer,
    given or measured from stored SIN statistics ``sin``. ``T``: the simulation length
    (E <= T). Returns None when the statistics are missing and ``required`` is False."""
    sc = check_sc({k: v for k, v in sc_cfg.items() if k in SC_KEYS})
    seeds = sc_cfg.get("seeds")
    idx = sc_layer_indices(sc["layers"], n_layers)
    E = sc["early_steps"]
    if E == "auto":
        if sin is None:
            if not required:
                return None
            raise ValueError("method.sc.early_steps=auto needs SIN statistics: rerun convert.py with sin.enabled=true")
        E = auto_early_steps(sin["sin_count"][idx[-1]] / sin["neurons"][idx[-1]])
    E = int(E)
    if T is not None and E > T:
        raise ValueError(f"spike confidence E={E} is larger than T={T}")
    p_all = None
    if sin is not None and E <= sin["T"]:
        p_all = confidence_from_counts(sin["sin_count"][:, E - 1], sin["fired_count"][:, E - 1], sin["neurons"],
                                       sc["r_definition"]).tolist()
    p = sc["p"]
    if p is None:
        if p_all is None:
            if not required:
                return None
            raise ValueError(
                "spike confidence needs p, but the conversion artifact has no SIN statistics"
                + (f" up to E={E}" if sin is not None else "")
                + ": rerun convert.py with sin.enabled=true (and sin.T >= E), or give method.sc.p"
            )
        p = [p_all[i] for i in idx]
    elif isinstance(p, (int, float)):
        p = [float(p)] * len(idx)
    elif len(p) == n_layers and len(idx) != n_layers:
        p = [p[i] for i in idx]
    if len(p) != len(idx):
        raise ValueError(f"method.sc.p has {len(p)} values for {len(idx)} spike-confidence layers")
    return {"early_steps": E, "layers": idx, "p": [float(v) for v in p], "reset": sc["reset"],
            "seed": int(sc["seed"]), "r_definition": sc["r_definition"], "p_all_layers": p_all,
            "seeds": list(seeds or [int(sc["seed"])])}
