#!/usr/bin/env bash
# MT-SNN Fig. 3 at CPU scale on real CIFAR-10 (the JPEG folder): ST vs MT vs the ANN twin at
# T = 1..5 after the same training budget as docs/results/mt_snn (narrow MT-VGG-9, one
# epoch on a fixed random 20,000 of the training images, no augmentation, seed 0), evaluated on a
# fixed random 2,000 of the test images (both subsets drawn with seed 0).
set -euo pipefail
cd "$(dirname "$0")/../../.."
ROOT=${ROOT:-outputs/mt_cifar10}
DATA=${DATA:-../shared/datasets/cifar10-jpeg}
COMMON="--config-name snn dataset=cifar10 dataset.root=$DATA dataset.format=imagefolder dataset.num_workers=0
  snn=mt_vgg9 snn.width=0.125 paths.root=$ROOT wandb.mode=disabled progress=false"
BUDGET="train.epochs=1 train.batch_size=64 train.lr=0.05 train.schedule=cosine dataset.max_train_samples=20000 dataset.augment={crop_padding:0,flip:false,rotation:0,translate:0}"
python train_snn.py -m $COMMON $BUDGET neuron=st,mt neuron.T=1,2,3,4,5 hydra.sweep.dir=$ROOT/train/spiking
python train_snn.py $COMMON $BUDGET neuron=ann hydra.run.dir=$ROOT/train/ann
TWIN=$ROOT/checkpoints/cifar10/mt_vgg9_w0.125_ann_T1_s0/last.pt
python evaluate.py -m $COMMON neuron=st,mt neuron.T=1,2,3,4,5 eval.max_samples=2000 eval.ann_twin=$TWIN \
  hydra.sweep.dir=$ROOT/eval/spiking
python evaluate.py $COMMON neuron=ann eval.max_samples=2000 hydra.run.dir=$ROOT/eval/ann
PAIRS=()  # MT against ST at each trained T, on the same images
for T in 1 2 3 4 5; do PAIRS+=(--pair "mt-snn, trained T=$T" "st-snn, trained T=$T"); done
python -m msat.report $ROOT/eval --out docs/results/mt_snn_cifar10/report.md "${PAIRS[@]}"
python docs/results/mt_snn_cifar10/vs_twin.py $ROOT/eval   # the nets against the twin, and fig3.png
