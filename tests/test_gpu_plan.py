"""The GPU plan (scripts/gpu/run.sh, msat.harness.gpu) on the CPU: the packed data, the stage runner's
time budgets, the augmentation, the checkpoint shards, and a dry run of every stage."""

import json

import pytest
import torch

from conftest import fake_cifar_tree
from msat.harness.gpu import cli
from msat.harness.gpu.budget import Runner, Stage
from msat.harness.gpu.packed import PackedDataError, decode, pack_cifar10, read_index
from msat.harness.gpu.stages import augment, join_shards, lr_at, save_shards


@pytest.fixture(scope="module")
def packed(tmp_path_factory):
    root = tmp_path_factory.mktemp("gpu_plan")
    data = fake_cifar_tree(root / "jpeg", per_class=(3, 2))
    pack_cifar10(data, root / "packed", calibration=8, seed=0)
    return data, root / "packed"


def test_packed_parts_decode_to_the_same_pixels_as_the_files(packed):
    from PIL import Image

    data, prefix = packed
    meta = read_index(prefix / "cifar10_eval")
    assert sorted(meta["splits"]) == ["calibration", "test"] and len(meta["splits"]["test"]["labels"]) == 20
    assert len(read_index(prefix / "cifar10_train")["splits"]["train"]["labels"]) == 30 - 8
    x, y = decode(prefix / "cifar10_eval", "test")
    assert x.shape == (20, 3, 32, 32) and x.dtype == torch.uint8 and y.tolist() == sorted(y.tolist())
    first = torch.tensor(list(Image.open(data / "test/airplane/0.jpg").convert("RGB").getdata())).view(32, 32, 3)
    # the same libjpeg-turbo decoder as PIL's: identical pixels, or off by a rounding step at most
    assert (x[0].permute(1, 2, 0).int() - first.int()).abs().max() <= 1
    with pytest.raises(PackedDataError, match="not found"):
        read_index(prefix / "nothing")
    with pytest.raises(PackedDataError, match="no test/ folder"):
        pack_cifar10(data / "train", prefix / "x")


def test_runner_gives_each_stage_its_budget_skips_what_does_not_fit_and_survives_a_failure(tmp_path):
    now = [0.0]
    clock = lambda: now[0]  # noqa: E731
    seen = {}

    def work(seconds):
        def run(ctx):
            seen[ctx.out.name] = seen.get(ctx.out.name, []) + [round(ctx.left(), 3)]
            now[0] += seconds
            return {"ran": seconds}
        return run

    def boom(ctx):
        raise RuntimeError("CUDA error")

    stages = [Stage("a", 30, 5, work(10)), Stage("b", 100, 5, boom), Stage("c", 100, 55, work(1)),
              Stage("d", 100, 5, work(1))]
    runner = Runner(tmp_path, total_s=70, reserve_s=10, clock=clock)
    status = runner.run(stages, None, args=None)
    st = status["stages"]
    assert st["a"]["status"] == "done" and st["a"]["allowed_s"] == 30  # its budget, not all 60 s left
    assert st["b"]["status"] == "failed" and "CUDA error" in st["b"]["error"]
    assert st["c"]["status"] == "skipped" and "50 s left, the stage needs at least 55" in st["c"]["reason"]
    assert st["d"]["status"] == "done" and st["d"]["allowed_s"] == 50
    assert json.loads((tmp_path / "status.json").read_text())["stages"]["d"]["status"] == "done"
    with pytest.raises(ValueError, match="unknown stage"):
        Runner(tmp_path, 70, clock=clock).run(stages, ["a", "z"], args=None)


def test_augment_keeps_shape_and_content_and_cutout_makes_one_hole():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(64, 3, 32, 32, generator=g) + 1.0  # no zeros, so padding and holes show
    y = augment(x, pad=4, cutout=0, gen=g)
    assert y.shape == x.shape
    # a crop of the padded image: every row of pixels is a shifted (maybe flipped) piece of the original
    zero_free = (y != 0).all(1)
    assert zero_free.float().mean() > 0.75
    z = augment(x, pad=0, cutout=8, gen=g)
    holes = (z == 0).all(1).sum((1, 2))
    assert ((holes > 0) & (holes <= 64)).all()  # one 8x8 hole, clipped at the edges
    assert lr_at(0, 10, 100, 1.0) == pytest.approx(0.1) and lr_at(100, 10, 100, 1.0) == pytest.approx(0.0)


