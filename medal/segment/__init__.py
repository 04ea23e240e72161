"""Hand segmentation: loss and metrics, pool scoring and final inference, figures, the U-Net baseline."""
