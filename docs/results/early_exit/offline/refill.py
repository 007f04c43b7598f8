"""What refilling the batch would save: a prototype timing, not a feature.

    OMP_NUM_THREADS=1 python docs/results/early_exit/offline/refill.py outputs/early_exit/ltb_burst2_light12

On a net whose step modules do not depend on the time step (checked: no running mean, no per-step
bias, no spike confidence, a constant threshold; LTB with at most 2 spikes a step and the light
correction is one), each image's run is the same whichever step of the batch it starts at. So the
rows of images that have exited can take new images (their state set to the start state), and
the batch stays full until the images run out. The prototype replays the learned rule's exit step
for each image (from one ordinary adaptive run) rather than evaluating the rule, so it times the
simulation alone: the rule's features and predictor cost about 5% of an adaptive run (cProfile,
docs/results/early_exit/README.md). It checks that every image's prediction at its exit step
equals the adaptive run's, then times, alternating, one thread: the fixed run of the same
accuracy, the adaptive run, and the refilled run (simulation only), all in batches of --batch-size.
"""
import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

import msat
from msat.analysis.exits import fixed_steps_for

sys.path.insert(0, str(Path(__file__).resolve().parents[4] / "benchmarks"))
from early_exit import load_run, test_images  # noqa: E402


def check_time_invariant(snn) -> None:
    for m in snn._step_modules:
        if isinstance(m, msat.spiking.neuron.IFNeuron):
            if m.rule.needs_mean or m.bias_per_step or m.sc is not None or not isinstance(m.rule.first, float):
                raise SystemExit(f"{m}: its step depends on the time step; the prototype does not cover it")


def reset_rows(snn, rows: torch.Tensor, x_new: torch.Tensor) -> None:
    """Rows ``rows`` of the running batch start over on the images ``x_new``."""
    new = snn.static(x_new)
    new = tuple(new) if isinstance(new, (tuple, list)) else (new,)
    for old, fresh in zip(snn._static_out, new):
        old[rows] = fresh
    for m in snn._step_modules:
        if isinstance(m, msat.spiking.neuron.IFNeuron):
            if m.v is not None:
                v0 = m.v_init
                m.v[rows] = v0 if isinstance(v0, float) else v0.to(m.v.dtype).expand_as(m.v[rows])
        else:
            for name in m._per_sample:
                value = getattr(m, name)
                if value is not None:
                    value[rows] = 0


def refilled(snn, x: torch.Tensor, exit_steps: torch.Tensor, batch: int) -> torch.Tensor:
    """Each image runs exactly ``exit_steps`` steps; exited rows take the next images. Returns the
    prediction of every image at its exit step."""
    n = len(x)
    pred = torch.zeros(n, dtype=torch.long)
    ids = torch.arange(min(batch, n))
    nxt = len(ids)
    left = exit_steps[ids].clone()
    snn.reset()
    snn.start(x[ids])
    S = None
    while len(ids):
        out = snn.advance(1)[0]
        S = out.clone() if S is None else S + out
        left -= 1
        done = left == 0
        if not bool(done.any()):
            continue
        pred[ids[done]] = S[done].argmax(-1)
        rows = done.nonzero().squeeze(1)
        k = min(len(rows), n - nxt)
        if k:  # refill the first k exited rows
            r, new = rows[:k], torch.arange(nxt, nxt + k)
            nxt += k
            reset_rows(snn, r, x[new])
            S[r] = 0
            ids[r], left[r] = new, exit_steps[new]
            rows = rows[k:]
        if len(rows):  # the images have run out: the batch shrinks
            keep = (~torch.isin(torch.arange(len(ids)), rows)).nonzero().squeeze(1)
            if keep.numel() == 0:
                break
            snn.keep_rows(keep)
            S, ids, left = S.index_select(0, keep), ids.index_select(0, keep), left.index_select(0, keep)
    snn.reset()
    return pred


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("run")
    ap.add_argument("--images", type=int, default=1000)
    ap.add_argument("--batch-size", type=int, default=200)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    torch.set_num_threads(1)
    res, snn, rule, _ = load_run(Path(args.run), "learned")
    check_time_invariant(snn)
    x, y = test_images(res, None, args.images)
    T_max, bs = int(res["exit"]["T_max"]), args.batch_size
    batches = [x[i:i + bs] for i in range(0, len(y), bs)]

    def adaptive():
        parts = [msat.simulate_adaptive(snn, b, T_max, rule=rule) for b in batches]
        return torch.cat([p.pred for p in parts]), torch.cat([p.steps for p in parts])

    a_pred, a_steps = adaptive()
    acc = float((a_pred == y).double().mean())
    fixed = torch.cat([msat.simulate(snn, b, T_max) for b in batches], 1).argmax(-1) == y
    T_star = fixed_steps_for(fixed.double().mean(1).tolist(), acc) or T_max
    r_pred = refilled(snn, x, a_steps, bs)
    print(f"images={len(y)} adaptive_acc={100 * acc:.2f} mean_steps={float(a_steps.double().mean()):.2f} "
          f"fixed_T={T_star} refill_pred_differs={int((r_pred != a_pred).sum())}", flush=True)
    times = {"fixed": [], "adaptive": [], "refilled": []}
    for _ in range(args.rounds):
        for name, fn in (("fixed", lambda: [msat.simulate(snn, b, T_star) for b in batches]), ("adaptive", adaptive),
                         ("refilled", lambda: refilled(snn, x, a_steps, bs))):
            t0 = time.thread_time()
            fn()
            times[name].append(time.thread_time() - t0)
    med = {k: statistics.median(v) for k, v in times.items()}
    print(" ".join(f"{k}_s={v:.2f}" for k, v in med.items()) +
          f" ratio_adaptive={med['fixed'] / med['adaptive']:.2f} ratio_refilled={med['fixed'] / med['refilled']:.2f}"
          f" rounds={args.rounds} batch={bs}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
