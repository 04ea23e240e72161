"""medal: config-driven experiments for medical imaging with scarce labels."""

import warnings

# Lightning 2.6 calls a torch pytree API that newer torch deprecates, once per fit: not ours to act on,
# and repeated every active-learning round it buries the log.
warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)` is deprecated")
