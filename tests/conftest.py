import inspect
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

os.environ.setdefault("WANDB_MODE", "disabled")  # tests never touch the network
os.environ.setdefault("WANDB_SILENT", "true")
os.environ.setdefault("MPLBACKEND", "Agg")
os.environ.setdefault("MSAT_COMPILE", "0")  # sim.compile=auto runs eager here; the compile tests ask for it

ROOT = Path(__file__).resolve().parents[1]
CONF = ROOT / "conf"
CIFAR_JPEG = Path(os.environ.get("MSAT_CIFAR10_JPEG", ROOT.parent / "shared" / "datasets" / "cifar10-jpeg"))


@pytest.fixture(autouse=True)
def _seeded():
    """Every test starts from the same global RNG state, so random test inputs are the same
    on every run (a failure reproduces), and with the compile guard's record of this process
    cleared (a fallback in one test does not turn compilation off in the next)."""
    import msat.spiking.fused

    torch.manual_seed(0)
    msat.spiking.fused.reset_guard()


E2E_FIXTURES = {"digits_run", "ckpt_root", "curves", "fm_run"}  # fixtures that train or run the CLI
E2E_CALLS = ("cli(", "subprocess.", "torchrun")


def _is_e2e(item) -> bool:
    """A test that trains a net or runs a script as a subprocess belongs to the end-to-end tier
    (``-m e2e``), whether or not it says so: the fast tier stays fast by construction."""
    if E2E_FIXTURES & set(getattr(item, "fixturenames", ())):
        return True
    fn = getattr(item, "function", None)
    try:
        src = inspect.getsource(fn) if fn is not None else ""
    except (OSError, TypeError):
        src = ""
    return any(c in src for c in E2E_CALLS)


def pytest_collection_modifyitems(config, items):
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords and not torch.cuda.is_available():
            item.add_marker(skip)
        if "e2e" not in item.keywords and _is_e2e(item):
            item.add_marker(pytest.mark.e2e)


def compose(overrides=(), root=None, config_name="config"):
    """The Hydra config the scripts would see, with outputs under ``root`` (``config_name="snn"``
    for train_snn.py)."""
    from hydra import compose as hcompose
    from hydra import initialize_config_dir

    import msat.harness.config  # noqa: F401  (the method schema)

    extra = []
    if root is not None:
        extra = [f"paths.root={root}", f"paths.output_dir={root}/out", f"paths.data={root}/data"]
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return hcompose(config_name=config_name, overrides=extra + ["progress=false"] + list(overrides))


def fake_cifar_tree(root, per_class=(14, 2)):
    """A tiny CIFAR-10 JPEG tree root/{train,test}/<class>/ (default: 140 training images, one
    calibration batch of 128, and 20 test images)."""
    from PIL import Image

    g = torch.Generator().manual_seed(0)
    classes = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    for split, n in zip(("train", "test"), per_class):
        for c, name in enumerate(classes):
            d = root / split / name
            d.mkdir(parents=True)
            for i in range(n):
                base = torch.full((32, 32, 3), 20.0 * c)
                img = (base + 60 * torch.rand(32, 32, 3, generator=g)).clamp(0, 255).to(torch.uint8)
                Image.fromarray(img.numpy()).save(d / f"{i}.jpg")
    return root


@pytest.fixture
def cfg_factory(tmp_path):
    return lambda *overrides, root=None: compose(overrides, root or tmp_path)


def cli(script, *args, cwd, env=None, timeout=900):
    """Run an entry script as a user would (W&B disabled unless ``env`` says otherwise)."""
    e = dict(os.environ, WANDB_MODE="disabled")
    e.update(env or {})
    return subprocess.run([sys.executable, str(ROOT / script), *args], capture_output=True, text=True, cwd=cwd,
                          env=e, timeout=timeout)


@pytest.fixture(scope="session")
def digits_run(tmp_path_factory):
    """The demo's first stage through the CLI: a narrow VGG16 trained on the bundled digits."""
    root = tmp_path_factory.mktemp("digits")
    r = cli("train_ann.py", "experiment=demo", f"paths.root={root}", "progress=false", cwd=root)
    assert r.returncode == 0, r.stderr[-3000:]
    return root, r.stdout


@pytest.fixture
def ckpt_root(digits_run, tmp_path):
    """A private copy of the trained digits checkpoint under tmp_path (tests may damage it)."""
    import shutil

    src, _ = digits_run
    ck = tmp_path / "checkpoints/digits/vgg16_w0.25_s0"
    ck.mkdir(parents=True)
    shutil.copy(src / "checkpoints/digits/vgg16_w0.25_s0/last.pt", ck / "last.pt")
    return tmp_path


def wandb_offline_history(run_file) -> dict:
    """The last value logged under each key of an offline W&B run, read from its ``run-*.wandb``
    file (a LevelDB-style log of protobuf records: a 7-byte file header, then 32 KiB blocks of
    chunks, each with a 7-byte header: CRC, length, type). Images come back as their JSON."""
    import json as _json

    from wandb.proto import wandb_internal_pb2 as pb

    data = Path(run_file).read_bytes()
    assert data[:4] == b":W&B", f"{run_file}: not a W&B run file"
    block, pos, buf, records = 32768, 7, b"", []
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # a block's tail too short for a header is padding
            pos += block - pos % block
            continue
        length, kind = int.from_bytes(data[pos + 4:pos + 6], "little"), data[pos + 6]
        if length == 0 and kind == 0:
            break
        buf += data[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):  # a full record, or the last chunk of one
            records.append(buf)
            buf = b""
    last = {}
    for raw in records:
        rec = pb.Record()
        rec.ParseFromString(raw)
        if rec.WhichOneof("record_type") == "history":
            for item in rec.history.item:
                last[item.key or "/".join(item.nested_key)] = _json.loads(item.value_json)
    return last
