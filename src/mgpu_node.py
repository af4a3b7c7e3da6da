"""The founding script for ``mgpu node``, as in
``python src/mgpu_node.py --node-id node1 --master-host localhost``.
"""

import os
import sys

try:
    from mgpu.cli import node_main
except ImportError:  # run from a checkout without mgpu installed
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from mgpu.cli import node_main

if __name__ == "__main__":
    sys.exit(node_main())
