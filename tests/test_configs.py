import subprocess
import sys

import pytest
from hydra.errors import ConfigCompositionException
from omegaconf.errors import ConfigKeyError, ValidationError

from conftest import CONF, ROOT, compose
from msat.conversion.table2 import TABLE2

EXPERIMENTS = sorted(p.stem for p in (CONF / "experiment").glob("*.yaml"))


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_every_experiment_composes(name, tmp_path):
    if name.startswith("mt_"):  # MT-SNN experiments belong to train_snn.py's primary config
        cfg = compose([f"experiment={name}"], tmp_path, config_name="snn")
        assert cfg.snn.name.startswith("mt_") and cfg.neuron.name in ("st", "mt", "ann") and cfg.paper
        return
    cfg = compose([f"experiment={name}"], tmp_path)
    assert cfg.method.name and cfg.dataset.name and cfg.model.name
    row = TABLE2.get(cfg.model.name, TABLE2["vgg16"])  # M5 has no Table 2 row: the VGG16 one (hparams/m5.yaml)
    assert dict(cfg.method.hparams) == {**row, "V_T": -1.0, "tau_rd_twice": False}
    assert isinstance(cfg.seed, int)
    if name not in ("demo", "msat_burst_vgg16_cifar10", "m5_synthetic_words"):
        assert cfg.paper, f"{name} has no paper: block"


def test_table2_hyperparameters_follow_the_architecture(tmp_path):
    for model in TABLE2:
        cfg = compose([f"model={model}"], tmp_path)
        for key, value in TABLE2[model].items():
            assert cfg.method.hparams[key] == value


def test_method_schema_rejects_misspelt_keys(tmp_path):
    with pytest.raises(ConfigCompositionException):
        compose(["method.hparams.alpah=0.1"], tmp_path)
    with pytest.raises(ConfigCompositionException):
        compose(["method.thresold=const"], tmp_path)
    with pytest.raises((ConfigCompositionException, ValidationError)):
        compose(["method.max_spikes=many"], tmp_path)


def test_misspelt_key_in_a_method_file_is_an_error(tmp_path):
    conf = tmp_path / "conf"
    import shutil

    shutil.copytree(CONF, conf)
    (conf / "method" / "typo.yaml").write_text(
        "defaults:\n  - base_method\n  - _self_\nname: typo\nthreshold: msat\nv_int: 0.5\n"
    )
    from hydra import compose as hcompose
    from hydra import initialize_config_dir

    with initialize_config_dir(config_dir=str(conf), version_base="1.3"):
        with pytest.raises((ConfigCompositionException, ConfigKeyError)):
            hcompose(config_name="config", overrides=["method=typo"])


def test_unknown_group_option_is_a_clear_cli_error(tmp_path):
    r = subprocess.run([sys.executable, str(ROOT / "train_ann.py"), "dataset=imagenette", f"paths.root={tmp_path}"],
                       capture_output=True, text=True, cwd=tmp_path)
    assert r.returncode != 0
    assert "imagenette" in r.stderr and "Available options" in r.stderr


def test_wandb_mode_respects_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "disabled")
    assert compose([], tmp_path).wandb.mode == "disabled"
    monkeypatch.delenv("WANDB_MODE")
    assert compose([], tmp_path).wandb.mode == "offline"
    assert compose(["wandb.mode=online"], tmp_path).wandb.mode == "online"


def test_wandb_sweep_parameters_are_valid_overrides(tmp_path):
    import yaml

    sweep = yaml.safe_load((CONF / "sweeps" / "msat_hparams.yaml").read_text())
    assert sweep["command"][:3] == ["${env}", "${interpreter}", "${program}"] and "${args_no_hyphens}" in sweep["command"]
    fixed = [c for c in sweep["command"] if "=" in c and not c.startswith("$")]
    cfg = compose(fixed + [f"{k}=0.5" for k in sweep["parameters"]], tmp_path)
    assert cfg.method.hparams.alpha == 0.5 and cfg.method.hparams.tau_rd == 0.5
    assert f"acc_T{sweep['metric']['name'].split('T')[-1]}" == sweep["metric"]["name"]


def test_the_recorded_commit_is_the_one_loaded(monkeypatch, tmp_path):
    """A multirun that outlives a commit records the code it loaded: every task reads the commit
    first thing, before it reads a file, and the read is cached for the process."""
    from msat.harness import tracking
    from msat.harness.tasks import convert, evaluate, train

    tracking.git_commit.cache_clear()
    first = tracking.git_commit()
    assert tracking.git_commit() is first and tracking.git_commit.cache_info().currsize == 1

    class Pinned(Exception):
        pass

    def pin():
        raise Pinned

    cfg = compose(["experiment=demo"], tmp_path)  # no checkpoint there: anything past the pin would fail otherwise
    for module, task in ((convert, convert.run_convert), (evaluate, evaluate.run_evaluate), (train, train.run_train)):
        monkeypatch.setattr(module, "git_commit", pin)
        with pytest.raises(Pinned):
            task(cfg)


@pytest.mark.parametrize("override,match", [
    ("method.sc.p=1.5", r"\[0, 1\]"),
    ("method.sc.reset=both", "fired' or 'emitted"),
    ("method.sc.early_steps=0", "positive integer"),
])
def test_spike_confidence_values_are_checked_with_sc_off_too(tmp_path, override, match):
    """``method=msat`` has SC off; a value out of range is still a mistake, refused before a checkpoint is read."""
    from msat.harness.tasks.evaluate import eval_settings

    cfg = compose(["experiment=demo", "method=msat", override], tmp_path)
    assert not cfg.method.sc.enabled
    with pytest.raises(ValueError, match=match):
        eval_settings(cfg)
    eval_settings(compose(["experiment=demo", "method=msat"], tmp_path))  # the defaults pass
