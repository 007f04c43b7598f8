"""The reproduction harness: Hydra multirun over experiments, the report, SC and quirk options."""

import json
import os
import subprocess
import sys

import pytest
import torch

from conftest import ROOT, compose
from msat.harness.report import main as report_main
from msat.harness.tasks import run_convert, run_evaluate
from tables import markdown_table, text_table

TINY = ["experiment=demo", "eval.max_samples=20", "eval.checkpoints=[4]", "sin.T=8",
        "calibration.num_batches=2", "eval.plots=false", "progress=false"]


def test_multirun_over_experiments_survives_a_failing_job(ckpt_root):
    """Three experiments x two checkpoints: the jobs whose checkpoint is missing fail after their
    W&B run started; Hydra goes on, and every W&B run is finished (failed ones with exit code 1)."""
    sweep = ckpt_root / "mr"
    tiny = ["dataset=digits", "dataset.image_size=16", "model.width=0.25", *TINY[1:]]  # the demo's net, fig5 configs
    args = ["-m", "experiment=glob(fig5_const*)", *tiny, "eval.T=8", "calibration.checkpoint=last.pt,nothere.pt",
            f"paths.root={ckpt_root}", f"hydra.sweep.dir={sweep}"]
    env = dict(os.environ, WANDB_MODE="offline", WANDB_SILENT="true", WANDB_DIR=str(ckpt_root))
    r = subprocess.run([sys.executable, str(ROOT / "evaluate.py"), *args], capture_output=True, text=True,
                       cwd=ckpt_root, env=env, timeout=900)
    assert r.returncode == 1, r.stderr[-3000:]  # Hydra reports the failed jobs at the end
    assert "ANN checkpoint not found" in r.stderr
    results = sorted(sweep.rglob("results.json"))
    assert len(results) == 3
    assert sorted(json.loads(p.read_text())["method"] for p in results) == ["const", "const_0.2", "const_0.5"]
    logs = sorted(sweep.rglob("offline-run-*/logs/debug.log"))
    assert len(logs) == 6
    texts = [p.read_text() for p in logs]
    assert all("finishing run" in t for t in texts)
    assert sum("got exitcode: 1" in t for t in texts) == 3

    # the report over the sweep: one markdown table, one overlaid PNG for the fig5 group
    assert report_main([str(sweep)]) == 0
    md = (sweep / "report.md").read_text()
    fig5 = md.split("## Fig. 5")[1].split("\n## ")[0]
    runs = {r["run"] for r in markdown_table(fig5, "run", "dataset / model", "metric").rows}
    assert runs == {"const (fig5_const)", "const_0.2 (fig5_const_0.2)", "const_0.5 (fig5_const_0.5)"}
    assert (sweep / "report_plots" / "fig5_digits_vgg16.png").exists()
    # every run saved its per-image results (the default), so the report pairs them: no msat run
    # here, so the first run is the reference and the other two are tested against it at T=4
    assert len(list(sweep.rglob("predictions.pt"))) == 3
    paired = markdown_table(md, "run A", "run B", "T")
    assert len(paired.rows) == 2 and paired.column("T") == ["4", "4"]
    assert len({r["run B"] for r in paired.rows}) == 1 and "95% Wilson intervals" in md


def test_bad_config_fails_before_any_run_or_file(ckpt_root):
    """A setting that cannot work (E=6 > T=4) is refused before a checkpoint is read or a W&B run starts."""
    env = dict(os.environ, WANDB_MODE="offline", WANDB_SILENT="true", WANDB_DIR=str(ckpt_root))
    r = subprocess.run([sys.executable, str(ROOT / "evaluate.py"), *TINY, "eval.T=4", "method=msat_sc",
                        "method.sc.early_steps=6", "calibration.checkpoint=nothere.pt", f"paths.root={ckpt_root}",
                        f"hydra.run.dir={ckpt_root}/run"], capture_output=True, text=True, cwd=ckpt_root, env=env,
                       timeout=600)
    assert r.returncode == 2, r.stderr[-2000:]
    assert "spike confidence E=6 is larger than T=4" in r.stderr and "not found" not in r.stderr
    assert not list(ckpt_root.rglob("offline-run-*"))


def _fake_result(path, **kw):
    res = dict(method="msat_sc", experiment="table4_vgg16_cifar10", dataset="cifar10", model="vgg16", width=1.0,
               ann_acc=95.0, acc=[float(t) for t in range(1, 65)], best_acc=64.0, best_step=64, step_within_tol=None,
               tol=0.1, T=64, command="python evaluate.py experiment=table4_vgg16_cifar10", commit="abc123def456789",
               hardware="Test CPU, 2 cores, torch 2.14.1", tags=["table4"], sc={"p": [0.9]})
    res.update(kw)
    path.mkdir(parents=True)
    (path / "results.json").write_text(json.dumps(res))


