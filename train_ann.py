"""Train the source ANN: `python train_ann.py dataset=cifar10 model=vgg16` (see README)."""

import hydra

from msat.harness.tasks import run_train, user_errors


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def main(cfg):
    with user_errors():
        return run_train(cfg)


if __name__ == "__main__":
    main()
