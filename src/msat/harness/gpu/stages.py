"""The stages of the GPU plan. Each takes a :class:`~msat.harness.gpu.budget.StageContext`, keeps to
its deadline by shrinking its own work, writes what it has under ``ctx.out`` as soon as it
has it, and returns a small dict for ``status.json``. ``ctx.args`` holds the settings of
:mod:`msat.harness.gpu.cli`; ``ctx.shared`` carries the decoded data and the trained net between
stages. Every line runs on the CPU too (``--dry-run``: a tiny net, a few images and steps).
"""

from __future__ import annotations

import io
import logging
import math
import platform
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from ...analysis.energy import energy_ratio, layer_ops
from ...conversion.methods import METHODS
from ...conversion.pipeline import convert
from ...conversion.prepare import prepare_ann
from ...conversion.recipe import Recipe
from ...models import create_model
from .. import REPO
from ..checkpoint import FORMAT_VERSION, load_model
from ..data import CIFAR10_NORMALIZATION
from ..evaluation import REPORT_STEPS, count_correct, evaluate_snn, summarize
from ..training import train_epoch
from .budget import StageContext
from .packed import PARTS, decode

log = logging.getLogger(__name__)
MEAN, STD = CIFAR10_NORMALIZATION["mean"], CIFAR10_NORMALIZATION["std"]
SHARD_BYTES = 15 * 2**20  # files that come back from the GPU machine: 16 MiB each at most
# label -> recipe, in the order the evaluation stage runs them (the first are kept when time runs
# short): the paper's method and its SC, the best lever of the CPU study, then the Fig. 5 ablations,
# burst, and the comparison methods
_MSAT = METHODS["msat"].for_model("vgg16")
EVAL_METHODS: dict[str, Recipe] = {
    "const": METHODS["const"],
    "msat": _MSAT,
    "msat_sc": METHODS["msat_sc"].for_model("vgg16"),
    # the CPU study's best beyond-the-paper lever at T = 32, and the fewest-steps search's T = 32 winner
    # (docs/results/cifar10/README.md)
    "msat_v0.5_p99.9": _MSAT.replace(percentile=0.999, v_init=0.5),
    "search_T32": METHODS["calibration_light"].replace(percentile=0.999, v_init=0.5),
    **{name: METHODS[name].for_model("vgg16") for name in ("const_0.5", "const_0.2", "dtt", "det", "burst", "ltb",
                                                           "calibration_light", "rts")},
}


def device_of(args) -> torch.device:
    if args.device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(args.device)


def normalize(images: torch.Tensor, dtype=torch.float32) -> torch.Tensor:
    mean = torch.tensor(MEAN, device=images.device, dtype=dtype).view(1, 3, 1, 1)
    std = torch.tensor(STD, device=images.device, dtype=dtype).view(1, 3, 1, 1)
    return (images.to(dtype) / 255.0 - mean) / std


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def eval_data(ctx: StageContext):
    """(test x, test y, calibration batches) on the device, decoded once per run."""
    if "test" not in ctx.shared:
        dev, a = device_of(ctx.args), ctx.args
        prefix = Path(a.packed) / PARTS["eval"]
        x, y = decode(prefix, "test", dev)
        c, _ = decode(prefix, "calibration", dev)
        if a.max_test:
            x, y = x[:a.max_test], y[:a.max_test]
        ctx.shared["test"] = (normalize(x), y)
        cal = normalize(c[:a.cal_batches * a.cal_batch_size])
        ctx.shared["cal"] = [cal[i:i + a.cal_batch_size] for i in range(0, len(cal), a.cal_batch_size)]
    return ctx.shared["test"][0], ctx.shared["test"][1], ctx.shared["cal"]


