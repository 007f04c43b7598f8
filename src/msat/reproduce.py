"""``python -m msat.reproduce``: the command-line face of :mod:`msat.harness.reproduce`."""

import sys

from .harness.reproduce import main

if __name__ == "__main__":
    sys.exit(main())
