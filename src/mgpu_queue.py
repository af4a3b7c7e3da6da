"""The founding script for ``mgpu queue``, as in
``python src/mgpu_queue.py --all``.
"""

import os
import sys

try:
    from mgpu.cli import queue_main
except ImportError:  # run from a checkout without mgpu installed
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from mgpu.cli import queue_main

if __name__ == "__main__":
    sys.exit(queue_main())
