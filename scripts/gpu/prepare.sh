#!/usr/bin/env bash
# On the development machine, before a GPU run: pack CIFAR-10 and fetch the wheels the GPU
# machine lacks (it has Python 3.12 and torch, but no hydra-core, omegaconf, antlr4 or
# SpikingJelly, and no registry). Both folders are git-ignored and travel as carried paths.
#   bash scripts/gpu/prepare.sh [JPEG_ROOT]      -> carry/packed/, .whl/
set -euo pipefail
cd "$(dirname "$0")/../.."
DATA=${1:-../shared/datasets/cifar10-jpeg}
python3 -m msat.harness.gpu.cli pack --data "$DATA" --packed carry/packed
mkdir -p .whl
PLAT="--platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64"
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp $PLAT -d .whl \
  hydra-core==1.3.8 omegaconf==2.3.1 spikingjelly==2.0.0 loguru==0.7.3 scienceplots==2.2.2
# antlr4's runtime is a source distribution: build its (pure Python) wheel here
python3 -m pip wheel -q --no-deps -w .whl antlr4-python3-runtime==4.9.3
du -sh carry/packed .whl
