"""`make reproduce-cifar10` (python -m msat.reproduce): its quick mode end to end on a fake
JPEG tree, its statistics, and its errors."""

import json
import subprocess
import sys

import pytest
import torch

from conftest import ROOT, cli, fake_cifar_tree
from msat.analysis.stats import holm, wilson_interval
from tables import markdown_table


def test_holm_adjustment():
    adj = holm([0.01, 0.04, 0.03, 0.5])
    # sorted: 0.01*4=0.04, 0.03*3=0.09, 0.04*2=0.08 -> monotone 0.09, 0.5*1=0.5
    torch.testing.assert_close(torch.tensor(adj), torch.tensor([0.04, 0.09, 0.09, 0.5]), rtol=1e-12, atol=0)


def test_wilson_interval_edges_and_known_value():
    # every image wrong or every image right: the bound at that end is exactly 0 or 100, not a rounding residue
    for n in (1, 6, 8, 2000):
        lo, hi = wilson_interval(0, n)
        assert lo == 0.0 and 0.0 < hi < 100.0
        lo, hi = wilson_interval(n, n)
        assert hi == 100.0 and 0.0 < lo < 100.0
    # 50 of 100: centre 0.5, half-width z*sqrt(0.25/100 + z^2/40000)/(1 + z^2/100)
    z = 1.959963984540054
    half = z * (0.25 / 100 + z * z / 40000) ** 0.5 / (1 + z * z / 100)
    torch.testing.assert_close(torch.tensor(wilson_interval(50, 100), dtype=torch.float64),
                               torch.tensor([100 * (0.5 - half), 100 * (0.5 + half)], dtype=torch.float64))
    with pytest.raises(ValueError):
        wilson_interval(3, 2)


def test_search_ranks_on_held_out_accuracy_and_maps_to_overrides():
    from msat.harness.search import candidate_overrides, parse_levers, rank

    grid = parse_levers(["threshold=msat", "percentile=0.999,1.0"])
    assert grid["threshold"] == ["msat"] and grid["percentile"] == [0.999, 1.0]
    with pytest.raises(SystemExit, match="unknown value"):
        parse_levers(["extra=magic"])
    rs = [{"name": "a", "acc": [0.0] * 15 + [50.0] + [0.0] * 48}, {"name": "b", "acc": [0.0] * 15 + [60.0] + [0.0] * 48}]
    assert [r["name"] for r in rank(rs, 64)["16"]] == ["b", "a"]
    o = candidate_overrides({"threshold": "msat", "percentile": 0.999, "v_init": 0.5, "extra": "light"})
    assert o == ["method=msat", "calibration.percentile=0.999", "method.v_init=0.5", "method.correction=light",
                 "method.correction_T=32"]
    o = candidate_overrides({"threshold": "const", "percentile": 1.0, "v_init": 0.5, "extra": "none", "balancing": "ltb"})
    assert o == ["method=const", "calibration.percentile=1.0", "method.v_init=0.5", "calibration.balancing=ltb",
                 "calibration.passes=20"]


def test_search_takes_the_light_corrections_target_and_burst_with_light_on_request():
    """Outside the default grid: --levers correction_T=... aims the light correction at other T
    (one candidate per T for corrected candidates only), and extra=burst2_light combines a burst
    cap with it; the default grid's names and overrides do not change."""
    from msat.harness.search import GRID, candidate_name, candidate_overrides, candidates, parse_levers

    default = candidates(parse_levers([]))
    assert len(default) == len(candidates(GRID)) == 60
    assert all("cT" not in candidate_name(c) for c in default)
    grid = parse_levers(["threshold=const", "percentile=1.0", "v_init=0.5", "extra=none,burst2_light", "balancing=ltb",
                         "correction_T=12,32"])
    names = [candidate_name(c) for c in candidates(grid)]
    assert names == ["const_p1.0_v0.5_none_ltb", "const_p1.0_v0.5_burst2_light_ltb_cT12", "const_p1.0_v0.5_burst2_light_ltb"]
    c = candidates(grid)[1]
    assert candidate_overrides(c)[-3:] == ["method.max_spikes=2", "method.correction=light", "method.correction_T=12"]
    for bad, match in (("correction_T=0", "T is >= 1"), ("correction_T=twelve", "not int"), ("extra=burst4_light", "unknown")):
        with pytest.raises(SystemExit, match=match):
            parse_levers([bad])


