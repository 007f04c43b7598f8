"""Peak and current RSS while one converted VGG16 runs for many steps (allocator behaviour).

    python benchmarks/rss_over_t.py msat          # glibc
    LD_PRELOAD=/usr/lib/x86_64-linux-gnu/libjemalloc.so.2 python benchmarks/rss_over_t.py msat

Prints (t, VmHWM - baseline, VmRSS - baseline) in MiB at a few steps, after a 64-step
warm-up and a reset of the peak counter. A flat VmRSS with a creeping VmHWM means the
allocator's transient peaks grow, not the simulation's live memory.
"""

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from simulate import _proc_status, build  # noqa: E402

import msat  # noqa: E402
from msat.conversion.build import build_snn  # noqa: E402
from msat.conversion.lam import calibrate  # noqa: E402
from msat.conversion.prepare import prepare_ann  # noqa: E402
from msat.spiking.simulation import iterate_steps  # noqa: E402

ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
ap.add_argument("method", choices=["const", "msat", "dtt", "det"])
ap.add_argument("--T", type=int, default=3000)
ap.add_argument("--batch", type=int, default=32)
ap.add_argument("--width", type=float, default=0.25)
args = ap.parse_args()
torch.set_num_threads(1)
model = build(args.width, 10)
x = torch.randn(args.batch, 3, 32, 32)
ann = prepare_ann(model)
snn = build_snn(ann, calibrate(ann, [x]), args.method, None if args.method == "const" else msat.TABLE2["vgg16"])
with torch.inference_mode():
    for _ in iterate_steps(snn, x, 64, 1):
        pass
with open("/proc/self/clear_refs", "w") as f:
    f.write("5")  # reset VmHWM to the current RSS
base = _proc_status("VmRSS")
marks = {2, 3, 4, 8, 16, 64, 256, 512, 1024, 2048, args.T}
with torch.inference_mode():
    for t0, _ in iterate_steps(snn, x, args.T, 1):
        if t0 + 1 in marks:
            print(f"t={t0 + 1:5d}  peak {_proc_status('VmHWM') - base:6.1f} MiB  now {_proc_status('VmRSS') - base:6.1f} MiB")
