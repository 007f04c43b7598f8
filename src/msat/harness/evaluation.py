"""Evaluating a converted SNN over a dataset (spec section 4).

One simulation of T steps per batch gives the accuracy after every step t = 1..T; the
ANN runs on the same images beside it. The loop is sharded by whole batches over
torchrun ranks (batch b goes to rank b % world), so every batch is computed exactly as
in a single process and the all-reduced counts give the same curve. After every batch
the partial sums go to a file, so an interrupted evaluation continues where it stopped.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import time
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence

import torch

from ..conversion.prepare import PreRecorder, relu_sites
from ..spiking.network import SpikingNetwork
from ..spiking.simulation import check_readout_start, check_T, readout_chunks
from ..util import progress_bar
from .checkpoint import FORMAT_VERSION, atomic_save, safe_load
from .distributed import DistInfo, all_reduce_sum

log = logging.getLogger(__name__)


def check_checkpoints(checkpoints: Sequence[int], T: int, clip: bool = False) -> list[int]:
    """The report's time-step checkpoints. ``clip``: drop those beyond T (and say so) instead
    of refusing them."""
    cps = sorted({int(t) for t in checkpoints})
    if any(t < 1 for t in cps):
        raise ValueError(f"time-step checkpoints must be >= 1, got {cps}")
    beyond = [t for t in cps if t > T]
    if beyond and not clip:
        raise ValueError(f"time-step checkpoints {beyond} lie outside 1..T={T}; raise eval.T or drop them")
    if beyond:
        log.info("eval.T=%d: the report's checkpoints %s lie beyond T and are left out", T, beyond)
    kept = [t for t in cps if t <= T]
    return kept or [T]


def fingerprint(obj: Mapping[str, Any]) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def batch_seed(seed: int, batch: int) -> int:
    return (int(seed) * 1_000_033 + int(batch)) % (2**62)


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
    theta_traces: bool = True,
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
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    n = len(dataset)
    if n == 0:
        raise ValueError("the evaluation set is empty")
    n_batches = math.ceil(n / batch_size)
    core = {
        "correct": torch.zeros(T, dtype=torch.float64, device=device),
        "ann_correct": torch.zeros((), dtype=torch.float64, device=device),
        "n": torch.zeros((), dtype=torch.float64, device=device),
        "per_image": torch.zeros(n, len(record_at), dtype=torch.float64, device=device),
    }
    rec = [int(t) - 1 for t in record_at]
    if any(not 0 <= t < T for t in rec):
        raise ValueError(f"record_at steps {list(record_at)} must lie in 1..T={T}")
    with snn.monitor(T, firing=firing_rates, theta=theta_traces, sin=sin, device=device, **(monitors or {})) as mons:
        done: list[int] = []
        if partial_path is not None and partial_path.exists() and not keep_running_state:
            saved = safe_load(partial_path, "partial evaluation", map_location=device)
            if saved.get("run_key") == run_key and saved.get("kind") == "eval_partial":
                for k, v in saved["core"].items():
                    core[k].copy_(v)
                mons.load(saved["monitors"])
                done = list(saved["done"])
                if info.is_main:
                    log.info("continuing the evaluation in %s: %d batches done", partial_path, len(done))
        todo = [b for b in range(n_batches) if b % info.world == info.rank and b not in set(done)]
        batches = [list(range(b * batch_size, min(n, (b + 1) * batch_size))) for b in todo]
        loader = torch.utils.data.DataLoader(dataset, batch_sampler=batches, num_workers=num_workers)
        sites = relu_sites(ann)
        t_start, img_steps = time.perf_counter(), 0
        bar = progress_bar(loader, len(batches), f"simulate T={T}", progress and info.is_main)
        for b, (x, y) in zip(todo, bar):
            x, y = x.to(device=device, dtype=dtype), y.to(device)
            if channels_last and x.dim() == 4:
                x = x.contiguous(memory_format=torch.channels_last)
            if mons.needs_ann:
                with PreRecorder(sites) as recorder:
                    logits = ann(x)
                mons.begin_batch(recorder.pre)
                del recorder
            else:
                logits = ann(x)
                mons.begin_batch()
            core["ann_correct"] += (logits.argmax(1) == y).sum()
            core["n"] += len(y)
            first = b * batch_size
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
            done.append(b)
            if partial_path is not None and not keep_running_state:
                atomic_save({"format_version": FORMAT_VERSION, "kind": "eval_partial", "run_key": run_key,
                             "core": core, "monitors": mons.state(), "done": done}, partial_path)
    elapsed = time.perf_counter() - t_start
    for v in core.values():
        all_reduce_sum(v, info)
    for v in mons.state().values():
        all_reduce_sum(v, info)
    return {"core": {k: v.cpu() for k, v in core.items()}, "monitors": mons, "elapsed_s": elapsed,
            "image_steps": img_steps}


def summarize(raw: Mapping[str, Any], snn: SpikingNetwork, checkpoints: Sequence[int], tol: float) -> dict:
    """Accuracy curve, checkpoints, best, Step (first t within ``tol`` of the ANN), and
    per-layer firing rates, theta traces and SIN statistics."""
    core = raw["core"]
    n = float(core["n"])
    T = len(core["correct"])
    ann_acc = 100.0 * float(core["ann_correct"]) / n
    res: dict[str, Any] = summarize_curve(core["correct"], n, checkpoints, tol, ann_acc)
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
    if mons.theta:
        res["theta_traces"] = [m.traces() for m in mons.theta]
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


def summarize_curve(correct: torch.Tensor, n: float, checkpoints: Sequence[int], tol: float,
                    ann_acc: Optional[float]) -> dict:
    acc = (100.0 * correct / n).tolist()
    T = len(acc)
    best_t = max(range(T), key=lambda i: (acc[i], -i))
    within = None
    if ann_acc is not None:
        within = next((t + 1 for t in range(T) if acc[t] >= ann_acc - tol), None)
    return {
        "n_samples": int(n), "T": T, "ann_acc": ann_acc, "acc": acc,
        "acc_at": {str(t): acc[t - 1] for t in check_checkpoints(checkpoints, T, clip=True)},
        "best_acc": acc[best_t], "best_step": best_t + 1, "step_within_tol": within, "tol": tol, "final_acc": acc[-1],
    }


# ----------------------------------------------------------------- directly trained MT-SNNs
@torch.no_grad()
def evaluate_multistep(model, dataset, *, T: int, batch_size: int, device: torch.device, info: DistInfo = DistInfo(),
                       num_workers: int = 0, progress: bool = True, record_at: Sequence[int] = ()) -> dict:
    """Accuracy after every t = 1..T of a :class:`msat.mt.MultiStepNet` (readout averaged over
    steps 1..t), from one run of T steps per batch; sharded over ranks like :func:`evaluate_snn`.
    Each image's correctness at the steps ``record_at`` is kept too (``per_image``, [n, len])."""
    T = check_T(T)
    n = len(dataset)
    if n == 0:
        raise ValueError("the evaluation set is empty")
    record_at = [int(t) for t in record_at]
    if any(not 1 <= t <= T for t in record_at):
        raise ValueError(f"record_at steps must lie in 1..T={T}, got {record_at}")
    model.eval()
    n_batches = math.ceil(n / batch_size)
    mine = [list(range(b * batch_size, min(n, (b + 1) * batch_size))) for b in range(n_batches) if b % info.world == info.rank]
    loader = torch.utils.data.DataLoader(dataset, batch_sampler=mine, num_workers=num_workers)
    correct = torch.zeros(T, dtype=torch.float64, device=device)
    count = torch.zeros((), dtype=torch.float64, device=device)
    per_image = torch.zeros(n, len(record_at), dtype=torch.float64, device=device)
    loader = progress_bar(loader, len(mine), f"evaluate T={T}", progress and info.is_main)
    t0 = time.perf_counter()
    for idx, (x, y) in zip(mine, loader):
        x, y = x.to(device), y.to(device)
        out = model.forward_steps(x, T)  # [T, B, classes]
        cum = torch.cumsum(out.double(), 0)  # the mean over 1..t has the same argmax
        hit = cum.argmax(-1) == y
        correct += hit.sum(1)
        count += len(y)
        if record_at:
            per_image[idx[0] : idx[0] + len(y)] = hit[[t - 1 for t in record_at]].T.double()
    all_reduce_sum(correct, info)
    all_reduce_sum(count, info)
    if record_at:
        all_reduce_sum(per_image, info)
    return {"correct": correct.cpu(), "n": float(count), "elapsed_s": time.perf_counter() - t0,
            "per_image": per_image.cpu()}
