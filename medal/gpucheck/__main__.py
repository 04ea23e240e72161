"""`python -m medal.gpucheck`: see `medal.gpucheck.check`."""

import sys

from medal.gpucheck.check import main

sys.exit(main())
