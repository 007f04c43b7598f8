"""ANN training (paper Section 5 recipe), with atomic checkpoints and exact resume.

The recipe: SGD (momentum 0.9, weight decay 5e-4), lr 0.1 with cosine decay (per
optimizer step), batch 128, 300 epochs; the augmentation lives in the dataset config.

Resume is exact: the sampler's permutation is seeded by (seed, epoch), each sample's
augmentation by (seed, epoch, index), and the checkpoint holds model, optimizer,
scheduler, position (epoch and batch), RNG states and the W&B run id. A SIGTERM or
Ctrl-C stops after the current batch and writes ``last.pt`` first.
"""

from __future__ import annotations

import logging
import math
import random
import signal
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Optional

import torch
import torch.nn.functional as F
from torch import nn

from ..models import create_model
from ..util import progress_bar
from .checkpoint import FORMAT_VERSION, CheckpointError, atomic_save, load_ann_checkpoint, load_init_weights
from .data import DataSplits, EpochBatchSampler, make_loader
from .distributed import DistInfo, all_reduce_sum, any_rank, barrier
from .evaluation import count_correct

log = logging.getLogger(__name__)


class TrainingInterrupted(RuntimeError):
    def __init__(self, signum: int, path: Path):
        self.signum = signum
        self.path = path
        super().__init__(f"interrupted by signal {signum}; saved {path}; continue with resume=true")


class StopFlag:
    """Turns SIGTERM/SIGINT into a flag checked between batches."""

    def __init__(self):
        self.signum: Optional[int] = None
        self._old: dict[int, Any] = {}

    def _handler(self, signum, frame):
        if self.signum is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt  # a second Ctrl-C stops at once
        self.signum = signum

    def __enter__(self):
        for s in (signal.SIGTERM, signal.SIGINT):
            try:
                self._old[s] = signal.signal(s, self._handler)
            except ValueError:  # not the main thread
                pass
        return self

    def __exit__(self, *exc):
        for s, h in self._old.items():
            signal.signal(s, h)


def check_train_args(train: Mapping[str, Any]) -> None:
    for key in ("epochs", "batch_size"):
        v = train[key]
        if isinstance(v, bool) or int(v) != v or int(v) < 1:
            raise ValueError(f"train.{key} must be a positive integer, got {v!r}")
    if not train["lr"] > 0:
        raise ValueError(f"train.lr must be > 0, got {train['lr']}")
    init = train.get("init_from")
    if init is not None and not Path(str(init)).is_file():
        raise CheckpointError(f"train.init_from={str(init)!r} does not exist; pass a train_ann.py checkpoint "
                              "(its weights start this run) or null")


