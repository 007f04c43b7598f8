#!/usr/bin/env bash
# Table 6's speech pipeline on the SYNTHETIC spoken-digit set (espeak-ng voices; it stands in
# for Speech Commands and does not reproduce the paper's numbers): M5 at width 0.5 trained on
# the CPU for 15 epochs, converted, and evaluated with max-norm IF (const), MSAT and MSAT+SC to
# T = 1024 on the whole test split (180 clips). Needs `apt-get install espeak-ng`; the set is
# generated once into $ROOT/data.
set -euo pipefail
cd "$(dirname "$0")/../../.."
ROOT=${ROOT:-outputs/speech}
COMMON="experiment=m5_synthetic_words dataset.root=$ROOT/data/synthetic_words paths.root=$ROOT model.width=0.5 wandb.mode=disabled progress=false"
python train_ann.py $COMMON train.epochs=15
python evaluate.py -m $COMMON eval.sin=true eval.T=1024 eval.checkpoints=[32,128,256,512,1024] sin.T=1024 \
  method=const,msat,msat_sc hydra.sweep.dir=$ROOT/eval/m5
python -m msat.report $ROOT/eval --out docs/results/speech/report.md
