"""Simulation speed and memory of a converted VGG16 or thin ResNet-20 (32x32, random weights).

Contenders, on the same weights, batch and T, timed on one thread with
``time.thread_time()`` (robust to a noisy shared machine), interleaved round by round,
median of the rounds:

- dense limit: T x one forward of the ANN (BatchNorm and ReLU included);
- ours, step by step, for the const (max-norm IF) and MSAT thresholds: ``eager``, ``compiled``
  (the fused torch.compile'd neuron update) and ``default`` (what ``msat.simulate`` does
  when not told: ``sim.compile=auto``); ``--layer-major`` adds chunks of ``--chunk`` steps;
- SpikingJelly's converter (``pip install -e '.[bench]'``), step by step, when installed.

The first call of every contender is timed on its own (wall time): for the compiled ones it
is the compilation, which a run pays once (later processes reuse inductor's disk cache).

Peak memory is measured in a separate process that simulates T steps (T=64 versus T=2048
by default) of the same net at width 0.25, so that T=2048 is quick: the peak of live
tensor memory the simulation adds (on CPU from the profiler's allocation records, on GPU
torch.cuda.max_memory_allocated). ``--rss`` adds the process's peak resident memory
above its baseline, which also counts what the C allocator keeps and fragments.

    python benchmarks/simulate.py                                   # full-width VGG16, batch 32, T=16
    python benchmarks/simulate.py --net resnet20_thin --batch 64 --T 32
    python benchmarks/simulate.py --device cuda --batch 128 --T 256

On CPU each contender's page faults and kernel (system) time per run are printed too: glibc's
malloc hands large freed blocks back to the kernel, so every activation of a new step is
faulted in again, and that counts in thread time. ``--malloc-keep`` (glibc only) raises
malloc's mmap and trim thresholds before the warm-up, for every contender alike, so that the
figures are compute alone; the same as ``MALLOC_MMAP_THRESHOLD_=268435456
MALLOC_TRIM_THRESHOLD_=1073741824`` in the environment.

The last line is machine-readable: for each method, the default mode's throughput
(images*steps/s) and its time over the dense limit, the same ratio compiled and eager,
vs_spikingjelly (our const throughput / SpikingJelly's) and mem_ratio (peak tensor memory
at the long T / the short T).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
import msat  # noqa: E402
from msat.conversion.build import build_snn  # noqa: E402
from msat.conversion.lam import calibrate  # noqa: E402
from msat.conversion.prepare import prepare_ann  # noqa: E402
from msat.spiking.simulation import COMPILE_MIN_UPDATES, iterate_steps, neuron_count, resolve_compile  # noqa: E402
from msat.spiking.simulation import resolve_chunk as sim_chunk  # noqa: E402

NETS = {"vgg16": ("vgg16", "vgg16"), "resnet20_thin": ("resnet20", "resnet20")}  # net -> (zoo name, Table 2 row)


def build(width: float, num_classes: int, seed: int = 0, device="cpu", net: str = "vgg16"):
    torch.manual_seed(seed)
    model = msat.create_model(NETS[net][0], num_classes, 3, width).eval()
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():  # non-trivial BN statistics, so that folding matters
        if isinstance(m, nn.BatchNorm2d):
            c = m.num_features
            m.running_mean.copy_(torch.rand(c, generator=g) * 0.2 - 0.1)
            m.running_var.copy_(torch.rand(c, generator=g) * 0.5 + 0.75)
    return model.to(device)


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def clock(device):
    return time.perf_counter() if device.type == "cuda" else time.thread_time()


def run_ours(ann, lam, method, x, T, chunk, compiled=False, hp_row="vgg16"):
    snn = build_snn(ann, lam, method, None if method == "const" else msat.TABLE2[hp_row]).to(x.device)
    snn.set_compile(compiled)

    def go():
        total = None
        for _, out in iterate_steps(snn, x, T, chunk):
            s = out.sum(0)
            total = s if total is None else total + s
        return total

    return go


def run_dense(model, x, T):
    def go():
        total = None
        for _ in range(T):
            y = model(x)
            total = y if total is None else total + y
        return total

    return go


def run_spikingjelly(model, calib, x, T):
    from msat.harness.gpu.speed import spikingjelly_net

    net, reset_net = spikingjelly_net(model, calib, x.device)

    def go():
        reset_net(net)
        total = net(x)
        for _ in range(1, T):
            total = total + net(x)
        return total

    return go


def malloc_keep(mmap_threshold: int = 256 << 20, trim_threshold: int = 1 << 30) -> None:
    """glibc: serve large blocks from the heap and keep freed memory (no page fault per step)."""
    import ctypes

    libc = ctypes.CDLL(None)
    M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
    if not (libc.mallopt(M_MMAP_THRESHOLD, mmap_threshold) and libc.mallopt(M_TRIM_THRESHOLD, trim_threshold)):
        raise SystemExit("--malloc-keep: mallopt failed (glibc's malloc only)")


def _faults_and_sys() -> tuple[float, float]:
    """This thread's minor page faults and system time so far (Linux; zeros elsewhere)."""
    try:
        import resource

        r = resource.getrusage(resource.RUSAGE_THREAD)
        return float(r.ru_minflt), r.ru_stime
    except (ImportError, AttributeError, OSError):
        return 0.0, 0.0


