"""Calibrate thresholds and measure SIN / spike confidence: `python convert.py method=msat` (see README)."""

import hydra

from msat.harness.tasks import run_convert, user_errors


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def main(cfg):
    with user_errors():
        return run_convert(cfg)


if __name__ == "__main__":
    main()
