"""The named methods (``msat.METHODS``): one recipe each, and the paper's Table 2.

A named method is what ``method=<name>`` selects on the command line (``conf/method/<name>.yaml``
holds the same settings; a test checks that the two agree), what ``msat.reproduce``,
``msat.search`` and the GPU plan run, and what ``msat.METHODS[name].for_model(model)`` gives a
Python user. Adaptive rules take their hyperparameters from Table 2 for the model at hand
(:meth:`Recipe.for_model`). Every registered correction that names a ``method`` adds one
(max-norm IF neurons, the correction for its ``default_T`` steps), and every registered threshold
rule not named here adds its plain recipe (``Recipe(threshold=name)``), so a new rule is one class.
"""

from __future__ import annotations

from ..spiking.thresholds import THRESHOLD_RULES
from .corrections import CORRECTIONS
from .recipe import Recipe

SC_LAST_LAYER = dict(p=None, early_steps=16, layers="last")  # spike confidence as in the paper's ablation


def _const(frac: float = 1.0, **kw) -> Recipe:
    return Recipe(threshold="const", hparams={"frac": frac}, **kw)


METHODS: dict[str, Recipe] = {
    "const": _const(),  # max-norm IF
    "const_0.5": _const(0.5),  # the paper's Fig. 5 ablation
    "const_0.2": _const(0.2),
    "msat": Recipe(threshold="msat"),
    "dtt": Recipe(threshold="dtt"),
    "det": Recipe(threshold="det"),
    "msat_sc": Recipe(threshold="msat", sc=SC_LAST_LAYER),
    "burst": _const(max_spikes=5),  # Li & Zeng 2022; the cap is our choice
    "msat_burst": Recipe(threshold="msat", max_spikes=5),
    "ltb": _const(balancing="ltb"),  # Bu, Li, Yu 2025
    "qcfs": _const(balancing="trained"),  # Bu et al. 2022, on a net trained with QCFS activations
}
for _name, _cls in CORRECTIONS.items():
    if _cls.method:
        METHODS[_cls.method] = _const(correction=_name, correction_T=_cls.default_T)
for _name in THRESHOLD_RULES:
    METHODS.setdefault(_name, Recipe(threshold=_name))
