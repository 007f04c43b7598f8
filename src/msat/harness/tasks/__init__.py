"""The stages behind the entry scripts, one module each. Only these read the whole Hydra
config, and each turns it into typed settings at the door (:mod:`msat.harness.settings`);
tests call them with a config from ``hydra.compose``. Each stage reads the commit of the code
it loaded first thing (``git_commit``, cached per process)."""

from .convert import run_convert
from .evaluate import run_evaluate
from .evaluate_mt import run_evaluate_mt
from .hydra_utils import user_errors
from .train import run_train
from .train_snn import run_train_snn

__all__ = ["run_train", "run_convert", "run_evaluate", "run_train_snn", "run_evaluate_mt", "user_errors"]
