"""Kept for scripts written against earlier versions: the stages now live in :mod:`msat.tasks`."""

from .tasks import run_convert, run_evaluate, run_evaluate_mt, run_train, run_train_snn, user_errors

__all__ = ["run_train", "run_convert", "run_evaluate", "run_train_snn", "run_evaluate_mt", "user_errors"]