def _proc_status(key: str) -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return float(line.split()[1]) / 1024  # kB -> MiB
    raise KeyError(key)


def _tensor_peak_cpu(go) -> float:
    """Peak bytes of live CPU tensors while ``go()`` runs, from the profiler's allocation
    records: the CPU analogue of torch.cuda.max_memory_allocated, free of allocator effects.
    An op's allocations count at its start, frees where they happen."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        go()
    events = sorted((e for e in prof.events() if e.self_cpu_memory_usage), key=lambda e: e.time_range.start)
    cur = peak = 0
    for e in events:
        cur += e.self_cpu_memory_usage
        peak = max(peak, cur)
    return peak / 2**20


def memory_probe(args) -> None:
    """Child process: simulate T steps; print the peak memory the simulation adds, in MiB.

    ``tensor`` (default): the peak of live tensor memory above what was allocated before the
    run (CPU: from the profiler's allocation records; GPU: torch.cuda.max_memory_allocated).
    ``rss`` (CPU): after a 64-step warm-up run (one-time caches), the kernel's peak-RSS
    counter is reset (/proc/self/clear_refs), so the figure is the process's peak resident
    memory above its baseline. It includes what the C allocator keeps or fragments."""
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    model = build(args.mem_width, 10, device=device, net=args.net)
    x = torch.randn(args.mem_batch, 3, 32, 32, device=device)
    ann = prepare_ann(model)
    lam = calibrate(ann, [x])
    hp_row = NETS[args.net][1]
    go = run_ours(ann, lam, args.probe_method, x, args.probe_T, args.chunk, "auto", hp_row)
    with torch.inference_mode():  # warm-up: oneDNN primitive caches and allocator pools are one-time costs
        run_ours(ann, lam, args.probe_method, x, 64, args.chunk, "auto", hp_row)()
    base = 0.0
    with torch.inference_mode():
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
            base = torch.cuda.memory_allocated() / 2**20
            go()
            sync(device)
            peak = torch.cuda.max_memory_allocated() / 2**20
        elif args.probe_kind == "tensor":
            peak = _tensor_peak_cpu(go)
        else:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")  # reset VmHWM to the current RSS
            base = _proc_status("VmRSS")
            go()
            peak = _proc_status("VmHWM")
    print(json.dumps({"T": args.probe_T, "kind": args.probe_kind, "peak_mib": peak - base, "baseline_mib": base}))


def peak_memory(args, T: int, method: str, kind: str = "tensor") -> float:
    cmd = [sys.executable, __file__, "--net", args.net, "--probe-T", str(T), "--probe-method", method, "--device", args.device,
           "--threads", str(args.threads), "--chunk", str(args.mem_chunk), "--mem-width", str(args.mem_width),
           "--mem-batch", str(args.mem_batch), "--probe-kind", kind]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout.strip().splitlines()[-1]
    return json.loads(out)["peak_mib"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--net", default="vgg16", choices=sorted(NETS),
                    help="vgg16 (full width by default) or resnet20_thin (the classic 16/32/64-channel layout)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--T", type=int, default=16)
    ap.add_argument("--chunk", type=int, default=None,
                    help="steps per call of the layer-major contender (default: 32 on GPU, as sim.chunk=auto; 4 on CPU)")
    ap.add_argument("--width", type=float, default=None, help="channel multiplier (default: 1 for vgg16, 0.25 for "
                                                                "resnet20_thin)")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--methods", default="const,msat")
    ap.add_argument("--no-spikingjelly", action="store_true")
    ap.add_argument("--layer-major", action="store_true", help="also time layer-major chunks")
    ap.add_argument("--no-compile", action="store_true", help="leave out the compiled contenders (a quick smoke run)")
    ap.add_argument("--mem-T", default="64,2048", help="short and long T for the memory probe")
    ap.add_argument("--mem-width", type=float, default=0.25)
    ap.add_argument("--mem-batch", type=int, default=32)
    ap.add_argument("--skip-memory", action="store_true")
    ap.add_argument("--probe-T", type=int, default=None, help=argparse.SUPPRESS)
    ap.add_argument("--probe-method", default="const", help=argparse.SUPPRESS)
    ap.add_argument("--probe-kind", default="tensor", choices=["tensor", "rss"], help=argparse.SUPPRESS)
    ap.add_argument("--mem-chunk", type=int, default=1, help="steps per call in the memory probe")
    ap.add_argument("--rss", action="store_true", help="CPU: also report the peak RSS (allocator-dependent)")
    ap.add_argument("--malloc-keep", action="store_true",
                    help="glibc: keep freed memory in the heap (no page faults), for every contender")
    args = ap.parse_args()
    if args.width is None:
        args.width = 0.25 if args.net == "resnet20_thin" else 1.0
    if args.probe_T is not None:
        return memory_probe(args)

    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if args.malloc_keep:
        malloc_keep()
    if args.chunk is None:
        args.chunk = sim_chunk("auto", device) if device.type == "cuda" else 4
    model = build(args.width, 10, device=device, net=args.net)
    hp_row = NETS[args.net][1]
    x = torch.randn(args.batch, 3, 32, 32, device=device)
    calib = [torch.randn(args.batch, 3, 32, 32, device=device)]
    ann = prepare_ann(model)
    lam = calibrate(ann, calib)
    methods = args.methods.split(",")

    contenders = {"dense": run_dense(model, x, args.T)}
    for m in methods:  # the default first, eager last: eager's many temporaries leave the heap to the next one
        contenders[f"{m} default"] = run_ours(ann, lam, m, x, args.T, 1, "auto", hp_row)
        if not args.no_compile:
            contenders[f"{m} compiled"] = run_ours(ann, lam, m, x, args.T, 1, True, hp_row)
        contenders[f"{m} eager"] = run_ours(ann, lam, m, x, args.T, 1, False, hp_row)
        if args.layer_major:
            contenders[f"{m} layer-major"] = run_ours(ann, lam, m, x, args.T, args.chunk, "auto", hp_row)
    if not args.no_spikingjelly:
        try:
            contenders["spikingjelly"] = run_spikingjelly(model, calib, x, args.T)
        except ImportError:
            print("spikingjelly is not installed (pip install -e '.[bench]'): skipped")
    times: dict[str, list[float]] = {k: [] for k in contenders}
    faults: dict[str, list[float]] = {k: [] for k in contenders}
    systime: dict[str, list[float]] = {k: [] for k in contenders}
    warm: dict[str, float] = {}
    with torch.inference_mode():
        for name, fn in contenders.items():  # warm-up; for the compiled contenders this is the compilation
            t0 = time.perf_counter()
            fn()
            warm[name] = time.perf_counter() - t0
        for _ in range(args.rounds):
            for name, fn in contenders.items():
                sync(device)
                f0, s0 = _faults_and_sys()
                t0 = clock(device)
                fn()
                sync(device)
                times[name].append(clock(device) - t0)
                f1, s1 = _faults_and_sys()
                faults[name].append(f1 - f0)
                systime[name].append(s1 - s0)
    med = {k: statistics.median(v) for k, v in times.items()}
    work = args.batch * args.T
    print(f"{args.net} width {args.width}, batch {args.batch}, T={args.T}, device {device}, {args.threads} thread(s), "
          f"median of {args.rounds} interleaved rounds ({'thread' if device.type == 'cpu' else 'wall'} time)"
          + (", malloc keeps freed memory (--malloc-keep)" if args.malloc_keep else ""))
    print(f"{'contender':<20}{'time (s)':>10}{'min-max (s)':>14}{'images*steps/s':>16}{'vs dense':>10}"
          f"{'first call (s, wall)':>22}{'page faults':>13}{'system (s)':>12}")
    for k, v in med.items():
        spread = f"{min(times[k]):.2f}-{max(times[k]):.2f}"
        print(f"{k:<20}{v:>10.3f}{spread:>14}{work / v:>16.1f}{v / med['dense']:>10.3f}{warm[k]:>22.1f}"
              f"{statistics.median(faults[k]):>13.0f}{statistics.median(systime[k]):>12.3f}")
    faulting = [k for k in contenders if statistics.median(faults[k]) > 1000]
    if faulting and not args.malloc_keep:
        print(f"note: {', '.join(faulting)} page-faulted (over 1000 faults in the median run: malloc gave "
              f"freed memory back to the kernel): their ratios include that time; --malloc-keep measures "
              f"compute alone")
    for m in methods:
        snn = build_snn(ann, lam, m, None if m == "const" else msat.TABLE2[hp_row])
        upd = neuron_count(snn, x) * args.T
        print(f"{m} default (sim.compile=auto): {'compiled' if resolve_compile('auto', device, upd) else 'eager'} "
              f"({upd:.3g} neuron updates; compiled from {COMPILE_MIN_UPDATES:.0e})")
    mem, rss = {}, {}
    if not args.skip_memory:
        short, long_ = (int(t) for t in args.mem_T.split(","))
        kind = "allocated tensors" if device.type == "cuda" else "live tensors (profiler)"
        for m in methods:
            mem[m] = (peak_memory(args, short, m), peak_memory(args, long_, m))
            print(f"peak memory, {kind} ({m}, width {args.mem_width}, batch {args.mem_batch}, chunk {args.mem_chunk}): "
                  f"T={short}: {mem[m][0]:.2f} MiB, T={long_}: {mem[m][1]:.2f} MiB, ratio {mem[m][1] / mem[m][0]:.3f}")
            if args.rss and device.type == "cpu":
                rss[m] = (peak_memory(args, short, m, "rss"), peak_memory(args, long_, m, "rss"))
                print(f"peak RSS above baseline ({m}): T={short}: {rss[m][0]:.1f} MiB, T={long_}: {rss[m][1]:.1f} MiB, "
                      f"ratio {rss[m][1] / rss[m][0]:.3f}")
    fields = [f"net={args.net}"]
    for m in methods:
        o = med[f"{m} default"]
        fields += [f"{m}_throughput={work / o:.1f}", f"{m}_dense_ratio={o / med['dense']:.3f}",
                   f"{m}_compiled_ratio={med[f'{m} compiled'] / med['dense'] if not args.no_compile else float('nan'):.3f}",
                   f"{m}_eager_ratio={med[f'{m} eager'] / med['dense']:.3f}"]
        if "spikingjelly" in med and m == "const":
            fields.append(f"vs_spikingjelly={med['spikingjelly'] / o:.3f}")
        if m in mem:
            fields.append(f"{m}_mem_ratio={mem[m][1] / mem[m][0]:.3f}")
    print(" ".join(fields))


if __name__ == "__main__":
    main()
