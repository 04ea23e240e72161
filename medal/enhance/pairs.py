"""Paired (input, gold) images from two folders with matching ids, a seeded split and paired augmentation.

Any folder pair works: the segmentation stage's `roi/` + `roi_gold/`, or hand-made gold standards.
The split is a pure function of (ids, fractions, seed), so `gan`, `clahe` and `none` runs of a sweep
score exactly the same held-out pairs. Augmentation runs on the device after transfer and draws one
set of parameters per pair, so input and gold stay pixel-aligned.
"""

from __future__ import annotations

import logging
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from pathlib import Path

import kornia.augmentation as K
import numpy as np
import pandas as pd
import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset

from medal.data.images import read_image
from medal.errors import MedalError

log = logging.getLogger("medal.enhance")


def list_images(folder: str | Path) -> dict[str, Path]:
    """`{id: path}` of the `<id>.png` files in `folder` (sorted by id)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise MedalError(f"{folder}: image folder not found; run the stage that writes it or fix the path")
    return {p.stem: p for p in sorted(folder.glob("*.png"))}


def matching_ids(input_dir: str | Path, gold_dir: str | Path) -> list[str]:
    """Ids present in both folders; logs how many inputs have no gold (they are enhanced, not scored)."""
    inputs, golds = list_images(input_dir), list_images(gold_dir)
    ids = sorted(set(inputs) & set(golds))
    if not ids:
        raise MedalError(
            f"{input_dir} and {gold_dir}: no <id>.png in both folders; enhancement pairs need matching file names"
        )
    if len(golds) > len(ids):
        log.warning("%d gold images have no input in %s and are ignored", len(golds) - len(ids), input_dir)
    return ids


def excluded_ids(exclude: str | Path | None) -> set[str]:
    """The ids of `enhance.pairs.exclude` (a CSV with an `id` column), or none when it is null.

    The pipeline's per-fold enhancers (`pipeline.cv.refit=[enhance]`) leave their fold out this way, so no image
    that a fold's bone age model is scored on out of fold was a gold-standard pair of the enhancer it reads.
    """
    if exclude is None:
        return set()
    path = Path(str(exclude))
    if not path.is_file():
        raise MedalError(f"enhance.pairs.exclude={path}: no such file; give a CSV with an id column, or null")
    table = pd.read_csv(path, dtype={"id": str})
    if "id" not in table.columns:
        raise MedalError(f"enhance.pairs.exclude={path}: no id column; give a CSV with an id column, or null")
    return set(table["id"])


@dataclass(frozen=True)
class PairSplit:
    train: list[str]
    val: list[str]
    test: list[str]


def split_ids(ids: Sequence[str], val_fraction: float, test_fraction: float, seed: int,
              exclude: Collection[str] = ()) -> PairSplit:
    """Seeded train/val/test split of pair ids; val and test get at least one pair each.

    A pure function of (ids, fractions, seed, exclude): every method of a sweep scores the same held-out pairs.
    `exclude` (the bone age test holdout, `medal.data.split.held_out_ids`) is left out of every part, so the
    enhancer never trains, selects or is scored on a bone age test image.

    Examples:
        >>> split = split_ids([str(i) for i in range(10)], 0.2, 0.2, seed=0)
        >>> len(split.train), len(split.val), len(split.test)
        (6, 2, 2)
        >>> split == split_ids([str(i) for i in reversed(range(10))], 0.2, 0.2, seed=0)
        True
        >>> "3" in str(split_ids([str(i) for i in range(10)], 0.2, 0.2, seed=0, exclude={"3"}))
        False
    """
    if not (0 < val_fraction < 1 and 0 < test_fraction < 1 and val_fraction + test_fraction < 1):
        raise MedalError(
            f"enhance.pairs: val_fraction={val_fraction}, test_fraction={test_fraction}: "
            "each must be in (0, 1) and their sum < 1"
        )
    excluded = set(exclude)
    if excluded & set(ids):
        log.info("pairs: %d of %d are left out (the bone age test holdout, and enhance.pairs.exclude where given)",
                 len(excluded & set(ids)), len(ids))
        ids = [i for i in ids if i not in excluded]
    if len(ids) < 3:
        raise MedalError(f"enhance.pairs: {len(ids)} pairs outside the test holdout; need at least 3 (train, val, test)")
    order = np.random.default_rng(seed).permutation(sorted(ids))
    n_val = max(1, round(val_fraction * len(ids)))
    n_test = max(1, round(test_fraction * len(ids)))
    test, val, train = order[:n_test], order[n_test : n_test + n_val], order[n_test + n_val :]
    return PairSplit(sorted(train.tolist()), sorted(val.tolist()), sorted(test.tolist()))


def load_resized(path: Path, size: int) -> torch.Tensor:
    """Read a greyscale image as (1, size, size) float in [0, 1] (antialiased bilinear resize)."""
    img = torch.from_numpy(read_image(path))[None, None]
    if img.shape[-2:] != (size, size):
        img = F.interpolate(img, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    return img[0].clamp_(0, 1)


class PairDataset(Dataset):
    """Items `{"input": (1,S,S), "gold": (1,S,S), "id": str}` for the given ids."""

    def __init__(self, input_dir: str | Path, gold_dir: str | Path, ids: Sequence[str], image_size: int) -> None:
        self.input_dir, self.gold_dir = Path(input_dir), Path(gold_dir)
        self.ids, self.image_size = list(ids), image_size

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int) -> dict:
        id_ = self.ids[i]
        src, gold = self.input_dir / f"{id_}.png", self.gold_dir / f"{id_}.png"
        x, y = read_image(src), read_image(gold)
        if x.shape != y.shape:
            raise MedalError(
                f"{src} is {x.shape[1]}x{x.shape[0]} but its gold {gold} is {y.shape[1]}x{y.shape[0]}; "
                "pairs must be pixel-aligned crops of the same size"
            )
        return {"input": load_resized(src, self.image_size), "gold": load_resized(gold, self.image_size), "id": id_}


class PairedAugment(nn.Module):
    """Horizontal flip + rotation in [-degrees, degrees], one parameter draw per pair (paper 3.3)."""

    def __init__(self, hflip: float = 0.5, degrees: float = 30.0, rotation_p: float = 1.0) -> None:
        super().__init__()
        self.aug = K.AugmentationSequential(
            K.RandomHorizontalFlip(p=hflip),
            K.RandomRotation(degrees=float(degrees), p=rotation_p),
            data_keys=["input", "input"],
        )

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x_aug, y_aug = self.aug(x, y)
        return x_aug, y_aug


class PairDataModule(pl.LightningDataModule):
    """Train/val/test loaders over a `PairSplit`; paired augmentation on the device, training only."""

    def __init__(
        self,
        input_dir: str | Path,
        gold_dir: str | Path,
        split: PairSplit,
        image_size: int = 256,
        batch_size: int = 8,
        num_workers: int = 0,
        augment: PairedAugment | None = None,
    ) -> None:
        super().__init__()
        self.input_dir, self.gold_dir, self.split = input_dir, gold_dir, split
        self.image_size, self.batch_size, self.num_workers = image_size, batch_size, num_workers
        self.augment = augment

    def _loader(self, ids: list[str], shuffle: bool) -> DataLoader:
        return DataLoader(
            PairDataset(self.input_dir, self.gold_dir, ids, self.image_size),
            batch_size=self.batch_size,
            shuffle=shuffle,
            drop_last=shuffle and len(ids) > self.batch_size,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.split.train, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.split.val, shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader(self.split.test, shuffle=False)

    def on_after_batch_transfer(self, batch: dict, dataloader_idx: int) -> dict:
        if self.augment is not None and self.trainer is not None and self.trainer.training:
            batch["input"], batch["gold"] = self.augment(batch["input"], batch["gold"])
        return batch
