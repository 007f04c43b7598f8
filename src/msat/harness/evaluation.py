"""Evaluating over a dataset (spec section 4): the converted SNN, a directly trained SNN, an ANN.

One simulation of T steps per batch gives the accuracy after every step t = 1..T; the ANN
runs on the same images beside it. The batches are sharded over torchrun ranks whole (batch
b goes to rank b % world, :func:`rank_batches`), so every batch is computed exactly as in a
single process and the all-reduced counts give the same curve. After every batch the partial
sums go to a file (:class:`PartialSums`), so an interrupted evaluation continues where it
stopped. :func:`count_correct` is the one accuracy loop of an ANN.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import time
from pathlib import Path
from typing import Any, Iterator, Mapping, Optional, Sequence

import torch
import torch.nn.functional as F

from ..conversion.prepare import PreRecorder, relu_sites
from ..spiking.network import SpikingNetwork
from ..spiking.simulation import check_readout_start, check_T, readout_chunks
from ..util import progress_bar
from .checkpoint import FORMAT_VERSION, atomic_save, safe_load
from .distributed import DistInfo, all_reduce_sum

log = logging.getLogger(__name__)

REPORT_STEPS = (16, 32, 64, 128, 256)  # the paper's table columns (eval.checkpoints)


def check_steps(steps: Sequence[int], T: int, clip: bool = False) -> list[int]:
    """The report steps (``eval.checkpoints``). ``clip``: drop those beyond T (and say so) instead
    of refusing them."""
    steps = sorted({int(t) for t in steps})
    if any(t < 1 for t in steps):
        raise ValueError(f"the report steps (eval.checkpoints) must be >= 1, got {steps}")
    beyond = [t for t in steps if t > T]
    if beyond and not clip:
        raise ValueError(f"the report steps {beyond} lie outside 1..T={T}; raise eval.T or drop them")
    if beyond:
        log.info("eval.T=%d: the report steps %s lie beyond T and are left out", T, beyond)
    kept = [t for t in steps if t <= T]
    return kept or [T]


def fingerprint(obj: Mapping[str, Any]) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def batch_seed(seed: int, batch: int) -> int:
    return (int(seed) * 1_000_033 + int(batch)) % (2**62)


# ----------------------------------------------------------------- batches, shards and partial sums
def rank_batches(n: int, batch_size: int, info: DistInfo = DistInfo(), done: Sequence[int] = ()) -> list[int]:
    """The batches of an n-item set that this rank evaluates (batch b: rank b % world), less ``done``."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if n == 0:
        raise ValueError("the evaluation set is empty")
    skip = set(done)
    return [b for b in range(math.ceil(n / batch_size)) if b % info.world == info.rank and b not in skip]


def stream(dataset, batches: Sequence[int], batch_size: int, device: torch.device, dtype: Optional[torch.dtype] = None,
           num_workers: int = 0, progress: bool = False, desc: str = "", channels_last: bool = False
           ) -> Iterator[tuple[int, int, torch.Tensor, torch.Tensor]]:
    """``(batch index, index of its first item, x, y)`` of the given batches, on ``device``."""
    n = len(dataset)
    items = [list(range(b * batch_size, min(n, (b + 1) * batch_size))) for b in batches]
    loader = torch.utils.data.DataLoader(dataset, batch_sampler=items, num_workers=num_workers)
    for b, (x, y) in zip(batches, progress_bar(loader, len(items), desc, progress)):
        x, y = x.to(device=device, dtype=dtype), y.to(device)
        if channels_last and x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        yield b, b * batch_size, x, y


class PartialSums:
    """The counters of a sharded evaluation, saved after every batch under ``path`` and read back
    by a rerun with the same ``run_key`` (``path=None``: nothing is saved)."""

    def __init__(self, path: Optional[Path], run_key: Optional[str], info: DistInfo = DistInfo()):
        self.path, self.run_key, self.info = path, run_key, info
        self.done: list[int] = []

    def load(self, core: dict[str, torch.Tensor], mons, device) -> list[int]:
        if self.path is None or not self.path.exists():
            return self.done
        saved = safe_load(self.path, "partial evaluation", map_location=device)
        if saved.get("run_key") == self.run_key and saved.get("kind") == "eval_partial":
            for k, v in saved["core"].items():
                core[k].copy_(v)
            mons.load(saved["monitors"])
            self.done = list(saved["done"])
            if self.info.is_main:
                log.info("continuing the evaluation in %s: %d batches done", self.path, len(self.done))
        return self.done

    def save(self, batch: int, core: dict[str, torch.Tensor], mons) -> None:
        self.done.append(batch)
        if self.path is not None:
            atomic_save({"format_version": FORMAT_VERSION, "kind": "eval_partial", "run_key": self.run_key,
                         "core": core, "monitors": mons.state(), "done": self.done}, self.path)