def test_report_on_two_results(tmp_path, capsys):
    _fake_result(tmp_path / "a", paper={"table": "Table 4", "ann": 95.45, "acc_at": {"16": 73.42, "32": 93.87}})
    _fake_result(tmp_path / "b", experiment="table3_vgg16_cifar10", method="msat_sc", ann_acc=95.5, best_acc=95.2,
                 best_step=60, step_within_tol=None, tags=["table3"],
                 paper={"table": "Table 3", "ann": 95.45, "snn": 95.45, "loss": 0.0, "step": 112})
    assert report_main([str(tmp_path), "--no-plots"]) == 0
    md = (tmp_path / "report.md").read_text()
    assert "## Table 3" in md and "## Table 4" in md
    head = ("run", "dataset / model", "metric")
    table4 = markdown_table(md.split("## Table 4")[1], *head)
    row16 = table4.where(metric="acc T=16")[0]
    assert (row16["ours"], row16["paper"], row16["diff"]) == ("16.00", "73.42", "-57.42")
    assert row16["command"] == "`python evaluate.py experiment=table4_vgg16_cifar10`"
    assert row16["commit"] == "abc123def456" and row16["hardware"] == "Test CPU, 2 cores"
    table3 = markdown_table(md.split("## Table 3")[1].split("## Table 4")[0], *head)
    ann = table3.where(metric="ANN acc")[0]
    assert (ann["ours"], ann["paper"], ann["diff"]) == ("95.50", "95.45", "0.05")
    step = next(r for r in table3.rows if r["metric"].startswith("Step (first t"))
    assert (step["ours"], step["paper"], step["diff"]) == ("-", "112", "-")  # never within tol in 64 steps
    # the side-by-side curves: the report steps up to the runs' T = 64
    assert report_main([str(tmp_path), "--curves"]) == 0
    curves = text_table(capsys.readouterr().out, "run", "dataset / model", "ANN")
    assert [h for h in curves.head if h.startswith("T=")] == ["T=16", "T=32", "T=64"]


def test_report_compares_runs_by_layer_errors(tmp_path):
    from msat.harness.report import error_table

    T = 64
    # layer 0 stays below 0.5; layer 1 is above it until t = 40; the last layer (2) is 1/t
    diag = {"names": ["relu", "relu_1", "relu_2"], "a_norm": [1.0, 1.0, 1.0],
            "rel_l2": [[0.1] * T, [0.9 if t < 40 else 0.2 for t in range(1, T + 1)], [1.0 / t for t in range(1, T + 1)]],
            "qc": [[0.1] * T, [0.9] * T, [0.6 / t for t in range(1, T + 1)]],
            "sin": [[0.0] * T, [0.0] * T, [0.8 / t for t in range(1, T + 1)]]}
    _fake_result(tmp_path / "a", diagnostics=diag)
    _fake_result(tmp_path / "b", method="const")  # no diagnostics: not in the table
    assert report_main([str(tmp_path), "--no-plots"]) == 0
    md = (tmp_path / "report.md").read_text()
    assert "## Where the SNN departs from the ANN" in md
    table = markdown_table(error_table([json.loads((tmp_path / "a" / "results.json").read_text())], steps=(32, 256)),
                           "run")
    assert table.head[2:] == ["rel_l2 last T=32", "qc last T=32", "sin last T=32", "first layer > 0.5 T=32"]
    (row,) = table.rows  # steps past the run's T are left out
    assert float(row["rel_l2 last T=32"]) == pytest.approx(1 / 32, abs=1e-4)
    assert float(row["qc last T=32"]) == pytest.approx(0.6 / 32, abs=1e-4)
    assert float(row["sin last T=32"]) == pytest.approx(0.8 / 32, abs=1e-4)
    assert row["first layer > 0.5 T=32"] == "1 (relu_1)"
    assert error_table([{"acc": [1.0]}]) == ""


