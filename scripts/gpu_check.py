"""The GPU check (`make gpu-check`): medal at the paper's sizes on one GPU in <= 8 minutes, or `--device cpu --tiny`.

A thin entry point: the check lives in the package (`medal.gpucheck`), so an installed medal without this
repository (an air-gapped server) runs the same thing as `python -m medal.gpucheck`.
"""

import sys

from medal.gpucheck.check import main

if __name__ == "__main__":
    sys.exit(main())