def reduce_sums(core: dict[str, torch.Tensor], mons, info: DistInfo) -> dict[str, torch.Tensor]:
    for v in core.values():
        all_reduce_sum(v, info)
    for v in mons.state().values():
        all_reduce_sum(v, info)
    return {k: v.cpu() for k, v in core.items()}


def record_positions(record_at: Sequence[int], T: int) -> list[int]:
    """0-based steps at which each image's correctness is kept."""
    rec = [int(t) - 1 for t in record_at]
    if any(not 0 <= t < T for t in rec):
        raise ValueError(f"record_at steps {list(record_at)} must lie in 1..T={T}")
    return rec


# ----------------------------------------------------------------- the ANN
@torch.no_grad()
def count_correct(model, batches, device, loss: bool = False) -> torch.Tensor:
    """float64 ``[correct, summed cross-entropy, count]`` of ``model`` over ``(x, y)`` batches (already
    on ``device``): the one accuracy loop of the project's ANN evaluations."""
    sums = torch.zeros(3, dtype=torch.float64, device=device)
    for x, y in batches:
        logits = model(x).float()
        sums[0] += (logits.argmax(1) == y).sum()
        if loss:
            sums[1] += F.cross_entropy(logits, y, reduction="sum")
        sums[2] += len(y)
    return sums


def _ann_batch(ann, sites, x: torch.Tensor, y: torch.Tensor, mons) -> torch.Tensor:
    """The ANN on the batch (its pre-activations to the monitors that need them); its correct count."""
    if mons.needs_ann:
        with PreRecorder(sites) as recorder:
            logits = ann(x)
        mons.begin_batch(recorder.pre)
        del recorder
    else:
        logits = ann(x)
        mons.begin_batch()
    return (logits.argmax(1) == y).sum()


# ----------------------------------------------------------------- the converted SNN
@torch.inference_mode()  # state is reset before every batch, so no inference tensor outlives the loop
def evaluate_snn(
    snn: SpikingNetwork,
    ann,
    dataset,
    *,
    T: int,
    batch_size: int,
    device: torch.device,
    chunk: int = 8,
    seed: int = 0,
    sin: bool = False,
    threshold_traces: bool = True,
    firing_rates: bool = True,
    monitors: Optional[Mapping[str, Sequence[Any]]] = None,
    record_at: Sequence[int] = (),
    keep_running_state: bool = False,
    readout_start: int = 0,
    dtype: torch.dtype = torch.float32,
    info: DistInfo = DistInfo(),
    partial_path: Optional[Path] = None,
    run_key: Optional[str] = None,
    num_workers: int = 0,
    progress: bool = True,
    channels_last: bool = False,
) -> dict:
    """Simulate ``snn`` on ``dataset`` for T steps per batch; returns raw sums (see :func:`summarize`).

    ``ann`` is the prepared (BN-folded) ANN: its accuracy on the same images is reported,
    and its pre-activations feed the monitors that need them (SIN, ``monitors``: extra
    groups of one monitor per layer, e.g. the layer-error monitors). ``record_at``: steps at
    which every image's correctness is kept (``core["per_image"]``, [n, len(record_at)]),
    for paired tests between methods on the same images.
    """
    T = check_T(T)
    readout_start = check_readout_start(readout_start, T)
    n = len(dataset)
    rank_batches(n, batch_size)  # checks both
    core = {"correct": torch.zeros(T, dtype=torch.float64, device=device),
            "ann_correct": torch.zeros((), dtype=torch.float64, device=device),
            "n": torch.zeros((), dtype=torch.float64, device=device),
            "per_image": torch.zeros(n, len(record_at), dtype=torch.float64, device=device)}
    rec = record_positions(record_at, T)
    sites = relu_sites(ann)
    partial = PartialSums(None if keep_running_state else partial_path, run_key, info)
    with snn.monitor(T, firing=firing_rates, threshold=threshold_traces, sin=sin, device=device, **(monitors or {})) as mons:
        todo = rank_batches(n, batch_size, info, partial.load(core, mons, device))
        t_start, img_steps = time.perf_counter(), 0
        for b, first, x, y in stream(dataset, todo, batch_size, device, dtype, num_workers, progress and info.is_main,
                                     f"simulate T={T}", channels_last):
            core["ann_correct"] += _ann_batch(ann, sites, x, y, mons)
            core["n"] += len(y)
            for t0, cum in readout_chunks(snn, x, T, chunk, seed=batch_seed(seed, b),
                                          keep_running_state=keep_running_state and b > 0,
                                          readout_start=readout_start):
                hit = cum.argmax(-1) == y  # [K, B]
                core["correct"][t0 : t0 + cum.shape[0]] += hit.sum(1)
                for j, t in enumerate(rec):
                    if t0 <= t < t0 + cum.shape[0]:
                        core["per_image"][first : first + len(y), j] = hit[t - t0].double()
            mons.end_batch()
            img_steps += len(y) * T
            partial.save(b, core, mons)
    elapsed = time.perf_counter() - t_start
    return {"core": reduce_sums(core, mons, info), "monitors": mons, "elapsed_s": elapsed, "image_steps": img_steps}


