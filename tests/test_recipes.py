"""Recipes, the registries and the one pipeline: a conversion is described once (a Recipe), its
methods are named once (msat.METHODS, which the conf files, msat.reproduce, msat.search and the
GPU plan read), and every strategy (threshold rule, lam source, correction) is one registered
class."""

import re

import pytest
import torch
from torch import nn

import msat
from conftest import CONF, ROOT, compose
from msat.harness.settings import recipe_from_config
from msat.models import MODEL_NAMES


def _net():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.BatchNorm2d(6), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
                        nn.Linear(6 * 4 * 4, 5)).double().eval()
    return net, [torch.randn(8, 3, 8, 8, dtype=torch.float64) for _ in range(2)]


def _data_free(recipe):
    """A recipe without its data settings (a named method does not fix how many batches calibrate)."""
    return recipe.replace(num_batches=None)


# ----------------------------------------------------------------- the registry and the conf files
def test_every_conf_method_is_its_registered_recipe(tmp_path):
    names = sorted(p.stem for p in (CONF / "method").glob("*.yaml"))
    assert names == sorted(msat.METHODS), "conf/method/ and msat.METHODS name different methods"
    for name in names:
        cfg = compose([f"method={name}", "model=vgg16"], tmp_path)
        from_conf = recipe_from_config(cfg.method, cfg.calibration)
        registered = msat.METHODS[name].for_model("vgg16").validate().canonical()
        assert _data_free(from_conf) == _data_free(registered), name


def test_table2_in_the_conf_files_is_the_registered_one():
    import yaml

    for path in (CONF / "method" / "hparams").glob("*.yaml"):
        assert yaml.safe_load(path.read_text()) == msat.conversion.table2.table2_row(path.stem), path.name
    assert {p.stem for p in (CONF / "model").glob("*.yaml")} == set(MODEL_NAMES)
    assert {p.stem for p in (CONF / "method" / "hparams").glob("*.yaml")} == set(MODEL_NAMES)


def _first_cells(section: str) -> set[str]:
    """The names in backticks in the first column of a markdown table."""
    return {m for cell in re.findall(r"^\| ([^|]+) \|", section, re.M) for m in re.findall(r"`([a-z0-9_.]+)`", cell)}


def test_the_readme_lists_every_method_model_and_dataset():
    from msat.harness.data import DATASET_NAMES

    readme = (ROOT / "README.md").read_text()
    listed = _first_cells(readme.split("\n## Methods\n")[1].split("\n## ")[0])
    assert listed == set(msat.METHODS), f"README methods table: {sorted(listed ^ set(msat.METHODS))}"
    data = readme.split("\n## Data\n")[1].split("\n## ")[0]
    assert _first_cells(data) == set(DATASET_NAMES)
    models = readme.split("\n## Models\n")[1].split("\n## ")[0]
    assert _first_cells(models) == set(MODEL_NAMES)


def test_reproduce_search_and_the_gpu_plan_run_registered_recipes(tmp_path):
    """Every label of msat.reproduce and every search candidate is a command line that composes into
    the recipe it stands for; the GPU plan's labels are recipes of the registry."""
    from msat.harness.gpu.stages import EVAL_METHODS
    from msat.harness.reproduce import METHODS as LABELS
    from msat.harness.search import GRID, candidate_overrides, candidate_recipe, candidates, parse_levers

    for label, overrides in LABELS.items():
        cfg = compose(["model=vgg16", *[o for o in overrides if o.startswith(("method", "calibration"))]], tmp_path)
        recipe = recipe_from_config(cfg.method, cfg.calibration)
        base = msat.METHODS[overrides[0].split("=")[1]].for_model("vgg16").canonical()
        assert set(recipe.differences(base)) <= {"num_batches", "v_init", "percentile", "balancing"}, label
    optional = parse_levers(["percentile=1.0", "v_init=0.5", "extra=burst2_light,burst3_light", "correction_T=12"])
    for c in candidates(GRID) + candidates(optional):
        cfg = compose(["model=vgg16", *candidate_overrides(c)], tmp_path)
        assert _data_free(recipe_from_config(cfg.method, cfg.calibration)) == \
            _data_free(candidate_recipe(c, "vgg16").canonical()), c
    assert all(isinstance(r, msat.Recipe) for r in EVAL_METHODS.values())


# ----------------------------------------------------------------- the recipe
def test_a_recipe_is_immutable_and_round_trips_through_its_plain_form():
    r = msat.METHODS["msat_sc"].for_model("resnet20")
    import dataclasses

    with pytest.raises(dataclasses.FrozenInstanceError):
        r.threshold = "const"
    with pytest.raises(TypeError):
        r.hparams["alpha"] = 1.0
    assert r.hparams["alpha"] == msat.TABLE2["resnet20"]["alpha"]
    assert msat.Recipe.from_dict(r.to_dict()) == r
    with pytest.raises(ValueError, match="format"):
        msat.Recipe.from_dict({**r.to_dict(), "format": 99})


