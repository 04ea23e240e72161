"""One round's training: a Lightning fit of a fixed number of steps on the labelled set.

Rounds start with a handful of labels, so "epochs" mean little; `steps * batch_size` labelled images are drawn
with replacement, which makes every round cost the same whatever the set's size. With `member_data=bootstrap`
each member of a committee draws from its own bootstrap resample of the labelled set (its own images, its own
order): members that start from shared weights then learn different things, which is what makes their
disagreement informative. The draws come from (`seed`, labelled count), so a rerun trains on the same batches.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, Dataset, TensorDataset

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


def member_draws(n: int, draws: int, members: int, bootstrap: bool, seed: int) -> np.ndarray:
    """Row indices (draws, K) into a labelled set of n images: K = 1 column shared by every member, or with
    `bootstrap` one column per member, each drawn from that member's own bootstrap resample of range(n).

    Examples:
        >>> member_draws(5, 4, 3, bootstrap=False, seed=0).shape
        (4, 1)
        >>> d = member_draws(50, 200, 3, bootstrap=True, seed=0)
        >>> d.shape, len({tuple(sorted(set(col))) for col in d.T})  # three members, three different subsets
        ((200, 3), 3)
    """
    rng = np.random.default_rng([seed, n])
    if not bootstrap or members == 1:
        return rng.integers(n, size=(draws, 1))
    resamples = rng.integers(n, size=(members, n))  # member k's bootstrap sample of the labelled set
    return np.stack([resamples[k][rng.integers(n, size=draws)] for k in range(members)], axis=1)


class MemberBatches(Dataset):
    """Item t: the images and masks of row t of `draws` (K, 1, S, S) each; batches are (B, K, 1, S, S)."""

    def __init__(self, images: np.ndarray, masks: np.ndarray, draws: np.ndarray) -> None:
        self.images = torch.from_numpy(np.ascontiguousarray(images, dtype=np.float32))[:, None]
        self.masks = torch.from_numpy(np.ascontiguousarray(masks, dtype=np.float32))[:, None]
        self.draws = torch.from_numpy(draws)

    def __len__(self) -> int:
        return len(self.draws)

    def __getitem__(self, t: int) -> tuple[torch.Tensor, torch.Tensor]:
        rows = self.draws[t]
        return self.images[rows], self.masks[rows]


@dataclass(frozen=True)
class RoundTraining:
    """How every round trains: `steps` batches of `batch_size`, a fresh one-epoch trainer from `make_trainer`,
    validation once at the end on the fixed validation set (images and masks (V, S, S); V may be 0);
    `bootstrap`: each member draws its own batches (see `member_draws`), from `seed`."""

    steps: int
    batch_size: int
    make_trainer: TrainerFactory
    val_images: np.ndarray
    val_masks: np.ndarray
    bootstrap: bool
    seed: int

    def fit(self, committee: Committee, images: np.ndarray, masks: np.ndarray) -> dict[str, float]:
        """Train on images and masks (N, S, S); return the logged `val/*` metrics."""
        draws = member_draws(len(images), self.steps * self.batch_size, len(committee.members), self.bootstrap,
                             self.seed)
        train = DataLoader(MemberBatches(images, masks, draws), batch_size=self.batch_size, shuffle=False)
        val = (DataLoader(_tensors(self.val_images, self.val_masks), batch_size=max(self.batch_size, 16))
               if len(self.val_images) else None)
        with quiet_lightning():
            trainer = self.make_trainer()
            committee.train()  # scoring left it in eval mode, and Lightning keeps the modes it finds
            trainer.fit(committee, train_dataloaders=train, val_dataloaders=val)
        return {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("val/")}