def test_checkpoint_shards_join_into_a_loadable_checkpoint(tmp_path):
    import msat

    m = msat.create_model("vgg16", 10, 3, 0.0625)
    ckpt = {"format_version": 1, "kind": "ann", "model_spec": {"name": "vgg16", "num_classes": 10, "in_channels": 3,
                                                               "width": 0.0625},
            "model": {k: v.half() if v.is_floating_point() else v for k, v in m.state_dict().items()}}
    names = save_shards(ckpt, tmp_path / "vgg16.pt", shard_bytes=20_000)
    assert len(names) > 1 and all((tmp_path / n).stat().st_size <= 20_000 for n in names)
    loaded = msat.load_model(join_shards(tmp_path / "vgg16.pt", tmp_path / "joined.pt"))
    torch.testing.assert_close(loaded.classifier.weight, m.classifier.weight.half().float())


def test_dry_run_of_every_stage_but_the_gpu_tests(packed, tmp_path):
    _, prefix = packed
    out = tmp_path / "out"
    rc = cli.main(["setup", "speed", "train", "evaluate", "exit", "--dry-run", "--device", "cpu", "--out", str(out),
                   "--packed", str(prefix), "--time-limit", "300"])
    assert rc == 0
    status = json.loads((out / "status.json").read_text())
    assert [k for k in status["stages"]] == ["setup", "speed", "train", "evaluate", "exit"]
    assert all(v["status"] == "done" for v in status["stages"].values())
    assert status["stages"]["setup"]["result"]["test_images"] == 16
    speed = json.loads((out / "speed.json").read_text())
    assert {"dense", "const_step", "const_chunk", "msat_step", "msat_chunk"} <= set(speed["contenders"])
    curves = json.loads((out / "curves.json").read_text())
    assert curves["checkpoint"] == "trained in this run" and set(curves["curves"]) == {"const", "msat", "msat_sc"}
    assert all(len(c["acc"]) == 8 and c["n_images"] == 16 for c in curves["curves"].values())
    assert "energy" in curves["curves"]["msat"] and len(curves["curves"]["msat"]["sin_ratio_last"]) == 8
    assert (out / "vgg16.pt.part0").exists()
    ex = json.loads((out / "exit.json").read_text())
    assert ex["n_images"] == 16 and ex["held_out_images"] == 16 and 1 <= ex["fixed_T_same_acc"] <= 8
    assert 1 <= ex["mean_steps"] <= 8 and len(ex["fixed_curve"]) == 8 and ex["fixed_s"] > 0 and ex["adaptive_s"] > 0
    # a rerun of one stage: evaluate alone falls back to a checkpoint file
    import msat

    ck = join_shards(out / "vgg16.pt", tmp_path / "vgg16.pt")
    assert isinstance(msat.load_model(ck), torch.nn.Module)
    rc = cli.main(["evaluate", "--dry-run", "--device", "cpu", "--out", str(tmp_path / "again"), "--packed", str(prefix),
                   "--checkpoint", str(ck), "--methods", "const", "--time-limit", "60"])
    assert rc == 0
    again = json.loads((tmp_path / "again" / "curves.json").read_text())
    assert again["checkpoint"] == str(ck) and list(again["curves"]) == ["const"]
    assert cli.main(["evaluate", "--methods", "magic", "--out", str(tmp_path / "x")]) == 2


@pytest.mark.e2e
def test_run_sh_dry_run_of_the_whole_plan(packed, tmp_path):
    """scripts/gpu/run.sh as the GPU machine runs it, every stage (the GPU tests skip here)."""
    import os
    import subprocess

    from conftest import ROOT

    _, prefix = packed
    env = dict(os.environ, OUT=str(tmp_path / "out"), PACKED=str(prefix), TIME_LIMIT="400", WHEELS=str(tmp_path / "none"),
               GPU_ARGS="--dry-run --device cpu")
    r = subprocess.run(["bash", str(ROOT / "scripts/gpu/run.sh")], capture_output=True, text=True, env=env, cwd=tmp_path,
                       timeout=600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    status = json.loads((tmp_path / "out" / "status.json").read_text())
    assert [k for k in status["stages"]] == ["setup", "tests", "speed", "train", "evaluate", "exit"]
    assert all(v["status"] == "done" for v in status["stages"].values()), status
    assert "skipped" in (tmp_path / "out" / "tests.txt").read_text()  # no CUDA here: the GPU tests skip
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        "curves.json", "exit.json", "log.txt", "speed.json", "status.json", "tests.txt", "vgg16.pt.part0"]