def test_report_labels_tell_variants_apart():
    from msat.harness.report import label
    assert label(dict(method="msat", experiment=None, sc=None, max_spikes=1)) == "msat"
    assert label(dict(method="const", sc={"p": [0.9]}, max_spikes=1)) == "const +SC"
    assert label(dict(method="msat_sc", sc={"p": [0.9]}, quirk_no_reset=True)) == "msat_sc, quirk"
    assert label(dict(method="msat", max_spikes=4, experiment="x")) == "msat, burst 4 (x)"
    assert label(dict(method="msat_burst", max_spikes=5)) == "msat_burst"
    assert label(dict(method="mt-snn", trained_T=2)) == "mt-snn, trained T=2"
    # the levers a search varies: two runs of one method with other levers get two labels
    assert label(dict(method="const", balancing="ltb", correction="light", max_spikes=3)) == "const, burst 3, ltb, light correction"
    assert label(dict(method="ltb", balancing="ltb", readout_start=6)) == "ltb, readout from 7"
    assert label(dict(method="calibration_light", balancing="max", correction="light", readout_start=0)) == "calibration_light"
    # the correction's target T, where it is not the correction's default (32 for light)
    assert label(dict(method="ltb", balancing="ltb", correction="light", correction_T=32, max_spikes=2)) == \
        "ltb, burst 2, light correction"
    assert label(dict(method="ltb", balancing="ltb", correction="light", correction_T=12, max_spikes=2)) == \
        "ltb, burst 2, light correction for T=12"
    assert label(dict(method="calibration_light", correction="light", correction_T=16)) == "calibration_light, correction for T=16"


def test_curve_table_has_columns_for_short_runs():
    from msat.harness.report import curve_table
    runs = [dict(method="mt-snn", trained_T=2, dataset="d", model="m", ann_acc=90.0, acc=[50.0, 80.0], best_acc=80.0,
                 best_step=2),
            dict(method="msat", dataset="d", model="m", ann_acc=90.0, acc=[float(t) for t in range(1, 33)], best_acc=32.0,
                 best_step=32)]
    table = markdown_table(curve_table(runs, markdown=True), "run")
    assert table.head[:7] == ["run", "dataset / model", "ANN", "T=2", "T=16", "T=32", "best"]
    short, long = table.rows
    assert short["run"] == "mt-snn, trained T=2" and [short[k] for k in ("T=2", "T=16", "T=32")] == ["80.00", "-", "-"]
    assert [float(long[k]) for k in ("T=2", "T=16", "T=32")] == [2.0, 16.0, 32.0]


def test_report_without_results_is_an_error(tmp_path, capsys):
    assert report_main([str(tmp_path)]) == 2
    assert "no results.json" in capsys.readouterr().err
    r = subprocess.run(["make", "-s", "report", f"OUT={tmp_path}"], cwd=ROOT, capture_output=True, text=True)
    assert r.returncode != 0 and "no results.json" in r.stderr


# ----------------------------------------------------------------- SC and quirk in evaluate.py
def test_sc_needs_sin_statistics(ckpt_root):
    art = "calibration.artifact=${paths.ckpt_dir}/conversion/msat_nosin.pt"
    run_convert(compose(TINY + ["sin.enabled=false", art], ckpt_root))
    with pytest.raises(ValueError, match="rerun convert.py with sin.enabled=true"):
        run_evaluate(compose(TINY + ["eval.T=8", "method=msat_sc", "method.sc.early_steps=4", "sin.enabled=false", art],
                             ckpt_root))


@pytest.mark.parametrize("override,match", [
    ("method.sc.early_steps=20", "E=20 is larger than T=8"),
    ("method.sc.p=1.5", r"\[0, 1\]"),
    ("method.sc.p=[0.5,0.5]", "2 values for 1 spike-confidence layers"),
    ("method.sc.reset=both", "fired' or 'emitted"),
])
def test_sc_bad_arguments_in_evaluate(ckpt_root, override, match):
    with pytest.raises(ValueError, match=match):
        run_evaluate(compose(TINY + ["eval.T=8", "method=msat_sc", "method.sc.early_steps=4", override], ckpt_root))


def test_sc_seeds_reproducible_and_spread(ckpt_root):
    base = TINY + ["eval.T=16", "eval.checkpoints=[8,16]", "method=msat_sc", "method.sc.early_steps=8"]
    a = run_evaluate(compose(base + ["method.sc.seed=3"], ckpt_root))
    b = run_evaluate(compose(base + ["method.sc.seed=3"], ckpt_root))
    assert a["acc"] == b["acc"] and a["sc"]["seed"] == 3
    m = run_evaluate(compose(base + ["method.sc.seeds=[0,1,2]"], ckpt_root))
    assert len(m["acc_std"]) == 16 and set(m["acc_per_seed"]) == {"0", "1", "2"}
    assert 0 < m["sc"]["p"][0] <= 1


def test_eval_sin_statistics_and_quirk_switch(ckpt_root):
    base = TINY + ["eval.T=64", "eval.checkpoints=[32,64]", "eval.batch_size=7", "eval.sin=true"]
    plain = run_evaluate(compose(base, ckpt_root))
    assert len(plain["sin"]["ratio"]) == 13 and len(plain["sin"]["ratio"][0]) == 64
    assert plain["acc"][63] > 50  # the SNN is past chance, so the quirk can show
    assert plain["sin"]["ans_last"] >= 0
    quirk = run_evaluate(compose(base + ["eval.quirk_no_reset=true"], ckpt_root))
    assert quirk["quirk_no_reset"] is True
    assert quirk["acc"] != plain["acc"]  # batches after the first start from the previous state


