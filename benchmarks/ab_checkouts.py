"""The simulator of another checkout against this one, on the same net: run it once per
checkout, alternating, and compare the ratios (each run prints dense, const and MSAT, compiled,
one thread, median of 3 interleaved rounds; ``--prof`` adds torch.profiler tables of one MSAT
and one dense run).

    git worktree add /tmp/old <commit>
    for R in . /tmp/old . /tmp/old; do python benchmarks/ab_checkouts.py --repo $R --net resnet20_thin; done
"""

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repo", default=str(Path(__file__).resolve().parents[1]), help="the checkout whose code runs")
    ap.add_argument("--net", default="resnet20_thin", choices=["resnet20_thin", "vgg16"])
    ap.add_argument("--prof", action="store_true")
    args = ap.parse_args()
    repo = Path(args.repo).resolve()
    sys.path[:0] = [str(repo / "benchmarks"), str(repo / "src")]
    import simulate as b  # that checkout's benchmark helpers and package

    import msat
    from msat.conversion.lam import calibrate
    from msat.conversion.prepare import prepare_ann

    if not Path(msat.__file__).resolve().is_relative_to(repo):
        raise SystemExit(f"msat was imported from {msat.__file__}, not from {repo}")

    torch.set_num_threads(1)
    width, B, T, row = (0.25, 64, 32, "resnet20") if args.net == "resnet20_thin" else (1.0, 32, 16, "vgg16")
    model = b.build(width, 10, net=args.net)
    x = torch.randn(B, 3, 32, 32)
    ann = prepare_ann(model)
    with torch.no_grad():
        lam = calibrate(ann, [x])
        runs = {"dense": b.run_dense(model, x, T),
                "const": b.run_ours(ann, lam, "const", x, T, 1, compiled=True, hp_row=row),
                "msat": b.run_ours(ann, lam, "msat", x, T, 1, compiled=True, hp_row=row)}
        for f in runs.values():
            f()  # warm-up (the compile)
        times = {k: [] for k in runs}
        for _ in range(3):
            for k, f in runs.items():
                t = time.thread_time()
                f()
                times[k].append(time.thread_time() - t)
        med = {k: statistics.median(v) for k, v in times.items()}
        print(f"{repo}: " + " ".join(f"{k} {v:.3f} s" for k, v in med.items())
              + f"; const/dense {med['const'] / med['dense']:.3f}, msat/dense {med['msat'] / med['dense']:.3f}")
        if args.prof:
            from torch.profiler import ProfilerActivity, profile

            for k in ("msat", "dense"):
                with profile(activities=[ProfilerActivity.CPU]) as p:
                    runs[k]()
                print(k, p.key_averages().table(sort_by="self_cpu_time_total", row_limit=15))


if __name__ == "__main__":
    main()
