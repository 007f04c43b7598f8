"""The experiment harness: data, checkpoints, training, evaluation, the Hydra tasks, reports, the
reproduction and search drivers, W&B tracking and plots, the GPU plan."""

from pathlib import Path

REPO = Path(__file__).resolve().parents[3]  # the checkout: entry scripts, conf/, docs/