def test_report_gives_intervals_and_paired_tests(tmp_path, capsys):
    """n and 95% Wilson intervals for every run; McNemar against the reference for runs that
    saved per-image results on the same images, Holm-adjusted; other images get no test."""
    from msat.analysis.stats import wilson_interval
    from msat.harness.checkpoint import atomic_save

    n = 200
    g = torch.Generator().manual_seed(0)
    base = torch.rand(n, 2, generator=g) < 0.6
    better = base.clone()
    better[:40] = True  # MSAT right on 40 more images... where const was wrong
    runs = {"const": base, "msat": better}
    for name, correct in runs.items():
        acc = [50.0] * 32
        acc[15], acc[31] = (100.0 * correct.float().mean(0)).tolist()
        _fake_result(tmp_path / name, method=name, acc=acc, T=32, n_samples=n, subset_seed=0, paper={}, sc=None,
                     experiment=None)
        atomic_save({"format_version": 1, "kind": "predictions", "steps": [16, 32], "correct": correct,
                     "subset_seed": 0, "n_samples": n}, tmp_path / name / "predictions.pt")
    _fake_result(tmp_path / "other", method="dtt", acc=[50.0] * 32, T=32, n_samples=100, subset_seed=0, paper={})
    atomic_save({"format_version": 1, "kind": "predictions", "steps": [16, 32], "correct": base[:100],
                 "subset_seed": 0, "n_samples": 100}, tmp_path / "other" / "predictions.pt")

    assert report_main([str(tmp_path), "--curves"]) == 0
    out = capsys.readouterr().out
    lo, hi = wilson_interval(round(runs["msat"][:, 1].float().mean().item() * n), n)
    intervals = text_table(out.split("95% Wilson intervals:")[1], "run", "n")
    assert intervals.where(run="msat")[0]["T=32"] == f"{lo:.1f}-{hi:.1f}"
    a_only = int((better[:, 1] & ~base[:, 1]).sum())
    assert a_only > 0
    paired = text_table(out.split("paired tests")[1], "run A", "run B", "T")
    (row,) = paired.where(run_A="const", run_B="msat", T=32)
    assert (row["A only"], row["B only"]) == ("0", str(a_only))  # const only, msat only
    assert row["reading (Holm)"].startswith("msat beats const")
    assert {r["run A"] for r in paired.rows} == {"const"}  # dtt: 100 other images, no pairing
    assert report_main([str(tmp_path), "--no-plots"]) == 0
    md = (tmp_path / "report.md").read_text()
    assert "## Paired tests on the same images" in md and "95% Wilson intervals" in md


def test_report_pairs_named_runs_instead_of_one_reference(tmp_path, capsys):
    """``--pair A B`` (repeatable) tests the pairs asked for, at every step both saved; a pair
    that names no two runs on the same images is an error that says so."""
    from msat.harness.checkpoint import atomic_save

    n = 120
    g = torch.Generator().manual_seed(1)
    correct = {m: torch.rand(n, 2, generator=g) < p for m, p in (("st", 0.3), ("mt", 0.7), ("msat", 0.5))}
    for name, c in correct.items():
        _fake_result(tmp_path / name, method=name, acc=[50.0] * 4, T=4, n_samples=n, subset_seed=0, paper={}, sc=None,
                     experiment=None)
        atomic_save({"format_version": 1, "kind": "predictions", "steps": [2, 4], "correct": c,
                     "subset_seed": 0, "n_samples": n}, tmp_path / name / "predictions.pt")
    assert report_main([str(tmp_path), "--curves", "--pair", "mt", "st"]) == 0
    rows = text_table(capsys.readouterr().out.split("paired tests")[1], "run A", "run B", "T").rows
    assert [(r["run A"], r["run B"], r["T"]) for r in rows] == [("mt", "st", "2"), ("mt", "st", "4")]  # msat not tested
    a_only = int((correct["mt"][:, 1] & ~correct["st"][:, 1]).sum())
    assert rows[1]["A only"] == str(a_only)
    assert report_main([str(tmp_path), "--curves", "--pair", "mt", "nope"]) == 2
    assert "--pair 'mt' 'nope'" in capsys.readouterr().err
    # the markdown report too, into a folder that does not exist yet
    assert report_main([str(tmp_path), "--no-plots", "--out", str(tmp_path / "new" / "r.md"), "--pair", "mt", "st"]) == 0
    assert "Runs A and B are the pairs asked for" in (tmp_path / "new" / "r.md").read_text()
    assert report_main([str(tmp_path), "--no-plots", "--pair", "mt", "nope"]) == 2
