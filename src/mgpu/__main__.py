"""``python -m mgpu ...`` is the ``mgpu`` command."""

import sys

from mgpu.cli import main

if __name__ == "__main__":
    sys.exit(main())
