#!/usr/bin/env bash
# The QCFS VGG16 (width 0.25, L = 4) beside the ReLU net: fine-tuned from the committed ReLU
# checkpoint (same layout; the QCFS scales lam start at 2.0 and are learnt), 6 epochs at lr 0.02
# with cosine decay, crop + flip + Cutout, no AutoAugment (the ReLU net's second stage).
# The QCFS paper trains from scratch for 300 epochs; this CPU budget does not allow it.
set -euo pipefail
cd "$(dirname "$0")/../../.."
DATA=${DATA:-../shared/datasets/cifar10-jpeg}
ROOT=${ROOT:-outputs/cifar10_qcfs}
python train_ann.py dataset=cifar10 dataset.root=$DATA dataset.format=imagefolder dataset.num_workers=1 \
  model=vgg16 model.width=0.25 model.activation=qcfs model.levels=4 model.lam_init=2.0 \
  train.init_from=docs/results/cifar10/vgg16_w0.25.pt train.epochs=6 train.lr=0.02 \
  dataset.augment.autoaugment=false paths.root=$ROOT wandb.mode=disabled progress=false
