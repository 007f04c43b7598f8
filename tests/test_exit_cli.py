"""evaluate.py with early exit (eval.exit) on the bundled digits: the record, its exactness against
the fixed run, resume after a crash, the report, bad settings; and the compiled neuron under a
shrinking batch."""

import importlib.util
import json
from pathlib import Path

import pytest
import torch

import msat
from conftest import compose
from msat.harness.report import main as report_main
from msat.harness.settings import eval_settings
from msat.harness.tasks import run_evaluate
from tables import markdown_table

ROOT = Path(__file__).resolve().parents[1]

EXIT = ["experiment=demo", "eval.max_samples=40", "eval.batch_size=16", "eval.T=40", "eval.checkpoints=[16,32]",
        "calibration.num_batches=2", "sin.enabled=false", "eval.plots=false", "method=msat", "sim.dtype=float64",
        "eval.exit.rule=all", "eval.exit.holdout=120", "eval.exit.min_steps=2"]


@pytest.mark.parametrize("override,match", [
    ("eval.exit.rule=vote", "unknown exit rule"),
    ("eval.exit.T_max=0", r"eval.exit.T_max must be an integer in 1..eval.T"),
    ("eval.exit.T_max=300", r"eval.exit.T_max must be an integer in 1..eval.T"),
    ("eval.exit.min_steps=300", "min_steps must be an integer in 1..T_max"),
    ("eval.exit.threshold=1.5", r"probability in \(0, 1\]"),
    ("eval.exit.max_drop=-1", "max_drop"),
    ("eval.exit.target=stable", "eval.exit.target must be one of"),
    ("eval.exit.hidden=-2", "eval.exit.hidden"),
])
def test_bad_exit_settings_fail_at_the_door(tmp_path, override, match):
    rule = ["eval.exit.rule=confidence"] if "threshold" in override else []
    with pytest.raises(ValueError, match=match):
        eval_settings(compose(["eval.exit.rule=all", *rule, override], tmp_path))
    with pytest.raises(ValueError, match="fixes the threshold of one simple rule"):
        eval_settings(compose(["eval.exit.rule=schedule", "eval.exit.threshold=0.9"], tmp_path))


def test_a_rates_setting_that_is_not_a_boolean_fails_at_composition(tmp_path):
    from hydra.errors import ConfigCompositionException

    with pytest.raises(ConfigCompositionException, match="eval.exit.rates=sometimes") as caught:
        compose(["eval.exit.rule=learned", "eval.exit.rates=sometimes"], tmp_path)
    assert "not a valid bool" in str(caught.value.__cause__)


@pytest.mark.e2e
def test_evaluate_with_early_exit_records_every_rule_and_matches_the_fixed_run(ckpt_root, tmp_path):
    res = run_evaluate(compose(EXIT, ckpt_root))
    ex = res["exit"]
    assert set(ex["rules"]) == set(msat.EXIT_RULES) and ex["n"] == 40 and ex["T_max"] == 40
    for rule, r in ex["rules"].items():
        assert r["decisions_differ_from_fixed_run"] == 0, rule  # float64: the compacted run is exact
        assert 2 <= r["median_steps"] <= 40 and sum(r["histogram"].values()) == 40
        assert r["chosen_on"]["images"].startswith("training images held out") and r["chosen_on"]["n"] > 0
        assert 0 <= r["vs_fixed"]["p"] <= 1 and r["curve"]
    assert len(ex["fixed_curve"]) == 40 and ex["oracle"]["accuracy"] == pytest.approx(ex["fixed_curve"][-1])
    assert res["acc"] == ex["fixed_curve"]  # the fixed run's curve in the usual fields
    pred = torch.load(ckpt_root / "out" / "predictions.pt", weights_only=True)
    assert pred["exits"]["learned"]["steps"].shape == (40,)
    # the report: a table row per rule, and the plot
    (tmp_path / "r").mkdir()
    (tmp_path / "r" / "results.json").write_text(json.dumps(res))
    assert report_main([str(tmp_path / "r")]) == 0
    table = markdown_table((tmp_path / "r" / "report.md").read_text(), "run", "rule")
    assert {row["rule"] for row in table.rows} == set(msat.EXIT_RULES)
    assert (tmp_path / "r" / "report_plots").glob("*_exit.png")
    # the wall-time benchmark rebuilds the run (net, rule, dtype, test images) and makes its decisions
    bench = _load_benchmark().measure(ckpt_root / "out", "learned", images=40, rounds=1, batch_size=16)
    assert torch.equal(bench["pred"], pred["exits"]["learned"]["pred"])
    assert torch.equal(bench["steps"], pred["exits"]["learned"]["steps"])
    assert bench["adaptive_acc"] == pytest.approx(ex["rules"]["learned"]["accuracy"])
    assert 1 <= bench["fixed_T"] <= 40 and bench["fixed_s"] > 0 and bench["adaptive_s"] > 0


