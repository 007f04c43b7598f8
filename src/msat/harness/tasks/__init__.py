"""The stages behind the entry scripts, one module each. Only these read the whole Hydra
config; tests call them with a config from ``hydra.compose``."""

from ..tracking import git_commit
from .convert import run_convert
from .evaluate import run_evaluate
from .hydra_utils import user_errors
from .train import run_train
from .train_snn import run_evaluate_mt, run_train_snn

git_commit()  # the commit of the code this process loads, recorded by every stage it runs

__all__ = ["run_train", "run_convert", "run_evaluate", "run_train_snn", "run_evaluate_mt", "user_errors"]
