"""The two checkpoints every training task keeps: the best by a validation metric, and the latest.

Lightning (2.6) writes `save_last=True`'s last.ckpt only in a step where a top-k checkpoint was also
saved, so once the monitored metric stops improving last.ckpt stops moving, and a run that is stopped
and resumed would go back to its best epoch instead of carrying on. A second, unmonitored callback that
keeps one file rewrites last.ckpt at the end of every training epoch instead.

Both save when the training epoch ends rather than when validation ends: Lightning runs the other
callbacks' epoch-end hooks first, so the state of paced transfer learning saved with the weights already
counts the epoch, and validation metrics exist by then.
"""

from __future__ import annotations

from pathlib import Path

from pytorch_lightning.callbacks import ModelCheckpoint

LAST = "last"


def latest(ckpt_dir: str | Path) -> ModelCheckpoint:
    """`last.ckpt`, rewritten at the end of every training epoch (all a run without a validation metric keeps)."""
    return ModelCheckpoint(dirpath=ckpt_dir, filename=LAST, monitor=None, save_top_k=1,
                           save_on_train_epoch_end=True, enable_version_counter=False)


def best_and_last(ckpt_dir: str | Path, monitor: str, mode: str,
                  best_name: str = "best-{epoch:03d}") -> tuple[ModelCheckpoint, ModelCheckpoint]:
    """(best by `monitor` as `<best_name>.ckpt`, `last.ckpt` rewritten every training epoch)."""
    best = ModelCheckpoint(dirpath=ckpt_dir, filename=best_name, monitor=monitor, mode=mode, save_top_k=1,
                           auto_insert_metric_name=False, save_on_train_epoch_end=True)
    return best, latest(ckpt_dir)
