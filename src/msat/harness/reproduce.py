"""``python -m msat.reproduce``: the CIFAR-10 reproduction on a trained net, end to end
(by default the VGG16 of ``docs/results/cifar10``; any CIFAR-10 checkpoint of train_ann.py).

One command (``make reproduce-cifar10``) evaluates every method of the list below with
``evaluate.py`` on the same fixed subset of test images, to T steps, then gathers the runs
into ``summary.json``, the paper's figures and tables, confidence intervals and paired tests
against MSAT. ``--quick`` runs the same code path on a handful of images and steps (the test
suite does, so the command cannot rot).

Every method is one ``evaluate.py`` run (a subprocess, one thread each, ``--jobs`` at a
time): its ``results.json`` and ``predictions.pt`` (per-image correctness at the report
steps) stay under ``--runs``, and a rerun reuses finished runs.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import shlex
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Optional, Sequence

import torch

from ..analysis.stats import holm, mcnemar, verdict
from ..conversion.methods import METHODS as NAMED
from . import REPO
from .checkpoint import file_sha256, load_ann_checkpoint, load_model, safe_load
from .data import CIFAR10_NORMALIZATION, build_splits
from .evaluation import REPORT_STEPS, count_correct
from .report import interval
from .reproduce_tables import figures, net_title, tables
from .settings import recipe_overrides

DEFAULT_CHECKPOINT = "docs/results/cifar10/vgg16_w0.25.pt"
DEFAULT_DATA = "../shared/datasets/cifar10-jpeg"

def variant(base: str, *eval_overrides: str, **changes) -> list[str]:
    """The evaluate.py overrides of the named method ``base`` with its recipe changed by ``changes``
    (recipe fields), then ``eval_overrides``."""
    return recipe_overrides(NAMED[base].replace(**changes), base, NAMED[base]) + list(eval_overrides)


# label -> evaluate.py overrides. The first seven are the paper's Fig. 5 / Fig. 6 rows.
METHODS: dict[str, list[str]] = {
    **{name: variant(name) for name in ("const", "const_0.5", "const_0.2", "dtt", "det", "msat", "msat_sc", "burst")},
    # beyond the paper: membrane starting at lam/2, a 99.9th-percentile lam, and both
    **{f"{name}_v0.5": variant(name, v_init=0.5) for name in ("const", "msat")},
    **{f"{name}_p99.9": variant(name, percentile=0.999) for name in ("const", "msat")},
    **{f"{name}_v0.5_p99.9": variant(name, v_init=0.5, percentile=0.999) for name in ("const", "msat")},
    # the comparison methods on the same ReLU ANN: every registered correction's method (SNN Calibration
    # and RTS, the paper's Tables 3 and 4, and any added since), and LTB
    **{name: variant(name) for name, recipe in NAMED.items() if recipe.correction},
    "ltb": variant("ltb"),
    # LTB's delayed readout, and MSAT on LTB's thresholds (membrane at lam/2, as LTB), with and without it
    "ltb_delayed": variant("ltb", "eval.readout_start=auto"),
    "msat_ltb": variant("msat", balancing="ltb"),
    "msat_ltb_delayed": variant("msat", "eval.readout_start=auto", balancing="ltb"),
}

QCFS = {"activation": "qcfs", "levels": 4, "lam_init": 2.0}  # docs/results/cifar10/train_qcfs.sh
PRIMARY = ("const", "const_0.5", "const_0.2", "dtt", "det", "msat", "msat_sc")  # always on --n-images
SIN_LABELS = ("const", "msat", "msat_sc")  # SIN over the test set: Fig. 2 and Table 7


def check_data(root: Path) -> None:
    """The JPEG tree root/{train,test}/<class>/, or an error that says where it is expected."""
    missing = [s for s in ("train", "test") if not (root / s).is_dir()]
    if missing:
        raise SystemExit(
            f"CIFAR-10 JPEG folder not found: expected {root}/train/<class>/*.jpg and {root}/test/<class>/*.jpg "
            f"(missing: {', '.join(missing)}). Point at it with DATA=/path/to/cifar10-jpeg (make reproduce-cifar10) "
            "or --data /path/to/cifar10-jpeg (python -m msat.reproduce)"
        )


def images_for(args, label: str) -> int:
    """--n-images for the Fig. 5 / Fig. 6 rows; the others may run on a smaller subset
    (--other-images), which is a subset of the larger one (the same seeded permutation)."""
    if label in PRIMARY or not args.other_images:
        return args.n_images
    return min(args.n_images, args.other_images)


def subset_positions(n_total: int, n_small: int, n_large: int, seed: int = 0) -> list[int]:
    """Where the images of the n_small subset sit in the n_large one (data.subset's order)."""
    perm = torch.randperm(n_total, generator=torch.Generator().manual_seed(seed))
    small = perm[:min(n_small, n_total)].sort().values.tolist()
    large = perm[:min(n_large, n_total)].sort().values.tolist()
    where = {v: i for i, v in enumerate(large)}
    return [where[v] for v in small]


def qcfs_methods(path: Optional[str]) -> dict[str, list[str]]:
    """``qcfs``: the QCFS net of ``--qcfs-checkpoint`` (same layout and width), converted with
    its trained lam and the membrane at lam/2 (method=qcfs)."""
    if not path:
        return {}
    return {"qcfs": ["method=qcfs", *(f"model.{k}={v}" for k, v in QCFS.items()),
                     f"calibration.checkpoint={Path(path).resolve()}"]}


def run_overrides(args, spec: dict, label: str) -> list[str]:
    common = [
        "dataset=cifar10", f"dataset.root={args.data}", "dataset.format=imagefolder", "dataset.num_workers=0",
        f"model={spec['name']}", f"model.width={spec['width']}", f"calibration.checkpoint={args.checkpoint}",
        f"paths.root={args.runs}", f"eval.T={args.T}", f"eval.max_samples={images_for(args, label)}", "eval.subset_seed=0",
        "eval.save_predictions=true", f"eval.sin={str(label in SIN_LABELS).lower()}", "eval.plots=true",
        f"sin.enabled={str(label == 'msat_sc').lower()}", f"sin.T={args.T}", "progress=false",
        f"hydra.run.dir={args.runs}/eval/{label}", f"+tags=[reproduce_cifar10,{label}]",
    ]
    if args.quick:
        # one calibration batch of 128 (calibration_advanced needs 128 images), few of everything else
        common += ["calibration.num_batches=1", "calibration.batch_size=128", "calibration.passes=2",
                   f"sin.batch_size={args.n_images}", f"eval.batch_size={args.n_images}",
                   "dataset.max_train_samples=256", "method.sc.early_steps=2"]
    return _override(common, **{k.replace(".", "__"): v for k, v in (o.split("=", 1) for o in METHODS[label])})


def finished_run(d: Path, label: str, predictions: bool = True, ann_sha256: Optional[str] = None) -> Optional[dict]:
    """The results of the finished run in ``d`` if it ran ``label``'s settings (its recorded
    command holds every override of ``METHODS[label]``; paths compared by file name) on the
    ANN checkpoint with this sha256 (when given), else None: a run left by another definition
    of the label (e.g. an earlier search's winner) or by another net is not reused."""
    if not ((d / "results.json").exists() and (not predictions or (d / "predictions.pt").exists())):
        return None
    res = json.loads((d / "results.json").read_text())
    if ann_sha256 is not None and res.get("ann_sha256") != ann_sha256:
        return None
    tokens = {_norm(t) for t in shlex.split(res.get("command", ""))[2:]}
    return res if all(_norm(o) in tokens for o in METHODS.get(label, [])) else None


@functools.cache
def _sha(path: str) -> str:
    return file_sha256(path)


def ann_sha(args, label: str) -> str:
    """The sha256 of the ANN checkpoint ``label`` converts: its own ``calibration.checkpoint``
    override (the QCFS net), else ``--checkpoint``."""
    own = [o.split("=", 1)[1] for o in METHODS.get(label, []) if o.startswith("calibration.checkpoint=")]
    return _sha(own[-1] if own else args.checkpoint)


def _norm(override: str) -> str:
    """An override with a path value compared by the file's name (checkouts differ in where they live)."""
    key, sep, value = override.partition("=")
    return f"{key}={Path(value).name}" if sep and "/" in value else override


def run_one(args, spec: dict, label: str) -> tuple[str, float, Optional[str]]:
    out = Path(args.runs) / "eval" / label
    if not args.force and finished_run(out, label, ann_sha256=ann_sha(args, label)) is not None:
        return label, 0.0, None
    out.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, str(REPO / "evaluate.py"), *run_overrides(args, spec, label)]
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "MKL_NUM_THREADS": str(args.threads)}
    env.setdefault("WANDB_MODE", "disabled" if args.quick else "offline")
    t0 = time.time()
    with open(out / "evaluate.log", "w") as log:
        log.write(" ".join(cmd) + "\n")
        log.flush()
        rc = subprocess.call(cmd, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
    err = None if rc == 0 else f"exit status {rc}; see {out / 'evaluate.log'}"
    return label, time.time() - t0, err


def cifar10_splits(data: Path, test_limit: Optional[int] = None, train_limit: Optional[int] = None):
    """The JPEG tree as evaluate.py reads it (conf/dataset/cifar10.yaml, test transforms)."""
    cfg = {"name": "cifar10", "root": str(data), "format": "imagefolder", "image_size": 32, "num_classes": 10,
           "in_channels": 3, "mean": list(CIFAR10_NORMALIZATION["mean"]),
           "std": list(CIFAR10_NORMALIZATION["std"]),
           "augment": {"crop_padding": 4, "flip": True, "autoaugment": False, "cutout": 0}, "download": False,
           "max_train_samples": train_limit, "max_test_samples": test_limit, "num_workers": 0}
    return build_splits(cfg)


def ann_full_accuracy(checkpoint: Path, data: Path, limit: Optional[int]) -> tuple[float, int]:
    """The ANN's accuracy on every JPEG test image (``limit`` of them in quick mode)."""
    splits = cifar10_splits(data, test_limit=limit, train_limit=16)
    model = load_model(checkpoint)
    sums = count_correct(model, torch.utils.data.DataLoader(splits.test, batch_size=500), torch.device("cpu"))
    return 100.0 * float(sums[0]) / float(sums[2]), int(sums[2])


def search_methods(path: Optional[str]) -> dict[str, list[str]]:
    """``search_T<t>``: the best candidate at t of a ``python -m msat.search`` run (one label
    for the steps that share a winner)."""
    if not path:
        return {}
    found = json.loads(Path(path).read_text())
    steps: dict[tuple, list[str]] = {}  # one run per distinct winner: search_T16_T32 when one candidate wins both
    for t, b in found["best"].items():
        steps.setdefault(tuple(b["overrides"]), []).append(t)
    return {"search_" + "_".join(f"T{t}" for t in ts): list(o) for o, ts in steps.items()}


def gather(runs: Path, labels: Sequence[str], args=None) -> dict[str, dict]:
    """The finished runs of ``labels`` (with ``args``: only those made from the ANN they convert)."""
    found = {}
    for label in labels:
        d = runs / "eval" / label
        res = finished_run(d, label, ann_sha256=None if args is None else ann_sha(args, label))
        if res is None and (d / "results.json").exists():
            print(f"[reproduce] {label}: the run in {d} has other settings than {METHODS.get(label)} or another "
                  "ANN checkpoint; not gathered", file=sys.stderr)
        if res is not None:
            pred = safe_load(d / "predictions.pt", "predictions file")
            found[label] = {"res": res, "steps": list(pred["steps"]), "correct": pred["correct"]}
    return found


def paired_tests(found: dict[str, dict], n_total: int, ref: str = "msat") -> dict:
    """McNemar's exact test of every method against ``ref`` at every report step, on the
    images both saw, with Holm's adjustment over the whole family (every method and step)."""
    if ref not in found:
        return {}
    tests = {}
    base = found[ref]
    nb = int(base["res"]["n_samples"])
    for label, r in found.items():
        if label == ref:
            continue
        n = int(r["res"]["n_samples"])
        a, b = r["correct"], base["correct"]
        if n < nb:
            b = b[subset_positions(n_total, n, nb)]
        elif n > nb:
            a = a[subset_positions(n_total, nb, n)]
        tests[label] = {}
        for j, t in enumerate(r["steps"]):
            if t in base["steps"]:
                jb = base["steps"].index(t)
                tests[label][str(t)] = mcnemar(a[:, j], b[:, jb])
    flat = [(lab, t) for lab in tests for t in tests[lab]]
    for (lab, t), p_adj in zip(flat, holm([tests[lab][t]["p"] for lab, t in flat])):
        tests[lab][t]["p_holm"] = p_adj
        tests[lab][t]["verdict"] = verdict({**tests[lab][t], "p": p_adj}, lab, ref)
    return tests


def summarize_runs(args, spec: dict, ckpt: dict, found: dict[str, dict], ann_acc: float, n_full: int) -> dict:
    curves = {}
    for label, r in found.items():
        res, n = r["res"], r["res"]["n_samples"]
        ci = {str(t): list(interval(res, t)) for t in r["steps"]}
        curves[label] = {"acc": res["acc"], "n_images": n, "ci95": ci}
    try:
        ckpt_rel = str(Path(args.checkpoint).resolve().relative_to(REPO))
    except ValueError:
        ckpt_rel = str(args.checkpoint)
    any_res = next(iter(found.values()))["res"] if found else {}
    return {
        "ann": {"checkpoint": ckpt_rel, "model": spec["name"], "width": spec["width"],
                "epochs": int(ckpt.get("epoch", 0)) + int(ckpt.get("init_epochs", 0)),
                "ann_acc_full": ann_acc, "normalization": CIFAR10_NORMALIZATION},
        "curves": curves,
        "hardware": any_res.get("hardware", ""),
        "commit": any_res.get("commit", ""),
    }


LEVERS = ("const_v0.5", "msat_v0.5", "const_p99.9", "msat_p99.9", "const_v0.5_p99.9", "msat_v0.5_p99.9")


def best_lever(found: dict, t: int = 32) -> Optional[str]:
    """The beyond-the-paper lever with the highest test accuracy at step t (None: none ran)."""
    runs = [(r["res"]["acc"][min(t, len(r["res"]["acc"])) - 1], lab) for lab, r in found.items() if lab in LEVERS]
    return max(runs)[1] if runs else None


def references(found: dict) -> dict[str, str]:
    """The references of the paired tests, each with how it was chosen: MSAT (the paper's
    method); the best beyond-the-paper lever (chosen on the test subset at T = 32, so its
    tests say how the others compare with it, not whether it wins); the search's winner at
    T = 32 (chosen on held-out training images, never on test images)."""
    refs = {"msat": "MSAT, the paper's method"}
    lever = best_lever(found)
    if lever:
        refs[lever] = "the best beyond-the-paper lever at T = 32, chosen on these test images"
    searched = [lab for lab in found if lab.startswith("search_")]
    winner = next((lab for lab in searched if "T32" in lab.split("_")), searched[0] if searched else None)
    if winner:
        at = "T = 32" if "T32" in winner.split("_") else "its steps"
        refs[winner] = f"the fewest-steps search's winner at {at}, chosen on held-out training images"
    return {lab: why for lab, why in refs.items() if lab in found}


def _override(overrides: list[str], **new: Any) -> list[str]:
    """``overrides`` with the keys of ``new`` (dots written as __) set to the new values."""
    keys = {k.replace("__", "."): v for k, v in new.items()}
    kept = [o for o in overrides if o.split("=", 1)[0].lstrip("+") not in keys]
    return kept + [f"{k}={v}" for k, v in keys.items()]


def diagnostics(args, spec: dict, found: dict, out: Path) -> dict:
    """The per-layer error split (msat.layer_errors through ``evaluate.py eval.diagnostics=true``)
    of const, MSAT, MSAT+SC and the best lever on the first ``--diag-images`` images of the
    test subset (nested in it), with the conversion of their main runs."""
    from .plots import plot_curves, plot_error_maps

    labels = [lab for lab in ("const", "msat", "msat_sc", best_lever(found)) if lab and lab in found]
    res = {}
    for label in labels:
        d = Path(args.runs) / "diag" / label
        if args.force or finished_run(d, label, predictions=False, ann_sha256=ann_sha(args, label)) is None:
            d.mkdir(parents=True, exist_ok=True)
            o = _override(run_overrides(args, spec, label), eval__diagnostics="true", eval__save_predictions="false",
                          eval__sin="false", eval__max_samples=min(args.diag_images, args.n_images),
                          eval__plots="false", hydra__run__dir=str(d))
            o = [x for x in o if not x.startswith("+tags=")] + [f"+tags=[reproduce_cifar10,diagnostics,{label}]"]
            cmd = [sys.executable, str(REPO / "evaluate.py"), *o]
            env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "MKL_NUM_THREADS": str(args.threads)}
            env.setdefault("WANDB_MODE", "disabled")
            with open(d / "evaluate.log", "w") as log:
                log.write(" ".join(cmd) + "\n")
                log.flush()
                if subprocess.call(cmd, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT) != 0:
                    print(f"[reproduce] diagnostics of {label} FAILED; see {d / 'evaluate.log'}", file=sys.stderr)
                    continue
        r = json.loads((d / "results.json").read_text())
        diag = r["diagnostics"]
        plot_error_maps(out / f"diagnostics_{label}", diag, f"{net_title(spec['name'], spec['width'])}, {label}")
        res[label] = {**diag, "n_images": r["n_samples"], "acc": r["acc"]}
    if res:
        for key in ("rel_l2", "qc", "sin"):
            plot_curves(out / f"layer_errors_last_{key}.png", {lab: d[key][-1] for lab, d in res.items()},
                        f"last spiking layer: {key} (first {next(iter(res.values()))['n_images']} test images)",
                        ylabel=f"{key} (/ ||a||)", logx=True)
    return res


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m msat.reproduce", description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", default=DEFAULT_CHECKPOINT, help="a train_ann.py CIFAR-10 checkpoint (VGG16, ResNet-20, ...)")
    p.add_argument("--data", default=os.environ.get("MSAT_CIFAR10_JPEG", DEFAULT_DATA), help="root of {train,test}/<class>/")
    p.add_argument("--out", default="docs/results/cifar10", help="summary.json, tables and figures")
    p.add_argument("--runs", default="outputs/reproduce_cifar10", help="the evaluate.py runs")
    p.add_argument("--n-images", type=int, default=2000, help="fixed test subset (eval.subset_seed=0)")
    p.add_argument("--other-images", type=int, default=None,
                   help="images for the methods beyond Fig. 5/6 (a subset of --n-images; default: the same)")
    p.add_argument("--T", type=int, default=256)
    p.add_argument("--methods", default="all",
                   help="comma-separated labels (default: all; 'search': the search's winners): " + ", ".join(METHODS))
    p.add_argument("--jobs", type=int, default=2, help="evaluate.py runs at a time")
    p.add_argument("--threads", type=int, default=1, help="threads per run")
    p.add_argument("--quick", action="store_true", help="the same code path on 8 images and 8 steps")
    p.add_argument("--force", action="store_true", help="rerun finished runs")
    p.add_argument("--search", default=None, help="search.json of python -m msat.search: evaluate its best candidates")
    p.add_argument("--qcfs-checkpoint", default=None, help="a QCFS VGG16 of the same width (train_qcfs.sh): label qcfs")
    p.add_argument("--no-diagnostics", action="store_true",
                   help="skip the per-layer error split (const, MSAT, MSAT+SC, the best lever)")
    p.add_argument("--diag-images", type=int, default=256, help="test images of the error split (a nested subset)")
    p.add_argument("--skip-runs", action="store_true", help="only gather the finished runs")
    return p


