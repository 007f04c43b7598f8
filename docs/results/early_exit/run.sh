#!/usr/bin/env bash
# Early exit on the CIFAR-10 VGG16 (width 0.25) of docs/results/cifar10, on the same 1,000 test images
# as its later fixed-T runs (eval.max_samples=1000, eval.subset_seed=0), every rule, the operating point
# chosen on 1,000 training images held out from calibration (max_drop 1 point), two runs at a time,
# one thread each. Results: outputs/early_exit/<label>/results.json; then summarize.py.
#   bash docs/results/early_exit/run.sh [DATA] [RUNS]
set -euo pipefail
cd "$(dirname "$0")/../../.."
DATA=${1:-../shared/datasets/cifar10-jpeg}
RUNS=${2:-outputs/early_exit}
RULE=all
source docs/results/early_exit/settings.sh
mkdir -p "$RUNS"
# the search's T = 32 winner (docs/results/cifar10/search.json) and LTB with at most 2 spikes a step
run search_T32 128 method=const calibration.percentile=0.999 method.v_init=0.5 method.correction=light method.correction_T=32 &
run ltb_burst2 128 method=ltb method.max_spikes=2 &
wait
# LTB with delayed readout, and MSAT (the paper's method)
run ltb_delayed 128 method=ltb eval.readout_start=auto &
run msat 128 method=msat &
wait
# the QCFS net of docs/results/cifar10 (its own ANN: fine-tuned with QCFS activations, L = 4)
run qcfs 128 method=qcfs model.activation=qcfs model.levels=4 model.lam_init=2.0 \
  calibration.checkpoint=$PWD/docs/results/cifar10/vgg16_qcfs4_w0.25.pt
# LTB with at most 2 spikes a step and SNN Calibration light aimed at T = 12: the conversion whose learned
# rule meets issue 31's first goal (docs/results/early_exit/README.md, "A conversion aimed at early exit")
run ltb_burst2_light12 128 method=ltb method.max_spikes=2 method.correction=light method.correction_T=12