def test_a_run_with_other_settings_is_neither_reused_nor_gathered(tmp_path, monkeypatch):
    """A label's run dir left by another definition of the label (an earlier search's winner
    under the same name) must be rerun, not reused."""
    import msat.harness.reproduce as rp

    monkeypatch.setitem(rp.METHODS, "search_T64", ["method=const", "method.correction=light"])
    d = tmp_path / "eval" / "search_T64"
    d.mkdir(parents=True)
    from msat.harness.checkpoint import atomic_save

    atomic_save({"format_version": 1, "kind": "predictions", "steps": [1], "correct": torch.ones(2, 1, dtype=torch.bool)},
                d / "predictions.pt")
    for command, reused in (("python evaluate.py eval.T=8 method=msat calibration.percentile=0.999", False),
                            ("python evaluate.py eval.T=8 method=const method.correction=light", True)):
        (d / "results.json").write_text(json.dumps({"command": command, "n_samples": 2}))
        assert (rp.finished_run(d, "search_T64") is not None) is reused, command
        assert ("search_T64" in rp.gather(tmp_path, ["search_T64"])) is reused, command
    # a checkpoint path is compared by file name: another checkout's run of the same file is reused
    monkeypatch.setitem(rp.METHODS, "qcfs", ["method=qcfs", "calibration.checkpoint=/here/docs/qcfs.pt"])
    (d / "results.json").write_text(json.dumps({"command": "python evaluate.py method=qcfs "
                                                           "calibration.checkpoint=/elsewhere/docs/qcfs.pt"}))
    assert rp.finished_run(d, "qcfs") is not None
    # a diagnostics run saves no predictions: it is checked on its command alone
    (d / "predictions.pt").unlink()
    assert rp.finished_run(d, "qcfs") is None and rp.finished_run(d, "qcfs", predictions=False) is not None


def test_one_run_per_distinct_search_winner(tmp_path):
    from msat.harness.reproduce import search_methods

    a, b = ["method=msat", "calibration.balancing=ltb"], ["method=const"]
    (tmp_path / "search.json").write_text(json.dumps({"best": {"16": {"overrides": a}, "32": {"overrides": a},
                                                               "64": {"overrides": b}}}))
    assert search_methods(str(tmp_path / "search.json")) == {"search_T16_T32": a, "search_T64": b}
    assert search_methods(None) == {}


def test_search_grid_leaves_out_ltb_with_a_percentile():
    from msat.harness.search import candidate_name, candidates, parse_levers

    grid = parse_levers(["threshold=msat", "v_init=0.0", "extra=none", "percentile=1.0,0.999", "balancing=max,ltb"])
    names = sorted(candidate_name(c) for c in candidates(grid))
    # (max, 1.0), (max, 0.999), (ltb, 1.0); LTB picks its own thresholds, so (ltb, 0.999) is not a candidate
    assert names == ["msat_p0.999_v0.0_none", "msat_p1.0_v0.0_none", "msat_p1.0_v0.0_none_ltb"]
    with pytest.raises(SystemExit, match="unknown value"):
        parse_levers(["balancing=mean"])


def test_a_smaller_subset_sits_inside_the_larger_one():
    from msat.harness.data import subset
    from msat.harness.reproduce import subset_positions

    ds = list(range(100))
    small, large = subset(ds, 10, seed=0), subset(ds, 40, seed=0)
    pos = subset_positions(100, 10, 40)
    assert [large[i] for i in pos] == [small[i] for i in range(10)]


def test_missing_jpeg_folder_says_where_and_how(tmp_path):
    r = subprocess.run([sys.executable, "-m", "msat.reproduce", "--data", str(tmp_path / "nowhere"), "--quick"],
                       capture_output=True, text=True, cwd=tmp_path)
    assert r.returncode != 0
    assert "CIFAR-10 JPEG folder not found" in r.stderr and "DATA=" in r.stderr and "--data" in r.stderr


# the e2e tier runs one method of each kind the driver treats differently (Fig. 5/6 rows, spike
# confidence, a correction, delayed readout, a lever, the search's winner, the QCFS net); the slow
# tier (make test-full) runs every method
QUICK_SUBSET = ("const", "msat", "msat_sc", "calibration_light", "ltb_delayed", "msat_v0.5_p99.9", "search_T8", "qcfs")


@pytest.mark.e2e
def test_quick_mode_end_to_end(tmp_path):
    _quick_mode(tmp_path, "const,msat,msat_sc,calibration_light,ltb_delayed,msat_v0.5_p99.9,search,qcfs", QUICK_SUBSET,
                diagnostics=False)


