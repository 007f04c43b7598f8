"""``python -m msat.report``: the command-line face of :mod:`msat.harness.report`."""

import sys

from .harness.report import main

if __name__ == "__main__":
    sys.exit(main())
