"""``evaluate.py eval.exit.rule=...``: the early-exit evaluation (:mod:`msat.harness.exit_eval`) of
the converted SNN that ``evaluate.py`` sets up. A rerun with the same settings continues where an
interrupted one stopped (every batch of every stage is saved under the checkpoint folder)."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any, Optional

import torch
from omegaconf import DictConfig

from ..checkpoint import FORMAT_VERSION, atomic_save, safe_load
from ..evaluation import check_steps, fingerprint, summarize_curve
from ..exit_eval import exit_record, fit_rules, holdout_images, record, run_adaptive, summarize_rule
from ..settings import EvalSettings, plain

log = logging.getLogger(__name__)


class StagedPartial:
    """The partial results of an early-exit evaluation, one entry per stage, saved after every batch."""

    def __init__(self, path: Optional[Path], key: str):
        self.path, self.key, self.stages = path, key, {}
        if path is not None and path.exists():
            saved = safe_load(path, "partial evaluation")
            if saved.get("kind") == "exit_partial" and saved.get("run_key") == key:
                self.stages = dict(saved["stages"])
                log.info("continuing the early-exit evaluation in %s (%s done or begun)", path, ", ".join(self.stages))

    def get(self, stage: str) -> Optional[dict]:
        return self.stages.get(stage)

    def saver(self, stage: str):
        def save(rec: dict) -> None:
            self.stages[stage] = rec
            if self.path is not None:
                atomic_save({"format_version": FORMAT_VERSION, "kind": "exit_partial", "run_key": self.key,
                             "stages": self.stages}, self.path)

        return save

    def finish(self) -> None:
        if self.path is not None and self.path.exists():
            self.path.unlink()


def exit_stage(cfg: DictConfig, info, s: EvalSettings, run) -> tuple[dict, torch.Tensor, dict]:
    """(results, per-image correctness at the report steps, per-rule per-image exits)."""
    ex, d = s.exit, run.readout_start
    if s.sc and len(run.sc["seeds"]) > 1:
        log.info("early exit runs with the first spike-confidence seed (%d) only", run.sc["seeds"][0])
    sc_seed = run.sc["seeds"][0] if run.sc else 0
    if run.sc:
        run.snn.configure_sc(run.sc["p"], run.sc["early_steps"], run.sc["layers"], run.sc["reset"], sc_seed)
    key = fingerprint({"ann": run.sha, "artifact": run.art["_path"], "method": plain(cfg.method), "exit": plain(cfg.eval.exit),
                       "T_max": ex.T_max, "bs": s.batch_size, "max_samples": s.max_samples, "subset_seed": s.subset_seed,
                       "dtype": str(s.dtype), "readout_start": d, "dataset": plain(cfg.dataset)})
    partial = StagedPartial(Path(cfg.paths.ckpt_dir) / "eval_partial" / f"exit_{key}_rank{info.rank}.pt"
                            if s.resume else None, key)
    common = dict(batch_size=s.batch_size, device=run.device, dtype=s.dtype, info=info,
                  num_workers=int(cfg.dataset.num_workers), seed=sc_seed)
    held_set = holdout_images(run.splits, s.convert.batch_size, s.convert.seed, s.recipe.num_batches, ex.holdout)
    held = record(run.snn, run.ann, held_set, ex.T_max, d, saved=partial.get("held"), save=partial.saver("held"),
                  **common)
    fitted = fit_rules(held, ex)
    t0 = time.thread_time()
    test = record(run.snn, run.ann, run.test, ex.T_max, d, saved=partial.get("test"), save=partial.saver("test"),
                  **common)
    fixed_seconds = time.thread_time() - t0
    per_rule, exits_per_image = {}, {}
    for name in ex.rules:
        live = run_adaptive(run.snn, run.test, fitted[name]["rule"], ex, d, saved=partial.get(f"live_{name}"),
                            save=partial.saver(f"live_{name}"), **common)
        per_rule[name] = summarize_rule(name, fitted[name], test, live, ex)
        exits_per_image[name] = {"pred": live["pred"].cpu(), "steps": live["steps"].cpu(),
                                 "correct": (live["pred"] == test["y"]).cpu()}
        r = per_rule[name]
        log.info("early exit, %s: %.2f%% at a mean of %.2f steps (median %.0f, 90th percentile %.0f) on %d images; "
                 "fixed T=%d: %.2f%% (McNemar p=%.3g)", name, r["accuracy"], r["mean_steps"], r["median_steps"],
                 r["p90_steps"], r["n"], r["vs_fixed"]["T"], r["vs_fixed"]["fixed_acc"], r["vs_fixed"]["p"])
    partial.finish()
    return _results(s, test, per_rule, fixed_seconds), _per_image(s, test), exits_per_image


def _results(s: EvalSettings, test: dict, per_rule: dict, fixed_seconds: float) -> dict:
    """The fixed run's curve (to T_max) in the usual fields, and ``exit``."""
    y, T = test["y"], s.exit.T_max
    correct = (test["S"][:T].argmax(-1) == y).double().sum(1).cpu()
    ann_acc = 100.0 * float(test["ann_right"].double().mean())
    res: dict[str, Any] = summarize_curve(correct, float(len(y)), check_steps(s.steps, T, clip=True), s.tol, ann_acc)
    res["exit"] = exit_record(test, per_rule, s.exit, fixed_seconds)
    return res


def _per_image(s: EvalSettings, test: dict) -> torch.Tensor:
    """Each image's correctness at the report steps (for paired tests with other runs)."""
    steps = check_steps(s.steps, s.exit.T_max, clip=True)
    return (test["S"][[t - 1 for t in steps]].argmax(-1) == test["y"]).T.double().cpu()