def _labels(args) -> list[str]:
    """The labels to run: all, or those of --methods ('search': the search's winners)."""
    METHODS.update(search_methods(args.search))
    METHODS.update(qcfs_methods(args.qcfs_checkpoint))
    labels = list(METHODS) if args.methods == "all" else [m.strip() for m in args.methods.split(",") if m.strip()]
    labels = [x for m in labels for x in ([k for k in METHODS if k.startswith("search_")] if m == "search" else [m])]
    unknown = [m for m in labels if m not in METHODS]
    if unknown:
        raise SystemExit(f"unknown method label(s) {unknown}; choose from {', '.join(METHODS)}")
    return labels


def main(argv: Optional[list[str]] = None) -> int:
    args = _parser().parse_args(argv)
    if args.quick:
        args.n_images, args.T = min(args.n_images, 8), min(args.T, 8)
    labels = _labels(args)
    if args.n_images < 1 or args.T < 1:
        raise SystemExit(f"--n-images and --T must be >= 1 (got {args.n_images}, {args.T})")
    args.data = str(Path(args.data).resolve())
    args.checkpoint = str(Path(args.checkpoint).resolve())
    args.runs = str(Path(args.runs).resolve())
    check_data(Path(args.data))
    ckpt = load_ann_checkpoint(args.checkpoint, None, kind="ann")  # a clear error for a missing or foreign file
    spec = ckpt["model_spec"]
    if spec["num_classes"] != 10 or spec["in_channels"] != 3:
        raise SystemExit(f"{args.checkpoint} is a {spec['num_classes']}-class, {spec['in_channels']}-channel model, "
                         "not a CIFAR-10 one")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if not args.skip_runs:
        t0 = time.time()
        with ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
            for label, secs, err in pool.map(lambda lab: run_one(args, spec, lab), labels):
                status = f"FAILED ({err})" if err else ("reused" if secs == 0 else f"{secs:.0f} s")
                print(f"[reproduce] {label:22s} {status}", flush=True)
        print(f"[reproduce] runs took {time.time() - t0:.0f} s", flush=True)
    found = gather(Path(args.runs), labels, args)
    missing = [lab for lab in labels if lab not in found]
    ann_acc, n_full = ann_full_accuracy(Path(args.checkpoint), Path(args.data), args.n_images if args.quick else None)
    summary = summarize_runs(args, spec, ckpt, found, ann_acc, n_full)
    steps = [t for t in REPORT_STEPS if t <= args.T] or [args.T]
    n_test = len(cifar10_splits(Path(args.data), train_limit=16).test)
    refs = references(found)
    tests = {ref: paired_tests(found, n_test, ref) for ref in refs}
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    details = {"n_test_images_ann": n_full, "subset_seed": 0, "T": args.T, "paired_tests_vs_msat": tests.get("msat", {}),
               "paired_tests": {ref: {"why": refs[ref], "tests": t} for ref, t in tests.items()},
               "methods": {lab: METHODS[lab] for lab in found},
               "per_method": {lab: {k: r["res"].get(k) for k in ("ann_acc", "firing_rate", "firing_rate_mean", "energy",
                                                                 "sin", "readout_start", "compiled", "compile", "command",
                                                                 "artifact", "commit")}
                              for lab, r in found.items()}}
    if args.qcfs_checkpoint:
        details["qcfs"] = {"checkpoint": args.qcfs_checkpoint, "ann_acc_full": ann_full_accuracy(
            Path(args.qcfs_checkpoint), Path(args.data), args.n_images if args.quick else None)[0], **QCFS}
    if not args.no_diagnostics:
        details["diagnostics"] = diagnostics(args, spec, found, out)
    (out / "details.json").write_text(json.dumps(details, indent=1))
    (out / "tables.md").write_text(tables(summary, found, tests, steps, refs))
    figures(out, summary, found)
    print(f"[reproduce] ANN {ann_acc:.2f}% on {n_full} test images; {len(found)} methods gathered into {out}/", flush=True)
    if missing:
        print(f"[reproduce] missing or failed: {', '.join(missing)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