def _load_benchmark():
    spec = importlib.util.spec_from_file_location("bench_early_exit", ROOT / "benchmarks" / "early_exit.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.e2e
def test_an_interrupted_early_exit_evaluation_resumes_to_the_same_record(ckpt_root, monkeypatch):
    import msat.harness.exit_eval as ee

    full = run_evaluate(compose(EXIT + ["eval.resume=false", "eval.exit.rule=[confidence,learned]"], ckpt_root))
    real, calls = ee.batch_seed, []

    def crash(seed, b):
        calls.append(b)
        if len(calls) == 12:  # the held-out run (8 batches), then the test run's fourth batch
            raise KeyboardInterrupt("simulated crash")
        return real(seed, b)

    monkeypatch.setattr(ee, "batch_seed", crash)
    with pytest.raises(KeyboardInterrupt):
        run_evaluate(compose(EXIT + ["eval.exit.rule=[confidence,learned]"], ckpt_root))
    monkeypatch.setattr(ee, "batch_seed", real)
    resumed = run_evaluate(compose(EXIT + ["eval.exit.rule=[confidence,learned]"], ckpt_root))
    for rule in ("confidence", "learned"):
        a, b = full["exit"]["rules"][rule], resumed["exit"]["rules"][rule]
        assert (a["accuracy"], a["mean_steps"], a["histogram"]) == (b["accuracy"], b["mean_steps"], b["histogram"])
    assert not list((ckpt_root / "checkpoints/digits/vgg16_w0.25_s0/eval_partial").glob("exit_*.pt"))


@pytest.mark.e2e
@pytest.mark.compile
def test_a_shrinking_batch_does_not_recompile_the_neuron_for_every_size():
    """The fused neuron is compiled for dynamic shapes: images leaving one by one give many batch
    sizes, and the number of compiled graphs stays what two or three sizes give."""
    from torch._dynamo.utils import counters

    from msat.spiking.simulation import compile_available

    if not compile_available(torch.device("cpu")):
        pytest.skip("torch.compile has no working backend here")
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.ReLU(), torch.nn.Flatten(),
                              torch.nn.Linear(8 * 36, 10)).eval()
    x = torch.randn(32, 3, 6, 6)
    snn = msat.convert(net, [x], msat.METHODS["msat"].for_model("vgg16"))
    snn.set_compile(True)

    class OneByOne(msat.spiking.early_exit.ExitRule):  # noqa: D401  (one image leaves per step)
        name = "one_by_one"

        def exits(self, progress):
            leave = torch.zeros(progress.S.shape[0], dtype=torch.bool)
            leave[0] = True
            return leave

    before = counters["stats"]["unique_graphs"]
    msat.simulate_adaptive(snn, x[:4], 8, rule=OneByOne())  # sizes 4, 3, 2, 1
    warm = counters["stats"]["unique_graphs"] - before
    res = msat.simulate_adaptive(snn, x, 40, rule=OneByOne())  # 32 sizes
    assert sorted(res.steps.tolist()) == list(range(1, 33))
    assert counters["stats"]["unique_graphs"] - before == warm
    assert msat.spiking.fused.compile_status()["ran_compiled"]


def test_a_run_without_a_recorded_dataset_cannot_rebuild_its_test_images():
    from msat.harness.artifacts import run_test_images

    with pytest.raises(ValueError, match="records no dataset_config"):
        run_test_images({"n_samples": 10, "subset_seed": 0})


def test_the_benchmark_refuses_a_folder_that_is_not_an_early_exit_run(tmp_path):
    bench = _load_benchmark()
    with pytest.raises(SystemExit, match="no results.json"):
        bench.measure(tmp_path)
    (tmp_path / "results.json").write_text(json.dumps({"acc": [50.0]}))
    with pytest.raises(SystemExit, match="without early exit"):
        bench.measure(tmp_path)
