"""The founding script for ``mgpu server``, as in
``python src/mgpu_server.py --host 0.0.0.0 --port 8080``.
"""

import os
import sys

try:
    from mgpu.cli import server_main
except ImportError:  # run from a checkout without mgpu installed
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from mgpu.cli import server_main

if __name__ == "__main__":
    sys.exit(server_main())
