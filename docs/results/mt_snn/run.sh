#!/usr/bin/env bash
# Issue 6 on the CPU: ST vs MT (and the ANN twin) at T = 1, 2, 4 after the same training
# budget (narrow MT-VGG-9 on Fashion-MNIST, one epoch on 20,000 images, no augmentation),
# and the converted VGG16 of docs/results/fashion_mnist with and without burst firing.
set -euo pipefail
cd "$(dirname "$0")/../../.."
ROOT=${ROOT:-outputs/mt}
FM=${FM:-outputs/fmnist}
COMMON="--config-name snn dataset=fashion_mnist snn=mt_vgg9 snn.width=0.125 paths.root=$ROOT wandb.mode=disabled progress=false"
BUDGET="train.epochs=1 train.batch_size=64 train.lr=0.05 train.schedule=cosine dataset.max_train_samples=20000 dataset.augment={crop_padding:0,flip:false,rotation:0,translate:0}"
python train_snn.py -m $COMMON $BUDGET neuron=st,mt neuron.T=1,2,4 hydra.sweep.dir=$ROOT/train/spiking
python train_snn.py $COMMON $BUDGET neuron=ann hydra.run.dir=$ROOT/train/ann
TWIN=$ROOT/checkpoints/fashion_mnist/mt_vgg9_w0.125_ann_T1_s0/last.pt
python evaluate.py -m $COMMON neuron=st,mt neuron.T=1,2,4 eval.max_samples=2000 eval.ann_twin=$TWIN \
  hydra.sweep.dir=$ROOT/eval/spiking
python evaluate.py $COMMON neuron=ann eval.max_samples=2000 hydra.run.dir=$ROOT/eval/ann
# burst firing in the converted SNN
python evaluate.py -m dataset=fashion_mnist model.width=0.25 paths.root=$FM wandb.mode=disabled progress=false \
  eval.max_samples=500 eval.T=64 eval.checkpoints=[16,32,64] method=const,burst,msat,msat_burst \
  hydra.sweep.dir=$ROOT/eval/burst
python -m msat.report $ROOT/eval --out docs/results/mt_snn/report.md