def rng_state() -> dict:
    state = {"torch": torch.get_rng_state(), "python": list(random.getstate()[1]), "python_pos": random.getstate()[2]}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: Mapping[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate((3, tuple(state["python"]), state["python_pos"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


@torch.no_grad()
def evaluate_ann(model: nn.Module, dataset, batch_size: int, device: torch.device, info: DistInfo = DistInfo(),
                 channels_last: bool = False, num_workers: int = 0) -> tuple[float, float]:
    """(accuracy %, mean loss) on ``dataset``, sharded over ranks and summed exactly."""
    model.eval()
    shard = torch.utils.data.Subset(dataset, range(info.rank, len(dataset), info.world))

    def on_device():
        for x, y in make_loader(shard, batch_size, num_workers):
            x = x.to(device)
            yield (x.contiguous(memory_format=torch.channels_last) if channels_last else x), y.to(device)

    sums = count_correct(model, on_device(), device, loss=True)  # correct, loss, count
    all_reduce_sum(sums, info)
    n = max(float(sums[2]), 1.0)
    return 100.0 * float(sums[0]) / n, float(sums[1]) / n


def train_epoch(model: nn.Module, batches: Iterable, optimizer: torch.optim.Optimizer, *,
                before_step: Optional[Callable[[], None]] = None,
                after_step: Optional[Callable[[torch.Tensor, torch.Tensor, torch.Tensor], None]] = None,
                autocast: Callable = nullcontext, label_smoothing: float = 0.0) -> torch.Tensor:
    """One pass of SGD over ``(x, y)`` batches (on the model's device): the one training loop of the
    project (``fit`` and the GPU plan). ``before_step()`` runs before each forward (a learning-rate
    schedule that sets the rate), ``after_step(loss, logits, y)`` after each update (a scheduler
    step, logging, a stop request). Returns float64 ``[summed loss, correct, count]``."""
    sums = None
    for x, y in batches:
        if before_step is not None:
            before_step()
        with autocast():
            logits = model(x)
            loss = F.cross_entropy(logits.float(), y, label_smoothing=label_smoothing)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        with torch.no_grad():
            part = torch.stack([loss.detach().double() * len(y), (logits.argmax(1) == y).sum().double(),
                                torch.tensor(float(len(y)), dtype=torch.float64, device=loss.device)])
        sums = part if sums is None else sums + part
        if after_step is not None:
            after_step(loss, logits, y)
    return sums if sums is not None else torch.zeros(3, dtype=torch.float64)


def make_optimizer(model: nn.Module, train: Mapping[str, Any]) -> torch.optim.SGD:
    """SGD with momentum; weight decay on every parameter, or not on biases and BN (``no_decay_bn_bias``)."""
    decay, no_decay = [], []
    for p in model.parameters():
        (no_decay if p.ndim <= 1 and train.get("no_decay_bn_bias", False) else decay).append(p)
    groups = [{"params": decay, "weight_decay": float(train["weight_decay"])}]
    if no_decay:
        groups.append({"params": no_decay, "weight_decay": 0.0})
    return torch.optim.SGD(groups, lr=float(train["lr"]), momentum=float(train["momentum"]),
                           nesterov=bool(train.get("nesterov", False)))


def lr_factor(train: Mapping[str, Any], steps_per_epoch: int, epochs: int) -> Callable[[int], float]:
    """The learning-rate factor of an optimizer step: linear warm-up, then a cosine decay to 0
    over the run (or steps of ``gamma`` at ``milestones``)."""
    total = epochs * steps_per_epoch
    warmup = int(float(train.get("warmup_epochs", 0)) * steps_per_epoch)
    schedule = train.get("schedule", "cosine")
    milestones = [int(m) * steps_per_epoch for m in (train.get("milestones") or [])]
    gamma = float(train.get("gamma", 0.1))
    if schedule not in ("cosine", "step"):
        raise ValueError(f"train.schedule must be 'cosine' or 'step', got {schedule!r}")

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        if schedule == "step":
            return gamma ** sum(step >= m for m in milestones)
        return 0.5 * (1.0 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))

    return factor


class Run:
    """The state of one training run that a checkpoint holds, and how it is written."""

    def __init__(self, model, optimizer, scheduler, model_spec, train, seed, kind, info, run_config):
        self.model, self.optimizer, self.scheduler = model, optimizer, scheduler
        self.model_spec, self.train, self.seed, self.kind, self.info = model_spec, train, seed, kind, info
        self.run_config = dict(run_config or {})
        self.start_epoch = self.start_batch = self.global_step = 0
        self.best_acc, self.history, self.run_id, self.init_epochs = -1.0, [], None, 0

    def load(self, ckpt: Mapping[str, Any], path: Path) -> None:
        """Continue from a ``last.pt`` of the same recipe."""
        epochs, batch_size = int(self.train["epochs"]), int(self.train["batch_size"])
        if ckpt["train"]["epochs"] != epochs or ckpt["train"]["batch_size"] != batch_size:
            raise CheckpointError(
                f"resume: the checkpoint was trained with epochs={ckpt['train']['epochs']}, batch_size="
                f"{ckpt['train']['batch_size']}; the config asks for epochs={epochs}, batch_size={batch_size}"
            )
        self.model.load_state_dict(ckpt["model"])
        self.optimizer.load_state_dict(ckpt["optimizer"])
        self.scheduler.load_state_dict(ckpt["scheduler"])
        self.start_epoch, self.start_batch = int(ckpt["epoch"]), int(ckpt["batch"])
        self.global_step, self.best_acc = int(ckpt["global_step"]), float(ckpt["best_acc"])
        self.history, self.run_id = list(ckpt["history"]), ckpt.get("wandb_run_id")
        self.init_epochs = int(ckpt.get("init_epochs", 0))
        set_rng_state(ckpt["rng"])
        if self.info.is_main:
            log.info("resuming from %s: epoch %d, batch %d", path, self.start_epoch + 1, self.start_batch)

    def start_from(self, init_from: str) -> None:
        """Fine-tuning: the weights of another checkpoint; optimizer and schedule start fresh."""
        init = load_ann_checkpoint(init_from, None, self.kind)
        load_init_weights(self.model, init, self.model_spec, init_from)  # a ReLU net may start a QCFS one
        self.init_epochs = int(init["epoch"]) + int(init.get("init_epochs", 0))
        if self.info.is_main:
            log.info("initialised from %s (trained %d epochs, best %.2f%%)", init_from, int(init["epoch"]),
                     float(init["best_acc"]))

    def save(self, path: Path, epoch: int, batch: int, tracker_id: Optional[str]) -> None:
        t = self.train
        atomic_save({
            "format_version": FORMAT_VERSION, "kind": self.kind, "model_spec": dict(self.model_spec),
            "model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(), "epoch": epoch, "batch": batch, "global_step": self.global_step,
            "best_acc": self.best_acc, "history": self.history, "rng": rng_state(), "wandb_run_id": tracker_id,
            "written_by_rank": self.info.rank, "seed": self.seed,
            "train": {k: t[k] for k in ("epochs", "batch_size", "lr", "weight_decay", "momentum")},
            "init_epochs": self.init_epochs, "init_from": None if t.get("init_from") is None else str(t["init_from"]),
            "config": self.run_config,
        }, path)


def fit(
    *,
    model_spec: Mapping[str, Any],
    splits: DataSplits,
    train: Mapping[str, Any],
    ckpt_dir: str | Path,
    seed: int,
    resume: bool,
    device: torch.device,
    info: DistInfo = DistInfo(),
    tracker_factory: Optional[Callable[[Optional[str]], Any]] = None,
    run_config: Optional[Mapping[str, Any]] = None,
    progress: bool = True,
    num_workers: int = 0,
    kind: str = "ann",
) -> dict:
    """Train (or resume) a model built by ``create_model(**model_spec)``; returns the final metrics.

    ``kind`` ("ann" or "mt_snn") is written into the checkpoint, so that later stages refuse
    the wrong kind. Rank 0 writes ``last.pt`` and ``best.pt``."""
    check_train_args(train)
    last_path, best_path = Path(ckpt_dir) / "last.pt", Path(ckpt_dir) / "best.pt"
    epochs, batch_size = int(train["epochs"]), int(train["batch_size"])
    ckpt = None
    if resume:
        if not last_path.exists():
            raise CheckpointError(
                f"resume=true but there is no checkpoint at {str(last_path)!r}; run without resume to start fresh"
            )
        ckpt = load_ann_checkpoint(last_path, model_spec, kind)  # refuses another kind or another model
    torch.manual_seed(seed)
    random.seed(seed)
    model = create_model(**model_spec).to(device)
    channels_last = bool(train.get("channels_last", False)) and device.type == "cuda"
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer = make_optimizer(model, train)
    sampler = EpochBatchSampler(len(splits.train), batch_size, seed, shuffle=True, drop_last=True,
                                rank=info.rank, world=info.world)
    if len(sampler) == 0:
        raise ValueError(
            f"train.batch_size={batch_size} is larger than the training set ({len(splits.train)} samples"
            f"{' per rank' if info.enabled else ''})"
        )
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor(train, len(sampler), epochs))
    run = Run(model, optimizer, scheduler, model_spec, train, seed, kind, info, run_config)
    if ckpt is not None:
        run.load(ckpt, last_path)
    elif train.get("init_from") is not None:
        run.start_from(train["init_from"])
    factory = tracker_factory or (lambda rid: nullcontext(None))
    with factory(run.run_id) as tracker, StopFlag() as stop:
        metrics = _epochs(run, splits, sampler, device, stop, tracker, last_path, best_path, progress, num_workers,
                          channels_last)
    return {**metrics, "best_acc": run.best_acc, "history": run.history, "checkpoint": str(last_path)}


def _epochs(run: Run, splits: DataSplits, sampler, device, stop, tracker, last_path: Path, best_path: Path,
            progress: bool, num_workers: int, channels_last: bool) -> dict:
    """The epochs of ``fit`` from where the run stands: train, test, checkpoint, log."""
    train, info, model = run.train, run.info, run.model
    epochs, batch_size = int(train["epochs"]), int(train["batch_size"])
    ddp_model = model
    if info.enabled:
        from torch.nn.parallel import DistributedDataParallel as DDP

        ddp_model = DDP(model, device_ids=[device.index] if device.type == "cuda" else None)
    amp = bool(train.get("amp", False)) and device.type == "cuda"
    autocast = (lambda: torch.autocast("cuda", dtype=torch.bfloat16)) if amp else nullcontext
    tracker_id = getattr(tracker, "run_id", None)
    if tracker is not None:
        tracker.define_step_metric("epoch", "epoch/*")
    metrics: dict = run.history[-1] if run.history else {}
    for epoch in range(run.start_epoch, epochs):
        ddp_model.train()
        splits.train.set_epoch(epoch)
        first = run.start_batch if epoch == run.start_epoch else 0
        sampler.set_epoch(epoch, first)
        loader = make_loader(splits.train, batch_size, num_workers, sampler=sampler, pin_memory=device.type == "cuda")
        bar = progress_bar(loader, len(loader), f"epoch {epoch + 1}/{epochs}", progress and info.is_main)
        step = _after_step(run, epoch, first, bar, stop, tracker, tracker_id, last_path, progress)
        t0 = time.time()
        sums = train_epoch(ddp_model, _on_device(bar, device, channels_last), run.optimizer, after_step=step,
                           autocast=autocast, label_smoothing=float(train.get("label_smoothing", 0.0)))
        all_reduce_sum(sums, info)
        test_acc, test_loss = evaluate_ann(model, splits.test, int(train.get("eval_batch_size", 256)), device, info,
                                           channels_last, num_workers)
        metrics = {"epoch": epoch + 1, "train_loss": float(sums[0] / sums[2]), "train_acc": 100.0 * float(sums[1] / sums[2]),
                   "test_loss": test_loss, "test_acc": test_acc, "lr": run.scheduler.get_last_lr()[0],
                   "epoch_time_s": time.time() - t0}
        _end_epoch(run, metrics, tracker, tracker_id, last_path, best_path)
    if info.is_main and tracker is not None:
        tracker.summary({"best_test_acc": run.best_acc, "final_test_acc": metrics.get("test_acc")})
    return metrics


def _on_device(loader, device, channels_last: bool):
    for x, y in loader:
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        yield (x.contiguous(memory_format=torch.channels_last) if channels_last else x), y


def _after_step(run: Run, epoch: int, first_batch: int, bar, stop, tracker, tracker_id, last_path: Path, progress: bool):
    """What ``fit`` does after every optimizer step: the scheduler, logging, the fault injection of
    the tests, and a stop request (checkpoint, then :class:`TrainingInterrupted`)."""
    info, interrupt_after = run.info, run.train.get("interrupt_after_steps")
    batch = [first_batch]

    def after(loss, logits, y):
        run.scheduler.step()
        run.global_step += 1
        batch[0] += 1
        lr = run.scheduler.get_last_lr()[0]
        if info.is_main and tracker is not None and run.global_step % 20 == 0:
            tracker.log({"train/loss": float(loss.detach()), "train/lr": lr}, step=run.global_step)
        if progress and info.is_main and hasattr(bar, "set_postfix"):
            bar.set_postfix(loss=f"{float(loss.detach()):.3f}", lr=f"{lr:.4f}")
        if interrupt_after is not None and run.global_step == int(interrupt_after):
            signal.raise_signal(signal.SIGTERM)
        if any_rank(stop.signum is not None, info, loss.device):
            if info.is_main:
                run.save(last_path, epoch, batch[0], tracker_id)
            barrier(info)
            raise TrainingInterrupted(stop.signum or signal.SIGTERM, last_path)

    return after


def _end_epoch(run: Run, metrics: dict, tracker, tracker_id, last_path: Path, best_path: Path) -> None:
    run.history.append(metrics)
    is_best = metrics["test_acc"] > run.best_acc
    run.best_acc = max(run.best_acc, metrics["test_acc"])
    if run.info.is_main:
        log.info("epoch %d/%d  loss %.4f  train %.2f%%  test %.2f%%  best %.2f%%  lr %.5f  (%.1fs)", metrics["epoch"],
                 int(run.train["epochs"]), metrics["train_loss"], metrics["train_acc"], metrics["test_acc"],
                 run.best_acc, metrics["lr"], metrics["epoch_time_s"])
        run.save(last_path, metrics["epoch"], 0, tracker_id)
        if is_best:
            run.save(best_path, metrics["epoch"], 0, tracker_id)
        if tracker is not None:
            tracker.log({"epoch": metrics["epoch"], **{f"epoch/{k}": v for k, v in metrics.items() if k != "epoch"}})
    barrier(run.info)
