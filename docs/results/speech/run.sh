#!/usr/bin/env bash
# Table 6's speech pipeline on the SYNTHETIC spoken-digit set (espeak-ng voices). It stands in
# for Speech Commands and does not reproduce the paper's numbers. M5 at width 0.5 (a CPU
# budget; the paper's M5 is width 1) is trained on one CPU thread for 15 epochs, converted, and
# evaluated with max-norm IF (const), MSAT and MSAT+SC to T = 2048 on the whole test split
# (180 clips). Needs `apt-get install espeak-ng`; the set is generated once into $ROOT/data.
#   ROOT=outputs/speech docs/results/speech/run.sh
set -euo pipefail
cd "$(dirname "$0")/../../.."
ROOT=${ROOT:-outputs/speech}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1} WANDB_MODE=${WANDB_MODE:-disabled}
COMMON=(experiment=m5_synthetic_words "dataset.root=$ROOT/data/synthetic_words" "paths.root=$ROOT" model.width=0.5
        progress=false)
python train_ann.py "${COMMON[@]}" train.epochs=15
python evaluate.py -m "${COMMON[@]}" eval.sin=true sin.T=256 eval.T=2048 eval.save_predictions=true \
  "eval.checkpoints=[32,128,256,512,1024,2048]" method=const,msat,msat_sc "hydra.sweep.dir=$ROOT/eval/m5"
python -m msat.report "$ROOT/eval" --out docs/results/speech/report.md
