# Shared by run.sh and light_targets.sh (sourced from the repository root, after DATA, RUNS and RULE are
# set): the CIFAR-10 VGG16 of docs/results/cifar10, the same 1,000 test images and 1,000 held-out training
# images, and run(), one evaluate.py run on one thread with its log in $RUNS/<label>.log.
COMMON=(dataset=cifar10 "dataset.root=$DATA" dataset.format=imagefolder dataset.num_workers=0 model=vgg16
        model.width=0.25 calibration.checkpoint=$PWD/docs/results/cifar10/vgg16_w0.25.pt "paths.root=$RUNS"
        eval.max_samples=1000 eval.subset_seed=0 eval.batch_size=200 "eval.exit.rule=$RULE" eval.exit.holdout=1000
        eval.exit.max_drop=1.0 sin.enabled=false progress=false wandb.mode=offline)
run() {  # label, T_max, overrides...
  local label=$1 T=$2; shift 2
  OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 python evaluate.py "${COMMON[@]}" "eval.T=$T" "hydra.run.dir=$RUNS/$label" \
    "+tags=[early_exit,$label]" "$@" > "$RUNS/$label.log" 2>&1
}
