"""Simulate the converted SNN: accuracy after every time step in one run (see README)."""

import hydra

from msat.harness.tasks import run_evaluate, user_errors


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def main(cfg):
    with user_errors():
        return run_evaluate(cfg)


if __name__ == "__main__":
    main()