# ----------------------------------------------------------------- stage 0: setup
def setup(ctx: StageContext) -> dict:
    dev = device_of(ctx.args)
    info = {"python": platform.python_version(), "torch": torch.__version__, "cuda": torch.version.cuda,
            "device": torch.cuda.get_device_name(dev) if dev.type == "cuda" else platform.processor() or "cpu"}
    for mod in ("hydra", "omegaconf", "spikingjelly", "triton"):
        try:
            info[mod] = getattr(__import__(mod), "__version__", "present")
        except ImportError:
            info[mod] = None
    t0 = time.perf_counter()
    x, y, cal = eval_data(ctx)
    sync(dev)
    info.update(decode_s=round(time.perf_counter() - t0, 2), test_images=len(y), calibration_images=sum(len(c) for c in cal))
    return info


# ----------------------------------------------------------------- stage 1: the GPU tests
def gpu_tests(ctx: StageContext) -> dict:
    cmd = [sys.executable, "-m", "pytest", "-m", "gpu", "-q", "-p", "no:cacheprovider", "tests/test_gpu.py"]
    try:
        r = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=max(1.0, ctx.left()))
        text, rc = r.stdout + r.stderr, r.returncode
    except subprocess.TimeoutExpired as exc:
        text, rc = f"{exc.stdout or ''}\n{exc.stderr or ''}\ntimed out", 124
    (ctx.out / "tests.txt").write_text(text if isinstance(text, str) else text.decode())
    last = [line for line in str(text).splitlines() if line.strip()][-1:] or [""]
    return {"returncode": rc, "summary": last[0]}


# ----------------------------------------------------------------- stage 3: training
def augment(x: torch.Tensor, pad: int = 4, cutout: int = 16, gen: torch.Generator | None = None) -> torch.Tensor:
    """Random crop (zero padding, i.e. the mean after normalisation), horizontal flip and
    Cutout (one hole), batched on the tensor's device."""
    B, _, H, W = x.shape
    dev = x.device
    xp = F.pad(x, (pad, pad, pad, pad))
    i = torch.randint(0, 2 * pad + 1, (B,), device=dev, generator=gen)
    j = torch.randint(0, 2 * pad + 1, (B,), device=dev, generator=gen)
    rows = (i[:, None] + torch.arange(H, device=dev))[:, None, :, None]
    cols = (j[:, None] + torch.arange(W, device=dev))[:, None, None, :]
    x = xp[torch.arange(B, device=dev)[:, None, None, None], torch.arange(x.shape[1], device=dev)[None, :, None, None],
           rows, cols]
    flip = torch.rand(B, device=dev, generator=gen) < 0.5
    x = torch.where(flip[:, None, None, None], x.flip(3), x)
    if cutout:
        cy = torch.randint(0, H, (B, 1, 1), device=dev, generator=gen)
        cx = torch.randint(0, W, (B, 1, 1), device=dev, generator=gen)
        ys, xs = torch.arange(H, device=dev)[None, :, None], torch.arange(W, device=dev)[None, None, :]
        top, left = cy - cutout // 2, cx - cutout // 2  # a cutout x cutout box centred there, clipped at the edges
        hole = (ys >= top) & (ys < top + cutout) & (xs >= left) & (xs < left + cutout)
        x = x * (~hole)[:, None].to(x.dtype)
    return x


@torch.no_grad()
def accuracy(model, x: torch.Tensor, y: torch.Tensor, batch: int = 1000) -> float:
    model.eval()
    sums = count_correct(model, ((x[i:i + batch], y[i:i + batch]) for i in range(0, len(y), batch)), x.device)
    return 100.0 * float(sums[0]) / len(y)


def lr_at(step: int, warmup: int, total: int, peak: float) -> float:
    """Linear warm-up to ``peak``, then cosine decay to 0 at ``total``."""
    if step < warmup:
        return peak * (step + 1) / warmup
    return 0.5 * peak * (1.0 + math.cos(math.pi * min(1.0, (step - warmup) / max(1, total - warmup))))


def _training_images(ctx: StageContext, dev):
    """Every training image (the calibration images are training images too), normalised, on the device."""
    a = ctx.args
    xs, ys = decode(Path(a.packed) / PARTS["train"], "train", dev)
    cx, cy = decode(Path(a.packed) / PARTS["eval"], "calibration", dev)
    x_all, y_all = torch.cat([xs, cx]), torch.cat([ys, cy])
    if a.max_train:
        x_all, y_all = x_all[:a.max_train], y_all[:a.max_train]
    return normalize(x_all), y_all


