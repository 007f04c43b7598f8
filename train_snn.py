"""Train a spiking net directly with multiple thresholds (MT-SNN): `python train_snn.py neuron=mt` (see README)."""

import hydra

from msat.harness.tasks import run_train_snn, user_errors


@hydra.main(version_base="1.3", config_path="conf", config_name="snn")
def main(cfg):
    with user_errors():
        return run_train_snn(cfg)


if __name__ == "__main__":
    main()
