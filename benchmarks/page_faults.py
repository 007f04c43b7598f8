"""Page faults and system time of one run of the dense limit and of MSAT (compiled) on the thin
ResNet-20 (batch 64, T=32, one thread), after one warm-up run each, in this process as it is.

glibc's malloc gives large freed blocks back to the kernel, so a process may fault in every
activation of every step; whether it does depends on what it allocated before. Compare a run
as it is with one where malloc keeps freed memory:

    OMP_NUM_THREADS=1 python benchmarks/page_faults.py
    OMP_NUM_THREADS=1 MALLOC_MMAP_THRESHOLD_=268435456 MALLOC_TRIM_THRESHOLD_=1073741824 python benchmarks/page_faults.py
"""

import sys
import time
from pathlib import Path

import torch

sys.path[:0] = [str(Path(__file__).resolve().parent), str(Path(__file__).resolve().parents[1] / "src")]
import simulate as bench  # noqa: E402

from msat.conversion.lam import calibrate  # noqa: E402
from msat.conversion.prepare import prepare_ann  # noqa: E402


def main() -> None:
    torch.set_num_threads(1)
    model = bench.build(0.25, 10, net="resnet20_thin")
    x = torch.randn(64, 3, 32, 32)
    ann = prepare_ann(model)
    with torch.no_grad():
        lam = calibrate(ann, [x])
        runs = {"MSAT, compiled": bench.run_ours(ann, lam, "msat", x, 32, 1, compiled=True, hp_row="resnet20"),
                "dense limit": bench.run_dense(model, x, 32)}
        times = {}
        for name, go in runs.items():
            go()
            f0, s0 = bench._faults_and_sys()
            t0 = time.thread_time()
            go()
            t = time.thread_time() - t0
            f1, s1 = bench._faults_and_sys()
            times[name] = t
            print(f"{name:<16} page faults {f1 - f0:8.0f}  system {s1 - s0:6.3f} s  user {t - (s1 - s0):6.3f} s  "
                  f"thread {t:6.3f} s")
    print(f"MSAT / dense: {times['MSAT, compiled'] / times['dense limit']:.3f}")


if __name__ == "__main__":
    main()
