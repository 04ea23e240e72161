"""Bone age regression pieces that are not Lightning glue: target scaling, metrics, LR schedule, plots."""
