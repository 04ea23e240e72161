"""LightningModules of the learned stages (segmenter committee, enhancer, bone age regressor)."""
