"""The torch.compile'd steps (the neuron update, the LIPool step), run behind a guard.

Three things keep a compiled run honest:

- **A cache per CPU capability.** The compiler's on-disk cache does not tell apart kernels
  built for different vector instruction sets: a process under ``ATEN_CPU_CAPABILITY=avx2``
  that finds kernels an AVX-512 process cached can run them and return garbage. Unless the
  user chose a folder (``TORCHINDUCTOR_CACHE_DIR``), :func:`use_isa_cache_dir` points the
  cache at ``<the compiler's default>/msat-<capability>`` before the first compilation.
- **A guard.** The first time a compiled step runs for a new kernel signature (the shapes,
  the batch size left out, dtypes and settings of its arguments), the eager step runs on
  copies of the same inputs and the two are compared: spikes identical (a spike may differ
  only where the eager membrane lies within rounding of a threshold) and membranes within
  a tolerance that rounding explains. On a mismatch, or when compilation fails, one warning
  names the CPU capability, the torch version and the size of the difference, the eager
  results stand, and every fused step runs eager for the rest of the process.
- **A record.** :func:`compile_status` says whether compiled kernels ran, on which
  capability, and whether the guard fell back; every evaluation stores it in results.json.
"""

from __future__ import annotations

import os
import warnings
from typing import Any, Callable, Optional, Sequence

import torch

_STATE: dict[str, Any] = {"failed": False, "reason": None, "ran": False}
_CHECKED: set = set()  # kernel signatures whose first call agreed with eager
ISA_CACHE_PREFIX = "msat-"


def cpu_capability() -> str:
    """The vector instruction set ATen uses here (``torch.backends.cpu.get_cpu_capability()``)."""
    try:
        return str(torch.backends.cpu.get_cpu_capability())
    except Exception:  # very old torch
        return "unknown"


def use_isa_cache_dir() -> str:
    """Keep the compiler's on-disk cache apart per CPU capability, unless the user chose a folder.

    A ``TORCHINDUCTOR_CACHE_DIR`` that is the compiler's default, or a folder this function
    chose (in a parent process, perhaps under another capability), counts as not chosen.
    Returns the folder in use."""
    from torch._inductor.runtime.cache_dir_utils import default_cache_dir

    default = os.path.abspath(default_cache_dir())
    chosen = os.environ.get("TORCHINDUCTOR_CACHE_DIR")
    if chosen:
        chosen = os.path.abspath(chosen)
        ours = os.path.dirname(chosen) == default and os.path.basename(chosen).startswith(ISA_CACHE_PREFIX)
        if chosen != default and not ours:
            return chosen
    path = os.path.join(default, ISA_CACHE_PREFIX + cpu_capability().lower())
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = path
    return path


def compiled(fn: Callable) -> Callable:
    """``torch.compile(fn, dynamic=True)``, with the cache folder of this CPU capability."""
    use_isa_cache_dir()
    return torch.compile(fn, dynamic=True)


def compile_status() -> dict:
    """What this process's compiled steps did: for results.json."""
    return {"ran_compiled": bool(_STATE["ran"]), "guard_fell_back": bool(_STATE["failed"]),
            "fallback_reason": _STATE["reason"], "cpu_capability": cpu_capability(), "torch": torch.__version__,
            "cache_dir": os.environ.get("TORCHINDUCTOR_CACHE_DIR"), "kernels_checked": len(_CHECKED)}


def fused_failed() -> bool:
    return bool(_STATE["failed"])


def reset_guard() -> None:
    """Forget every check and fallback (tests)."""
    _STATE.update(failed=False, reason=None, ran=False)
    _CHECKED.clear()


def signature(args: Sequence[Any]) -> tuple:
    """What selects a compiled kernel: shapes (a batch of 2 or more counts as one size: the kernels
    are compiled for dynamic sizes, and only the sizes 0 and 1 are specialised), dtypes, devices and
    the values of the non-tensor settings."""
    sig = []
    for a in args:
        if isinstance(a, torch.Tensor):
            shape = tuple(a.shape)
            if shape and shape[0] >= 2:
                shape = ("B",) + shape[1:]
            sig.append((shape, a.dtype, a.device.type))
        elif a is None or isinstance(a, (bool, int, float, str)):
            sig.append(a)
        elif isinstance(a, (tuple, list)):
            sig.append(tuple(a))
        else:  # a threshold rule: its class and hyperparameters
            hp = a.hparams() if hasattr(a, "hparams") else {}
            sig.append((type(a).__name__, tuple(sorted(hp.items()))))
    return tuple(sig)


def run_guarded(name: str, fused: Callable, eager: Callable, args: tuple, state: Sequence[int],
                agree: Callable[..., Optional[str]], pick: Callable = lambda r: r):
    """``fused(*args)``, or None once compiled steps have failed here (the caller runs eager).

    ``state``: the positions of the tensors in ``args`` that the step updates in place. On the
    first call of a kernel signature ``eager(*args)`` runs on copies of them, and
    ``agree(args, result, eager_args, eager_result, before)`` returns None or what differs; on a
    difference (or a compile error) the state holds the eager update, one warning says why, and
    the call returns ``pick(eager_result)`` (or None after a compile error)."""
    if _STATE["failed"]:
        return None
    sig = (name, signature(args))
    if sig in _CHECKED:
        return fused(*args)
    before = {i: args[i].clone() for i in state if args[i] is not None}
    try:
        res = fused(*args)
    except Exception as exc:  # no C++ compiler or Triton, an unsupported platform, a stale cache ...
        for i, t in before.items():
            args[i].copy_(t)
        _fall_back(name, f"could not be compiled ({type(exc).__name__}: {str(exc).strip()[:300]})")
        return None
    e_args = list(args)
    for i, t in before.items():
        e_args[i] = t.clone()
    e_res = eager(*e_args)
    problem = agree(args, res, e_args, e_res, before)
    if problem is not None:
        for i in before:
            args[i].copy_(e_args[i])
        _fall_back(name, f"gave other results than eager on its first call: {problem}")
        return pick(e_res)
    _CHECKED.add(sig)
    _STATE["ran"] = True
    return res


def _fall_back(name: str, why: str) -> None:
    _STATE["failed"] = True
    _STATE["reason"] = f"the compiled {name} {why}"
    warnings.warn(f"the compiled {name} {why}; CPU capability {cpu_capability()}, torch {torch.__version__}, "
                  f"compiler cache {os.environ.get('TORCHINDUCTOR_CACHE_DIR', '(default)')}. Running eager from now "
                  f"on (sim.compile=false avoids the attempt)", RuntimeWarning, stacklevel=4)


def rounding_tolerance(dtype: torch.dtype) -> float:
    """The relative difference that reordered rounding (a fused exp, an FMA) explains."""
    return 64.0 * torch.finfo(dtype).eps


def describe_mismatch(bad: torch.Tensor, diffs: dict[str, torch.Tensor]) -> Optional[str]:
    """None when nothing is ``bad``, else how many entries differ and by how much."""
    if not bool(bad.any()):
        return None
    sizes = ", ".join(f"max |d{k}| {float(torch.nan_to_num(d, nan=float('inf')).max()):.3g}" for k, d in diffs.items())
    return f"{int(bad.sum())} of {bad.numel()} entries differ ({sizes})"
