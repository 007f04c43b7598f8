"""``python -m msat.search``: the command-line face of :mod:`msat.harness.search`."""

import sys

from .harness.search import main

if __name__ == "__main__":
    sys.exit(main())