def _augmented(x_all, y_all, perm, bs: int, steps: int, gen, channels_last: bool):
    """One epoch of augmented batches in the order of ``perm``."""
    for k in range(steps):
        idx = perm[k * bs:(k + 1) * bs]
        xb = augment(x_all[idx], gen=gen)
        yield (xb.contiguous(memory_format=torch.channels_last) if channels_last else xb), y_all[idx]


def train(ctx: StageContext) -> dict:
    """VGG16 from scratch for as many epochs as fit the stage's time (msat.harness.training's loop:
    SGD, bf16 autocast, a warm-up epoch and a cosine decay fitted to the epochs that fit)."""
    a, dev = ctx.args, device_of(ctx.args)
    t_start = time.perf_counter()
    tx, ty, _ = eval_data(ctx)
    x_all, y_all = _training_images(ctx, dev)
    torch.manual_seed(a.seed)
    spec = {"name": "vgg16", "num_classes": 10, "in_channels": 3, "width": a.width}
    model = create_model(**spec).to(dev)
    cl = dev.type == "cuda"
    if cl:
        model = model.to(memory_format=torch.channels_last)
    opt = torch.optim.SGD(model.parameters(), lr=a.lr, momentum=0.9, nesterov=True, weight_decay=5e-4)
    bs = min(a.train_batch, len(y_all))
    steps_per_epoch = len(y_all) // bs
    gen = torch.Generator(device=dev).manual_seed(a.seed)
    epochs, history = a.max_epochs, []
    run = {"step": 0, "total": a.max_epochs * steps_per_epoch, "loss": None}
    reserve = 15.0  # the checkpoint's save and the last test pass

    def set_lr():  # warm-up: the first epoch
        for g in opt.param_groups:
            g["lr"] = lr_at(run["step"], steps_per_epoch, run["total"], a.lr)

    def count(loss, logits, y):
        run["step"] += 1
        run["loss"] = loss

    autocast = lambda: torch.autocast(dev.type, dtype=torch.bfloat16, enabled=dev.type == "cuda")  # noqa: E731
    for epoch in range(a.max_epochs):
        if epoch >= epochs:
            break
        t0 = time.perf_counter()
        model.train()
        perm = torch.randperm(len(y_all), device=dev, generator=gen)
        train_epoch(model, _augmented(x_all, y_all, perm, bs, steps_per_epoch, gen, cl), opt, before_step=set_lr,
                    after_step=count, autocast=autocast, label_smoothing=0.1)
        last_loss = float(run["loss"].detach())
        acc = accuracy(model, tx, ty)
        sync(dev)
        dt = time.perf_counter() - t0
        history.append({"epoch": epoch + 1, "loss": last_loss, "test_acc": acc, "seconds": round(dt, 2)})
        log.info("train: epoch %d, loss %.3f, test %.2f%%, %.1f s", epoch + 1, last_loss, acc, dt)
        if epoch == 0:  # fit the number of epochs (and so the schedule) to the time left
            epochs = max(1, min(a.max_epochs, int((ctx.left() - reserve) // dt) + 1))
            run["total"] = epochs * steps_per_epoch
            log.info("train: %.1f s per epoch: %d epochs fit", dt, epochs)
    model.eval()
    ctx.shared["model"] = model.float().to(memory_format=torch.contiguous_format)
    ckpt = {"format_version": FORMAT_VERSION, "kind": "ann", "model_spec": spec, "epoch": len(history),
            "best_acc": max(h["test_acc"] for h in history), "history": history, "seed": a.seed,
            "train": {"epochs": epochs, "batch_size": bs, "lr": a.lr, "weight_decay": 5e-4, "momentum": 0.9,
                      "schedule": "warm-up 1 epoch + cosine", "augment": "crop 4, flip, cutout 16", "amp": "bf16"},
            "model": {k: (v.half() if v.is_floating_point() else v).cpu() for k, v in model.state_dict().items()},
            "dtype": "float16", "exported_from": "gpu runner"}
    shards = save_shards(ckpt, ctx.out / "vgg16.pt")
    return {"epochs": len(history), "test_acc": history[-1]["test_acc"], "history": history, "shards": shards,
            "images": len(y_all), "batch_size": bs, "seconds": round(time.perf_counter() - t_start, 1)}


def save_shards(obj, path: Path, shard_bytes: int = SHARD_BYTES) -> list[str]:
    """``torch.save(obj)`` split into ``path.part0``, ``path.part1``, ... of at most ``shard_bytes``."""
    buf = io.BytesIO()
    torch.save(obj, buf)
    data = buf.getvalue()
    names = []
    for k, i in enumerate(range(0, len(data), shard_bytes)):
        p = path.with_name(f"{path.name}.part{k}")
        p.write_bytes(data[i:i + shard_bytes])
        names.append(p.name)
    return names


def join_shards(path: Path, out: Path) -> Path:
    """Put ``path.part0``, ``path.part1``, ... back together into ``out`` (a train_ann.py checkpoint)."""
    parts = sorted(Path(path).parent.glob(Path(path).name + ".part*"), key=lambda p: int(p.suffix[5:]))
    if not parts:
        raise FileNotFoundError(f"no shards {path}.part0, ... found")
    Path(out).write_bytes(b"".join(p.read_bytes() for p in parts))
    return Path(out)


# ----------------------------------------------------------------- stage 4: evaluation
def stage_model(ctx: StageContext, dev: torch.device):
    """(the net, where it came from): the one the train stage handed on, else ``--checkpoint``."""
    model = ctx.shared.get("model")
    if model is not None:
        return model, "trained in this run"
    return load_model(ctx.args.checkpoint).to(dev), ctx.args.checkpoint


def evaluate(ctx: StageContext) -> dict:
    a, dev = ctx.args, device_of(ctx.args)
    model, source = stage_model(ctx, dev)
    x, y, cal = eval_data(ctx)
    ann = prepare_ann(model)
    steps = [t for t in REPORT_STEPS if t <= a.T] or [a.T]
    data = torch.utils.data.TensorDataset(x, y)
    curves, done, estimate = {}, [], None
    labels = [m for m in a.methods.split(",") if m] if a.methods else list(EVAL_METHODS)
    for label in labels:
        if estimate is not None and ctx.left() < estimate:
            log.warning("evaluate: %s and the methods after it do not fit (%.0f s left, ~%.0f s each)", label,
                        ctx.left(), estimate)
            break
        t0 = time.perf_counter()
        snn = convert(model, cal, EVAL_METHODS[label])
        raw = evaluate_snn(snn, ann, data, T=a.T, batch_size=a.eval_batch, device=dev, chunk=a.chunk,
                           sin=label == "msat", threshold_traces=False, firing_rates=True, record_at=steps, progress=False)
        res = summarize(raw, snn, steps, 0.1)
        sync(dev)
        secs = time.perf_counter() - t0
        c = {"acc": res["acc"], "n_images": res["n_samples"], "ann_acc": res["ann_acc"], "seconds": round(secs, 2),
             "sim_seconds": round(res["elapsed_s"], 2)}
        if label == "msat":
            c["firing_rate"] = res["firing_rate"]
            c["sin_ratio_last"] = res["sin"]["ratio"][-1]
            c["ans"] = res["sin"]["ans"]
            c["energy"] = energy_ratio(layer_ops(ann, x[:1]), res["spikes_per_neuron"], res["neurons_per_sample"])
        curves[label] = c
        done.append(label)
        estimate = 1.2 * max(estimate or 0.0, secs)
        ctx.write_json("curves.json", {"checkpoint": source, "T": a.T, "curves": curves})
        log.info("evaluate: %s %s in %.1f s", label, " ".join(f"T={t}: {res['acc'][t - 1]:.2f}" for t in steps), secs)
    return {"methods": done, "not_run": [m for m in labels if m not in done], "checkpoint": source}
