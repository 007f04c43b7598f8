#!/usr/bin/env bash
# Early exit on the two small nets: the digits demo (VGG16 width 0.25 on the bundled 8x8 digits) and
# the M5 (width 0.5) on the synthetic spoken digits of docs/results/speech, MSAT and max-norm IF (const)
# each, every rule, the operating point chosen on training images held out from calibration
# (max_drop 1 point). Calibration on 5 batches of 128 so that images are left to hold out.
# One thread per run. Results: $ROOT/{digits,speech}_<method>/results.json; then summarize.py.
#   ROOT=outputs/early_exit_small bash docs/results/early_exit/run_small.sh
set -euo pipefail
cd "$(dirname "$0")/../../.."
ROOT=${ROOT:-outputs/early_exit_small}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1} MKL_NUM_THREADS=${MKL_NUM_THREADS:-1}
EXIT=(eval.exit.rule=all eval.exit.max_drop=1.0 calibration.num_batches=5 sin.enabled=false progress=false
      wandb.mode=offline)
# digits: the demo's ANN (15 epochs), 1,797 - 1,437 = 360 test images; 797 training images held out
DIGITS=(experiment=demo "paths.root=$ROOT")
python train_ann.py "${DIGITS[@]}" progress=false wandb.mode=disabled
for m in msat const; do
  python evaluate.py "${DIGITS[@]}" "${EXIT[@]}" method=$m eval.T=128 eval.exit.holdout=797 \
    "hydra.run.dir=$ROOT/digits_$m" "+tags=[early_exit,digits_$m]"
done
# speech: the synthetic spoken digits (espeak-ng), 180 test clips; 800 training clips held out
SPEECH=(experiment=m5_synthetic_words "dataset.root=$ROOT/data/synthetic_words" "paths.root=$ROOT" model.width=0.5)
python train_ann.py "${SPEECH[@]}" train.epochs=15 progress=false wandb.mode=disabled
for m in msat const; do
  python evaluate.py "${SPEECH[@]}" "${EXIT[@]}" method=$m eval.T=256 "eval.checkpoints=[32,64,128,256]" \
    eval.exit.holdout=800 "hydra.run.dir=$ROOT/speech_$m" "+tags=[early_exit,speech_$m]"
done
