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
from typing import Any, Callable, Mapping, Optional

import torch
import torch.nn.functional as F
from torch import nn

from ..models import create_model
from .checkpoint import FORMAT_VERSION, CheckpointError, atomic_save, load_ann_checkpoint, load_init_weights
from .data import DataSplits, EpochBatchSampler, make_loader
from .distributed import DistInfo, all_reduce_sum, any_rank, barrier

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


def _unwrap(model: nn.Module) -> nn.Module:
    return model.module if hasattr(model, "module") else model


@torch.no_grad()
def evaluate_ann(model: nn.Module, dataset, batch_size: int, device: torch.device, info: DistInfo = DistInfo(),
                 channels_last: bool = False, num_workers: int = 0) -> tuple[float, float]:
    """(accuracy %, mean loss) on ``dataset``, sharded over ranks and summed exactly."""
    model.eval()
    shard = torch.utils.data.Subset(dataset, range(info.rank, len(dataset), info.world))
    loader = make_loader(shard, batch_size, num_workers)
    sums = torch.zeros(3, dtype=torch.float64, device=device)  # correct, loss, count
    for x, y in loader:
        x, y = x.to(device), y.to(device)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        logits = model(x).float()
        sums[0] += (logits.argmax(1) == y).sum()
        sums[1] += F.cross_entropy(logits, y, reduction="sum")
        sums[2] += len(y)
    all_reduce_sum(sums, info)
    n = max(float(sums[2]), 1.0)
    return 100.0 * float(sums[0]) / n, float(sums[1]) / n


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
    ckpt_dir = Path(ckpt_dir)
    last_path, best_path = ckpt_dir / "last.pt", ckpt_dir / "best.pt"
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
    decay, no_decay = [], []
    for p in model.parameters():
        (no_decay if p.ndim <= 1 and train.get("no_decay_bn_bias", False) else decay).append(p)
    groups = [{"params": decay, "weight_decay": float(train["weight_decay"])}]
    if no_decay:
        groups.append({"params": no_decay, "weight_decay": 0.0})
    optimizer = torch.optim.SGD(groups, lr=float(train["lr"]), momentum=float(train["momentum"]),
                                nesterov=bool(train.get("nesterov", False)))

    sampler = EpochBatchSampler(len(splits.train), batch_size, seed, shuffle=True, drop_last=True,
                                rank=info.rank, world=info.world)
    steps_per_epoch = len(sampler)
    if steps_per_epoch == 0:
        raise ValueError(
            f"train.batch_size={batch_size} is larger than the training set ({len(splits.train)} samples"
            f"{' per rank' if info.enabled else ''})"
        )
    total_steps = epochs * steps_per_epoch
    warmup = int(float(train.get("warmup_epochs", 0)) * steps_per_epoch)

    schedule = train.get("schedule", "cosine")
    milestones = [int(m) * steps_per_epoch for m in (train.get("milestones") or [])]
    gamma = float(train.get("gamma", 0.1))
    if schedule not in ("cosine", "step"):
        raise ValueError(f"train.schedule must be 'cosine' or 'step', got {schedule!r}")

    def lr_lambda(step: int) -> float:  # linear warm-up, then cosine decay to 0 (or steps of gamma)
        if step < warmup:
            return (step + 1) / warmup
        if schedule == "step":
            return gamma ** sum(step >= m for m in milestones)
        return 0.5 * (1.0 + math.cos(math.pi * (step - warmup) / max(1, total_steps - warmup)))

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda)
    start_epoch, start_batch, global_step, best_acc, history, run_id = 0, 0, 0, -1.0, [], None
    init_epochs = 0  # epochs of the checkpoint this run was initialised from (train.init_from), and its own
    if ckpt is not None:
        if ckpt["train"]["epochs"] != epochs or ckpt["train"]["batch_size"] != batch_size:
            raise CheckpointError(
                f"resume: the checkpoint was trained with epochs={ckpt['train']['epochs']}, batch_size="
                f"{ckpt['train']['batch_size']}; the config asks for epochs={epochs}, batch_size={batch_size}"
            )
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        scheduler.load_state_dict(ckpt["scheduler"])
        start_epoch, start_batch = int(ckpt["epoch"]), int(ckpt["batch"])
        global_step, best_acc, history = int(ckpt["global_step"]), float(ckpt["best_acc"]), list(ckpt["history"])
        run_id = ckpt.get("wandb_run_id")
        init_epochs = int(ckpt.get("init_epochs", 0))
        set_rng_state(ckpt["rng"])
        if info.is_main:
            log.info("resuming from %s: epoch %d, batch %d", last_path, start_epoch + 1, start_batch)
    elif train.get("init_from") is not None:  # fine-tuning: the weights only; optimizer and schedule start fresh
        init = load_ann_checkpoint(train["init_from"], None, kind)
        load_init_weights(model, init, model_spec, train["init_from"])  # a ReLU net may start a QCFS one
        init_epochs = int(init["epoch"]) + int(init.get("init_epochs", 0))
        if info.is_main:
            log.info("initialised from %s (trained %d epochs, best %.2f%%)", train["init_from"],
                     int(init["epoch"]), float(init["best_acc"]))

    ddp_model = model
    if info.enabled:
        from torch.nn.parallel import DistributedDataParallel as DDP

        ddp_model = DDP(model, device_ids=[device.index] if device.type == "cuda" else None)

    amp = bool(train.get("amp", False)) and device.type == "cuda"
    autocast = (lambda: torch.autocast("cuda", dtype=torch.bfloat16)) if amp else nullcontext
    label_smoothing = float(train.get("label_smoothing", 0.0))
    eval_bs = int(train.get("eval_batch_size", 256))
    interrupt_after = train.get("interrupt_after_steps")  # fault injection for the resume tests

    def save(path: Path, epoch: int, batch: int, tracker_id: Optional[str]) -> None:
        atomic_save(
            {
                "format_version": FORMAT_VERSION,
                "kind": kind,
                "model_spec": dict(model_spec),
                "model": model.state_dict(),
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
                "epoch": epoch,
                "batch": batch,
                "global_step": global_step,
                "best_acc": best_acc,
                "history": history,
                "rng": rng_state(),
                "wandb_run_id": tracker_id,
                "written_by_rank": info.rank,
                "seed": seed,
                "train": {k: train[k] for k in ("epochs", "batch_size", "lr", "weight_decay", "momentum")},
                "init_epochs": init_epochs,
                "init_from": None if train.get("init_from") is None else str(train["init_from"]),
                "config": dict(run_config or {}),
            },
            path,
        )

    factory = tracker_factory or (lambda rid: nullcontext(None))
    metrics: dict = history[-1] if history else {}
    with factory(run_id) as tracker, StopFlag() as stop:
        tracker_id = getattr(tracker, "run_id", None)
        if tracker is not None:
            tracker.define_step_metric("epoch", "epoch/*")
        for epoch in range(start_epoch, epochs):
            ddp_model.train()
            splits.train.set_epoch(epoch)
            sampler.set_epoch(epoch, start_batch if epoch == start_epoch else 0)
            loader = make_loader(splits.train, batch_size, num_workers, sampler=sampler,
                                 pin_memory=device.type == "cuda")
            sums = torch.zeros(3, dtype=torch.float64, device=device)
            t0 = time.time()
            bar = loader
            if progress and info.is_main:
                from tqdm.auto import tqdm

                bar = tqdm(loader, desc=f"epoch {epoch + 1}/{epochs}", leave=False, dynamic_ncols=True, disable=None)
            batch = start_batch if epoch == start_epoch else 0
            for x, y in bar:
                x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
                if channels_last:
                    x = x.contiguous(memory_format=torch.channels_last)
                with autocast():
                    logits = ddp_model(x)
                    loss = F.cross_entropy(logits.float(), y, label_smoothing=label_smoothing)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                scheduler.step()
                global_step += 1
                batch += 1
                with torch.no_grad():
                    sums += torch.stack([loss.detach().double() * len(y), (logits.argmax(1) == y).sum().double(),
                                         torch.tensor(float(len(y)), dtype=torch.float64, device=device)])
                if info.is_main and tracker is not None and global_step % 20 == 0:
                    tracker.log({"train/loss": float(loss.detach()), "train/lr": scheduler.get_last_lr()[0]}, step=global_step)
                if progress and info.is_main and hasattr(bar, "set_postfix"):
                    bar.set_postfix(loss=f"{float(loss.detach()):.3f}", lr=f"{scheduler.get_last_lr()[0]:.4f}")
                if interrupt_after is not None and global_step == int(interrupt_after):
                    signal.raise_signal(signal.SIGTERM)
                if any_rank(stop.signum is not None, info, device):
                    if info.is_main:
                        save(last_path, epoch, batch, tracker_id)
                    barrier(info)
                    raise TrainingInterrupted(stop.signum or signal.SIGTERM, last_path)
            all_reduce_sum(sums, info)
            train_loss, train_acc = float(sums[0] / sums[2]), 100.0 * float(sums[1] / sums[2])
            test_acc, test_loss = evaluate_ann(model, splits.test, eval_bs, device, info, channels_last, num_workers)
            metrics = {
                "epoch": epoch + 1, "train_loss": train_loss, "train_acc": train_acc, "test_loss": test_loss,
                "test_acc": test_acc, "lr": scheduler.get_last_lr()[0], "epoch_time_s": time.time() - t0,
            }
            history.append(metrics)
            is_best = test_acc > best_acc
            best_acc = max(best_acc, test_acc)
            if info.is_main:
                log.info("epoch %d/%d  loss %.4f  train %.2f%%  test %.2f%%  best %.2f%%  lr %.5f  (%.1fs)", epoch + 1,
                         epochs, train_loss, train_acc, test_acc, best_acc, metrics["lr"], metrics["epoch_time_s"])
                save(last_path, epoch + 1, 0, tracker_id)
                if is_best:
                    save(best_path, epoch + 1, 0, tracker_id)
                if tracker is not None:
                    tracker.log({"epoch": epoch + 1, **{f"epoch/{k}": v for k, v in metrics.items() if k != "epoch"}})
            barrier(info)
        if info.is_main and tracker is not None:
            tracker.summary({"best_test_acc": best_acc, "final_test_acc": metrics.get("test_acc")})
    return {**metrics, "best_acc": best_acc, "history": history, "checkpoint": str(last_path)}


def build_model_from_checkpoint(ckpt: Mapping[str, Any], device: torch.device | str = "cpu") -> nn.Module:
    model = create_model(**ckpt["model_spec"])
    model.load_state_dict(ckpt["model"])
    return model.to(device).eval()
