"""One round's committee training: a Lightning fit of a fixed number of steps on the labelled set.

Rounds start with a handful of labels, so "epochs" mean little; the sampler draws `steps * batch_size`
labelled images with replacement, which makes every round cost the same whatever the set's size.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, RandomSampler, TensorDataset

from medal.lit.committee import Committee

TrainerFactory = Callable[[], pl.Trainer]


def _tensors(*arrays: np.ndarray) -> TensorDataset:
    return TensorDataset(*(torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32))[:, None] for a in arrays))


def cpu_trainer(precision: str = "bf16-mixed", **overrides: Any) -> pl.Trainer:
    """A quiet one-epoch CPU trainer (tests, benchmarks); tasks build theirs from `cfg.trainer`."""
    options: dict[str, Any] = dict(
        accelerator="cpu", devices=1, max_epochs=1, precision=precision, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
    )
    options.update(overrides)
    return pl.Trainer(**options)


def fit_committee(
    committee: Committee,
    images: np.ndarray,
    masks: np.ndarray,
    val_images: np.ndarray,
    val_masks: np.ndarray,
    steps: int,
    batch_size: int,
    make_trainer: TrainerFactory,
) -> dict[str, float]:
    """Train `steps` batches, validate once at the end; return the logged `val/*` metrics."""
    sampler = RandomSampler(range(len(images)), replacement=True, num_samples=steps * batch_size)
    train = DataLoader(_tensors(images, masks), batch_size=batch_size, sampler=sampler, drop_last=False)
    val = DataLoader(_tensors(val_images, val_masks), batch_size=max(batch_size, 16)) if len(val_images) else None
    trainer = make_trainer()
    committee.train()  # scoring left it in eval mode, and Lightning keeps the modes it finds
    trainer.fit(committee, train_dataloaders=train, val_dataloaders=val)
    return {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("val/")}
