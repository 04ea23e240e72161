"""One round's training: a Lightning fit of a fixed number of steps on the labelled set.

Rounds start with a handful of labels, so "epochs" mean little; the sampler draws `steps * batch_size`
labelled images with replacement, which makes every round cost the same whatever the set's size.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, RandomSampler, TensorDataset

from medal.segment.committee import Committee

TrainerFactory = Callable[[], pl.Trainer]
LIGHTNING_INFO = logging.getLogger("pytorch_lightning.utilities.rank_zero")


@contextmanager
def quiet_lightning() -> Iterator[None]:
    """Hide Lightning's per-fit notices ("GPU available", tips, "max_epochs reached") for the round's fit:
    a round loop makes a trainer per round, and those lines would bury the round log. Warnings stay."""
    level = LIGHTNING_INFO.level
    LIGHTNING_INFO.setLevel(logging.WARNING)
    try:
        yield
    finally:
        LIGHTNING_INFO.setLevel(level)


def _tensors(*arrays: np.ndarray) -> TensorDataset:
    return TensorDataset(*(torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32))[:, None] for a in arrays))


@dataclass(frozen=True)
class RoundTraining:
    """How every round trains: `steps` batches of `batch_size`, a fresh one-epoch trainer from `make_trainer`,
    validation once at the end on the fixed validation set (images and masks (V, S, S); V may be 0)."""

    steps: int
    batch_size: int
    make_trainer: TrainerFactory
    val_images: np.ndarray
    val_masks: np.ndarray

    def fit(self, committee: Committee, images: np.ndarray, masks: np.ndarray) -> dict[str, float]:
        """Train on images and masks (N, S, S); return the logged `val/*` metrics."""
        sampler = RandomSampler(range(len(images)), replacement=True, num_samples=self.steps * self.batch_size)
        train = DataLoader(_tensors(images, masks), batch_size=self.batch_size, sampler=sampler, drop_last=False)
        val = (DataLoader(_tensors(self.val_images, self.val_masks), batch_size=max(self.batch_size, 16))
               if len(self.val_images) else None)
        with quiet_lightning():
            trainer = self.make_trainer()
            committee.train()  # scoring left it in eval mode, and Lightning keeps the modes it finds
            trainer.fit(committee, train_dataloaders=train, val_dataloaders=val)
        return {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("val/")}