def summarize(raw: Mapping[str, Any], snn: SpikingNetwork, steps: Sequence[int], tol: float) -> dict:
    """Accuracy curve, the report steps, best, Step (first t within ``tol`` of the ANN), and
    per-layer firing rates, threshold traces and SIN statistics."""
    core = raw["core"]
    n = float(core["n"])
    T = len(core["correct"])
    ann_acc = 100.0 * float(core["ann_correct"]) / n
    res: dict[str, Any] = summarize_curve(core["correct"], n, steps, tol, ann_acc)
    res["layers"] = snn.layer_names
    mons = raw["monitors"]
    if mons.firing:
        rates = [m.rate() for m in mons.firing]
        res["firing_rate"] = rates
        res["firing_rate_mean"] = sum(rates) / len(rates)
        total_spikes = sum(float(m.state["spikes"].sum()) for m in mons.firing)
        total_neurons = sum(float(m.state["neurons"]) for m in mons.firing)
        res["firing_rate_all_neurons"] = total_spikes / (total_neurons * T) if total_neurons else 0.0
        res["spikes_per_neuron"] = [m.spikes_per_neuron() for m in mons.firing]
        res["neurons_per_sample"] = [m.neurons_per_sample(n) for m in mons.firing]
    if mons.threshold:
        res["threshold_traces"] = [m.traces() for m in mons.threshold]
    if mons.sin:
        res["sin"] = {
            "ratio": [m.ratio().tolist() for m in mons.sin],
            "ratio_among_fired": [m.ratio_among_fired().tolist() for m in mons.sin],
            "ans": [m.ans() for m in mons.sin],
            "ans_last": mons.sin[-1].ans(),
            "ratio_last_at_T": float(mons.sin[-1].ratio()[-1]),
        }
    res["throughput_image_steps_per_s"] = raw["image_steps"] / raw["elapsed_s"] if raw["elapsed_s"] else None
    res["elapsed_s"] = raw["elapsed_s"]
    return res


def summarize_curve(correct: torch.Tensor, n: float, steps: Sequence[int], tol: float,
                    ann_acc: Optional[float]) -> dict:
    acc = (100.0 * correct / n).tolist()
    T = len(acc)
    best_t = max(range(T), key=lambda i: (acc[i], -i))
    within = None
    if ann_acc is not None:
        within = next((t + 1 for t in range(T) if acc[t] >= ann_acc - tol), None)
    return {
        "n_samples": int(n), "T": T, "ann_acc": ann_acc, "acc": acc,
        "acc_at": {str(t): acc[t - 1] for t in check_steps(steps, T, clip=True)},
        "best_acc": acc[best_t], "best_step": best_t + 1, "step_within_tol": within, "tol": tol, "final_acc": acc[-1],
    }


# ----------------------------------------------------------------- directly trained MT-SNNs
@torch.no_grad()
def evaluate_multistep(model, dataset, *, T: int, batch_size: int, device: torch.device, info: DistInfo = DistInfo(),
                       num_workers: int = 0, progress: bool = True, record_at: Sequence[int] = ()) -> dict:
    """Accuracy after every t = 1..T of a :class:`msat.spiking.plif.MultiStepNet` (readout averaged
    over steps 1..t), from one run of T steps per batch; sharded over ranks like
    :func:`evaluate_snn`. Each image's correctness at the steps ``record_at`` is kept too
    (``per_image``, [n, len])."""
    T = check_T(T)
    n = len(dataset)
    mine = rank_batches(n, batch_size, info)
    rec = record_positions(record_at, T)
    model.eval()
    correct = torch.zeros(T, dtype=torch.float64, device=device)
    count = torch.zeros((), dtype=torch.float64, device=device)
    per_image = torch.zeros(n, len(rec), dtype=torch.float64, device=device)
    t0 = time.perf_counter()
    for _, first, x, y in stream(dataset, mine, batch_size, device, None, num_workers, progress and info.is_main,
                                 f"evaluate T={T}"):
        out = model.forward_steps(x, T)  # [T, B, classes]
        cum = torch.cumsum(out.double(), 0)  # the mean over 1..t has the same argmax
        hit = cum.argmax(-1) == y
        correct += hit.sum(1)
        count += len(y)
        if rec:
            per_image[first : first + len(y)] = hit[rec].T.double()
    for v in (correct, count, per_image):
        all_reduce_sum(v, info)
    return {"correct": correct.cpu(), "n": float(count), "elapsed_s": time.perf_counter() - t0,
            "per_image": per_image.cpu()}