@pytest.mark.slow
def test_quick_mode_end_to_end_every_method(tmp_path):
    _quick_mode(tmp_path, "all", ("const", "const_0.5", "const_0.2", "dtt", "det", "msat", "msat_sc", "burst", "rts",
                                  "calibration_light", "calibration_advanced", "ftbc", "ltb", "ltb_delayed", "msat_ltb",
                                  "msat_ltb_delayed", "msat_v0.5_p99.9", "search_T8", "qcfs"), diagnostics=True)


def _quick_mode(tmp_path, methods: str, labels, diagnostics: bool):
    data = fake_cifar_tree(tmp_path / "jpeg")
    r = cli("train_ann.py", "dataset=cifar10", f"dataset.root={data}", "model=vgg16", "model.width=0.0625",
            "train.epochs=1", "train.batch_size=16", "dataset.num_workers=0", "dataset.augment.autoaugment=false",
            f"paths.root={tmp_path}", cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    ckpt = tmp_path / "checkpoints/cifar10/vgg16_w0.0625_s0/last.pt"
    # the QCFS net beside it: fine-tuned from the ReLU net (train_qcfs.sh's recipe, shrunk)
    r = cli("train_ann.py", "dataset=cifar10", f"dataset.root={data}", "model=vgg16", "model.width=0.0625",
            "model.activation=qcfs", "model.levels=4", "model.lam_init=2.0", f"train.init_from={ckpt}",
            "train.epochs=1", "train.batch_size=16", "dataset.num_workers=0", "dataset.augment.autoaugment=false",
            f"paths.root={tmp_path}", cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    qcfs = tmp_path / "checkpoints/cifar10/vgg16_qcfs4_w0.0625_s0/last.pt"
    out, runs = tmp_path / "results", tmp_path / "runs"
    # the fewest-steps search scores on held-out training images, then the reproduction runs its best
    search = [sys.executable, "-m", "msat.search", "--quick", "--checkpoint", str(ckpt), "--data", str(data),
              "--out", str(out), "--levers", "percentile=1.0", "extra=none,light", "balancing=max"]
    r = subprocess.run(search, capture_output=True, text=True, cwd=ROOT, timeout=1800)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    found = json.loads((out / "search.json").read_text())
    assert len(found["candidates"]) == 2 * 1 * 2 * 2 * 1 and set(found["best"]) == {"8"}  # T=8 < 16: ranked at T
    cmd = [sys.executable, "-m", "msat.reproduce", "--quick", "--checkpoint", str(ckpt), "--data", str(data),
           "--out", str(out), "--runs", str(runs), "--jobs", "2", "--other-images", "6", "--search", str(out / "search.json"),
           "--qcfs-checkpoint", str(qcfs), "--methods", methods] + ([] if diagnostics else ["--no-diagnostics"])
    r = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=1500)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    s = json.loads((out / "summary.json").read_text())
    assert set(s) == {"ann", "curves", "hardware", "commit"}
    assert set(s["ann"]) == {"checkpoint", "model", "width", "epochs", "ann_acc_full", "normalization"}
    assert s["ann"]["model"] == "vgg16" and s["ann"]["width"] == 0.0625 and s["ann"]["epochs"] == 1
    assert 0.0 <= s["ann"]["ann_acc_full"] <= 100.0
    assert set(labels) <= set(s["curves"])
    for label in labels:
        c = s["curves"][label]
        assert len(c["acc"]) == 8 and c["n_images"] == (8 if label in ("const", "const_0.5", "const_0.2", "dtt", "det",
                                                                         "msat", "msat_sc") else 6)
        lo, hi = c["ci95"]["8"]
        assert lo <= c["acc"][7] <= hi
    from msat.harness.reproduce import LEVERS

    details = json.loads((out / "details.json").read_text())
    assert "8" in details["paired_tests_vs_msat"]["const"]
    tables = (out / "tables.md").read_text()
    assert "Table 4" in tables and "paper: MSAT" in tables and "Paired tests" in tables and "QCFS net" in tables
    assert 0.0 <= details["qcfs"]["ann_acc_full"] <= 100.0 and details["qcfs"]["levels"] == 4
    assert "qcfs" in details["paired_tests_vs_msat"]
    # paired tests against MSAT, the best lever and the search's winner, each in its own table
    refs = details["paired_tests"]
    assert set(refs) - {"msat", "search_T8"} <= set(LEVERS) and {"msat", "search_T8"} < set(refs) and len(refs) == 3
    assert refs["msat"]["tests"] == details["paired_tests_vs_msat"]
    assert "msat" in refs["search_T8"]["tests"] and "held-out training images" in refs["search_T8"]["why"]
    for ref in refs:
        assert f"## Paired tests against `{ref}`" in tables

    if not diagnostics:
        assert "diagnostics" not in details
    else:
        diag = details["diagnostics"]
        assert {"const", "msat", "msat_sc"} < set(diag) and len(set(diag) - {"const", "msat", "msat_sc"} & set(LEVERS)) == 1
        assert len(diag["msat"]["rel_l2"][0]) == 8 and diag["msat"]["n_images"] == 8
        for png in ("diagnostics_msat/layer_errors.png", "diagnostics_msat_sc/layer_errors.png",
                    "layer_errors_last_rel_l2.png"):
            assert (out / png).stat().st_size > 0
    for png in ("fig5_thresholds.png", "fig6_spike_confidence.png", "fig2_sin_ratio.png", "fig7_firing_rate.png"):
        assert (out / png).stat().st_size > 0
    # a rerun reuses the finished runs
    r2 = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert r2.returncode == 0 and "reused" in r2.stdout


def test_tables_follow_the_converted_net():
    """A ResNet-20 reproduction gets the paper's ResNet-20 rows (Table 3, Table 7), not VGG16's Table 4."""
    from msat.harness.reproduce_tables import net_title, tables

    acc = [50.0] * 31 + [80.0] + [85.0] * 32
    summary = {"ann": {"model": "resnet20", "width": 0.25, "ann_acc_full": 85.05},
               "curves": {"msat": {"acc": acc, "n_images": 100, "ci95": {"32": [71.0, 87.0]}}}}
    found = {"msat": {"res": {"acc": acc, "sin": {"ans_last": 1.5}, "best_acc": 85.0, "best_step": 33}}}
    md = tables(summary, found, {}, [32])
    assert "Table 4" not in md and net_title("resnet20", 0.25) == "ResNet-20 (width 0.25) / CIFAR-10"
    table3 = markdown_table(md, "", "ANN", "SNN (best)")
    assert list(table3.where(_="paper")[0].values()) == ["paper", "96.37", "96.36", "0.01", "174"]
    ours = table3.where(_="ours")[0]  # the first step within 0.1 of the ANN
    assert (ours["SNN (best)"], ours["Step"]) == ("85.00 (t=33)", "33")
    assert [float(ours[k]) for k in ("ANN", "loss")] == pytest.approx([85.05, 0.05])
    table7 = markdown_table(md, "method", "ANS")
    assert list(table7.where(method="msat")[0].values()) == ["msat", "1.5000", "80.00", "1.972", "93.30"]
    summary["ann"].update(model="vgg16", width=1.0)
    md = tables(summary, found, {}, [32])
    assert "Table 4 layout" in md
    assert list(markdown_table(md, "", "ANN", "SNN (best)").where(_="paper")[0].values()) == [
        "paper", "95.45", "95.45", "0.00", "112"]
    assert markdown_table(md, "method", "ANS").where(method="msat")[0]["paper ANS"] == "2.92"


def test_a_run_of_another_net_is_not_reused(tmp_path):
    """The same label's run made from another checkpoint (a VGG16 run when ResNet-20 is reproduced
    into the same --runs folder) is neither reused nor gathered."""
    import argparse

    import msat.harness.reproduce as rp
    from msat.harness.checkpoint import atomic_save, file_sha256

    ckpt = tmp_path / "net.pt"
    atomic_save({"format_version": 1, "kind": "ann"}, ckpt)
    args = argparse.Namespace(checkpoint=str(ckpt))
    d = tmp_path / "eval" / "msat"
    d.mkdir(parents=True)
    atomic_save({"format_version": 1, "kind": "predictions", "steps": [1], "correct": torch.ones(2, 1, dtype=torch.bool)},
                d / "predictions.pt")
    for sha, reused in (("0" * 64, False), (file_sha256(ckpt), True)):
        (d / "results.json").write_text(json.dumps({"command": "python evaluate.py method=msat", "n_samples": 2,
                                                    "ann_sha256": sha}))
        assert (rp.finished_run(d, "msat", ann_sha256=rp.ann_sha(args, "msat")) is not None) is reused
        assert ("msat" in rp.gather(tmp_path, ["msat"], args)) is reused