@pytest.mark.parametrize("kw,match", [
    (dict(threshold="adaptive"), "unknown method 'adaptive'"),
    (dict(threshold="msat"), "needs the Table 2"),
    (dict(balancing="mean"), "unknown balancing"),
    (dict(percentile=1.5), r"percentile must lie in \(0, 1\]"),
    (dict(balancing="ltb", percentile=0.99), "chooses its own thresholds"),
    (dict(balancing="ltb", passes=0), "passes >= 1"),
    (dict(max_spikes=0), "max_spikes"),
    (dict(correction="light"), "pass T=<steps>"),
    (dict(correction="rts", correction_T=32, correction_options={"batches_used": 2}), "has no options"),
    (dict(sc={"p": 2.0}), r"\[0, 1\]"),
])
def test_validate_is_where_a_contradiction_is_refused(kw, match):
    r = msat.Recipe(**{"threshold": "const", **kw})
    with pytest.raises(ValueError, match=match):
        r.validate()
    net, data = _net()
    with pytest.raises(ValueError, match=match):  # and msat.convert refuses it before any work
        msat.convert(net, iter(()), r)


def test_the_keyword_form_and_the_recipe_form_are_one_conversion():
    net, data = _net()
    x = data[0]
    for name in ("const", "msat", "calibration_light", "ltb", "msat_sc"):
        recipe = msat.METHODS[name].for_model("vgg16")
        a = msat.simulate(msat.convert(net, data, recipe), x, 12)
        kw = dict(method=recipe.threshold, hparams=dict(recipe.hparams), balancing=recipe.balancing,
                  max_spikes=recipe.max_spikes, correction=recipe.correction, T=recipe.correction_T,
                  sc=None if recipe.sc is None else dict(recipe.sc))
        b = msat.simulate(msat.convert(net, data, **kw), x, 12)
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    with pytest.raises(TypeError, match="not both"):
        msat.convert(net, data, msat.METHODS["const"], method="msat")


def test_a_stored_conversion_rebuilds_the_same_network():
    """Converter.state (what convert.py stores) and Converter.restore (what evaluate.py runs) give
    the network Converter.run built, corrections included."""
    net, data = _net()
    x = data[0]
    for name in ("calibration_light", "calibration_advanced", "rts", "ltb"):
        recipe = msat.METHODS[name].for_model("vgg16").replace(correction_options={"iterations": 5}) \
            if name == "calibration_advanced" else msat.METHODS[name].for_model("vgg16")
        big = [torch.randn(128, 3, 8, 8, dtype=torch.float64)]
        conv = msat.Converter(recipe)
        snn = conv.run(net, big)
        state = conv.state(snn)
        _, again = msat.Converter(msat.Recipe.from_dict(state["recipe"])).restore(net, state)
        torch.testing.assert_close(msat.simulate(again, x, 10), msat.simulate(snn, x, 10), rtol=0, atol=0)


# ----------------------------------------------------------------- strategies plug in
def test_a_new_balancing_and_a_new_correction_are_one_class_each():
    from msat.conversion.corrections import CORRECTIONS
    from msat.conversion.lam import BALANCING, calibrate

    @msat.register_balancing("test_half_max")
    class HalfMax(msat.Balancing):
        def compute(self, ann, data, recipe, progress=False):
            return [v / 2 for v in calibrate(ann, data, num_batches=recipe.num_batches)]

    @msat.register_correction("test_shift")
    class Shift(msat.Correction):
        def apply(self, ann, snn, data, T, num_batches=None):
            for n in snn.neurons:
                n.set_bias(torch.full_like(n.lam, 0.01 * T))
            return {"T": T}

    try:
        net, data = _net()
        half = msat.convert(net, data, msat.Recipe(threshold="const", balancing="test_half_max"))
        full = msat.convert(net, data, msat.Recipe(threshold="const"))
        torch.testing.assert_close(half.lam[0], full.lam[0] / 2)
        shifted = msat.convert(net, data, msat.Recipe(threshold="const", correction="test_shift", correction_T=4))
        assert float(shifted.neurons[0].bias) == pytest.approx(0.04)
    finally:
        BALANCING.pop("test_half_max")
        CORRECTIONS.pop("test_shift")


def test_a_per_step_input_bias_applies_row_by_row_then_holds_its_last_row():
    """A correction may shift a layer's input by a schedule (one row per step, the last row from then
    on): the same as adding the row's value to the input at each step."""
    from msat.spiking.neuron import IFNeuron

    torch.manual_seed(0)
    x = torch.rand(6, 4, dtype=torch.float64)
    schedule = torch.tensor([[0.3], [-0.2], [0.1]], dtype=torch.float64).expand(3, 4).contiguous()
    a, b = IFNeuron(1.0, "const"), IFNeuron(1.0, "const")
    a.set_bias(schedule, per_step=True)
    outs_a = [a(x) for _ in range(5)]
    outs_b = [b(x + schedule[min(t, 2)]) for t in range(5)]
    for oa, ob in zip(outs_a, outs_b):
        torch.testing.assert_close(oa, ob, rtol=0, atol=0)
