"""Agreement of the fused (torch.compile'd) neuron update with the eager one, in float32.

A VGG16 (random weights, random BatchNorm statistics) converted with MSAT, simulated eagerly
and fused on the same images; prints the share of images whose prediction is identical at
every step, and the largest difference of the summed outputs.

    python benchmarks/fused_agreement.py                      # CPU: width 0.25, 512 images, T = 64
    python benchmarks/fused_agreement.py --device cuda --width 1 --images 2048
"""

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
from simulate import build  # noqa: E402  (benchmarks/simulate.py)

import msat  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--width", type=float, default=0.25)
    ap.add_argument("--images", type=int, default=512)
    ap.add_argument("--T", type=int, default=64)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    dev = torch.device(args.device)
    model = build(args.width, 10, net="vgg16")  # the benchmark's net: random weights, non-trivial BN statistics
    x = torch.randn(args.images, 3, 32, 32)
    snn = msat.convert(model, [x[:128]], method="msat", hparams=msat.TABLE2["vgg16"]).to(dev)
    x = x.to(dev)
    snn.set_compile(False)
    t0 = time.perf_counter()
    eager = msat.simulate(snn, x, args.T)
    t_eager = time.perf_counter() - t0
    snn.set_compile(True)
    t0 = time.perf_counter()
    fused = msat.simulate(snn, x, args.T)
    t_fused = time.perf_counter() - t0
    if not all(n.compiled for n in snn.neurons):
        raise SystemExit("the fused update fell back to eager: nothing to compare")
    same = eager.argmax(-1) == fused.argmax(-1)  # [T, images]
    print(f"vgg16 width {args.width}, {args.images} images, T={args.T}, {dev}, float32; wall: eager {t_eager:.1f} s, "
          f"fused {t_fused:.1f} s (compile included)")
    print(f"identical predictions: {100 * same.float().mean():.3f}% of image-steps; "
          f"{100 * same.all(0).float().mean():.2f}% of images at every step; "
          f"worst step {100 * same.float().mean(1).min():.2f}%")
    print(f"largest difference of the summed outputs: {(eager - fused).abs().max().item():.4g}")


if __name__ == "__main__":
    main()
