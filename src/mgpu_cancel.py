"""The founding script for ``mgpu cancel``, as in
``python src/mgpu_cancel.py 3 4``.
"""

import os
import sys

try:
    from mgpu.cli import cancel_main
except ImportError:  # run from a checkout without mgpu installed
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from mgpu.cli import cancel_main

if __name__ == "__main__":
    sys.exit(cancel_main())
