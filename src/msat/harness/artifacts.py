"""What runs write besides results.json, and how it is read back: the SIN record of a conversion
artifact, the per-image predictions of an evaluation (for paired tests), and a run folder's nets."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence

import torch

from ..conversion.pipeline import Converter
from ..conversion.recipe import Recipe
from ..spiking.monitors import SINMonitor
from .checkpoint import CheckpointError, atomic_save, load_artifact, load_model, safe_load
from .data import build_splits, subset


# ----------------------------------------------------------------- stored statistics (convert.py)
def sin_record(monitors: list[SINMonitor], T: int, batch_size: int, threshold: str) -> dict:
    """The SIN statistics a conversion artifact stores (enough to resolve SC later)."""
    return {
        "T": int(T), "batch_size": int(batch_size), "threshold": threshold,
        "sin_count": torch.stack([m.sin_count.cpu() for m in monitors]),
        "fired_count": torch.stack([m.fired_count.cpu() for m in monitors]),
        "neurons": torch.tensor([m.neurons for m in monitors], dtype=torch.float64),
        "ans": torch.tensor([m.ans() for m in monitors], dtype=torch.float64),
    }


def sin_summary(sin: Mapping[str, Any], sc: Optional[dict]) -> dict:
    neurons = sin["neurons"].unsqueeze(1)
    ratio = (sin["sin_count"] / neurons).tolist()
    fired = sin["fired_count"]
    among = torch.where(fired > 0, sin["sin_count"] / fired.clamp(min=1), torch.zeros(())).tolist()
    out = {"T": sin["T"], "ratio": ratio, "ratio_among_fired": among, "ans": sin["ans"].tolist()}
    if sc is not None:
        out.update(early_steps=sc["early_steps"], p_all_layers=sc["p_all_layers"], r_definition=sc["r_definition"])
    return out


def save_predictions(path: Path, steps: Sequence[int], correct, subset_seed: int, n_samples: int,
                     exits: Optional[dict] = None) -> None:
    """Write ``predictions.pt`` beside a run's results.json: each image's correctness ([n, len(steps)]
    booleans) at ``steps``, read back by :func:`load_predictions` for the paired tests; with early exit,
    each rule's per-image prediction, exit step and correctness (``exits``)."""
    record = {"format_version": 1, "kind": "predictions", "steps": list(steps), "correct": correct.bool(),
              "subset_seed": int(subset_seed), "n_samples": n_samples}
    if exits:
        record["exits"] = exits
    atomic_save(record, path)


def load_predictions(res: dict) -> Optional[dict]:
    """The per-image results saved beside ``res`` (``eval.save_predictions=true``), or None."""
    path = Path(res.get("_path", "")).with_name("predictions.pt")
    if not res.get("_path") or not path.exists():
        return None
    try:
        pred = safe_load(path, "predictions file")
    except CheckpointError as exc:
        print(f"warning: {exc}; its run gets no paired test", file=sys.stderr)
        return None
    correct = pred.get("correct")
    if correct is None or correct.dim() != 2 or correct.shape[0] != res.get("n_samples"):
        print(f"warning: {path} does not match its results.json; its run gets no paired test", file=sys.stderr)
        return None
    return {"steps": [int(t) for t in pred["steps"]], "correct": correct.bool()}


# ----------------------------------------------------------------- a finished run's nets
def restore_run(folder: str | Path, dtype: Optional[torch.dtype] = None) -> tuple[dict, torch.nn.Module, Any]:
    """An ``evaluate.py`` run folder's results.json and its (prepared ANN, SNN), rebuilt on the CPU
    from the ANN checkpoint and the conversion artifact the results name, in ``dtype`` (None: the
    checkpoint's, float32), for scripts that rerun or time a finished run."""
    res = json.loads((Path(folder) / "results.json").read_text())
    art = load_artifact(res["artifact"], res["ann_sha256"])
    ann, snn = Converter(Recipe.from_dict(art["recipe"])).restore(load_model(res["ann_checkpoint"]), art, dtype)
    return res, ann, snn


def run_test_images(res: Mapping[str, Any], n: Optional[int] = None, root: Optional[str] = None):
    """The first ``n`` images (all when None) of a run's test subset, as ``(x, y)`` tensors, rebuilt
    from the dataset config its results.json records (runs from before it was recorded raise a
    :class:`ValueError`); ``root`` replaces the recorded dataset root."""
    cfg = res.get("dataset_config")
    if cfg is None:
        raise ValueError("this results.json records no dataset_config (a run from before it was recorded): "
                         "its test images cannot be rebuilt from it")
    cfg = {**cfg, **({"root": root} if root is not None else {})}
    test = subset(build_splits(cfg, seed=int(res.get("seed", 0))).test, res["n_samples"], seed=res["subset_seed"])
    k = len(test) if n is None else min(int(n), len(test))
    xs, ys = zip(*(test[i] for i in range(k)))
    return torch.stack(xs), torch.tensor(ys)
