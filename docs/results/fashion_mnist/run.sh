#!/usr/bin/env bash
# Fashion-MNIST, narrow VGG16 (width 0.25), one training epoch; conversion ablations on
# a fixed random 500 of the test images (eval.max_samples=500, subset seed 0; the setting of the independent reference run in issue 3).
set -euo pipefail
cd "$(dirname "$0")/../../.."
ROOT=${ROOT:-outputs/fmnist}
COMMON="dataset=fashion_mnist model.width=0.25 paths.root=$ROOT wandb.mode=disabled progress=false"
python train_ann.py $COMMON train.epochs=1 train.batch_size=32 train.lr=0.02 \
  dataset.augment.crop_padding=0 dataset.augment.flip=false
# Fig. 5 ablation + spike confidence (Table 7 style), SIN statistics over the test images
python evaluate.py -m $COMMON eval.max_samples=500 eval.T=256 eval.sin=true \
  method=const,const_0.5,const_0.2,dtt,det,msat,msat_sc hydra.sweep.dir=$ROOT/eval/ablation
# spike confidence on the const threshold
python evaluate.py $COMMON eval.max_samples=500 eval.T=256 eval.sin=true method=const \
  method.sc.enabled=true hydra.run.dir=$ROOT/eval/const_sc
# the released code's quirk: no reset of step counter and running means between batches
python evaluate.py -m $COMMON eval.max_samples=500 eval.T=256 eval.batch_size=100 \
  method=msat,msat_sc eval.quirk_no_reset=false,true hydra.sweep.dir=$ROOT/eval/quirk
python -m msat.report $ROOT/eval --out docs/results/fashion_mnist/report.md
