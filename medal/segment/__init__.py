"""Hand segmentation (the paper's first stage): data, the committee and its training, metrics, the coarse
and final phases, and the experiment (`experiment.run_segment`) that `medal segment` runs."""
