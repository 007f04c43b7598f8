#!/usr/bin/env bash
# The light correction aimed at fewer steps, learned rule only: the search's T = 32 winner and LTB with a
# burst cap, with SNN Calibration light for T = 8, 12, 16 (the search fixes it at 32), on the same 1,000 test
# images and held-out training images as run.sh, two runs at a time, one thread each (about 4 minutes a pair
# on 2 cores). Then the chosen conversion's rule on the other 9,000 test images: offline/confirm.py.
#   bash docs/results/early_exit/light_targets.sh [DATA] [RUNS]
set -euo pipefail
cd "$(dirname "$0")/../../.."
DATA=${1:-../shared/datasets/cifar10-jpeg}
RUNS=${2:-outputs/ee}
RULE=learned
source docs/results/early_exit/settings.sh
S32=(method=const calibration.percentile=0.999 method.v_init=0.5 method.correction=light)
mkdir -p "$RUNS"
run search_T32 128 "${S32[@]}" method.correction_T=32 &
run s32_cT16 128 "${S32[@]}" method.correction_T=16 &
wait
run s32_cT12 128 "${S32[@]}" method.correction_T=12 &
run s32_cT8 128 "${S32[@]}" method.correction_T=8 &
wait
run burst2_cT16 128 method=ltb method.max_spikes=2 method.correction=light method.correction_T=16 &
run burst2_cT16_h16 128 method=ltb method.max_spikes=2 method.correction=light method.correction_T=16 eval.exit.hidden=16 &
wait
run burst2_cT12 128 method=ltb method.max_spikes=2 method.correction=light method.correction_T=12 &
run burst2_cT8 128 method=ltb method.max_spikes=2 method.correction=light method.correction_T=8 &
wait
run burst3_cT16 128 method=ltb method.max_spikes=3 method.correction=light method.correction_T=16
OMP_NUM_THREADS=1 python docs/results/early_exit/offline/confirm.py "$RUNS/burst2_cT12" "$RUNS/confirm_burst2_cT12.json" \
  "$RUNS/search_T32" "$RUNS/confirm_search_T32.json"
