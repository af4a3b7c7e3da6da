"""The founding script for ``mgpu srun``, as in
``python src/mgpu_srun.py --gpus 2 'python train.py'``.
"""

import os
import sys

try:
    from mgpu.cli import srun_main
except ImportError:  # run from a checkout without mgpu installed
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from mgpu.cli import srun_main

if __name__ == "__main__":
    sys.exit(srun_main())
