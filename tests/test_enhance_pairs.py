"""Paired data: matching ids, the seeded split, aligned paired augmentation, clear errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from helpers.enhance_fixtures import write_pairs

from medal.data.images import write_png
from medal.enhance.pairs import PairDataset, PairedAugment, matching_ids, split_ids
from medal.errors import MedalError


def test_matching_ids_and_dataset_items(tmp_path: Path) -> None:
    inp, gold = write_pairs(tmp_path, n=5, size=32)
    write_png(inp / "9999.png", np.zeros((32, 32)))  # an input without gold: enhanced later, never scored
    ids = matching_ids(inp, gold)
    assert ids == [str(1000 + i) for i in range(5)]
    item = PairDataset(inp, gold, ids, image_size=16)[0]
    assert item["input"].shape == item["gold"].shape == (1, 16, 16)
    assert item["id"] == "1000"
    assert item["input"].min() >= 0 and item["gold"].max() <= 1


def test_missing_or_disjoint_folders_raise(tmp_path: Path) -> None:
    with pytest.raises(MedalError, match="image folder not found"):
        matching_ids(tmp_path / "nope", tmp_path)
    write_png(tmp_path / "a" / "1.png", np.zeros((8, 8)))
    write_png(tmp_path / "b" / "2.png", np.zeros((8, 8)))
    with pytest.raises(MedalError, match="no <id>.png in both folders"):
        matching_ids(tmp_path / "a", tmp_path / "b")


def test_misaligned_pair_sizes_raise(tmp_path: Path) -> None:
    write_png(tmp_path / "a" / "1.png", np.zeros((8, 8)))
    write_png(tmp_path / "b" / "1.png", np.zeros((8, 10)))
    with pytest.raises(MedalError, match="pixel-aligned"):
        PairDataset(tmp_path / "a", tmp_path / "b", ["1"], 8)[0]


def test_split_is_seeded_disjoint_and_complete() -> None:
    ids = [str(i) for i in range(50)]
    a, b = split_ids(ids, 0.1, 0.2, seed=3), split_ids(list(reversed(ids)), 0.1, 0.2, seed=3)
    assert a == b  # depends on the ids and the seed only, not their order
    assert (len(a.train), len(a.val), len(a.test)) == (35, 5, 10)
    assert sorted(a.train + a.val + a.test) == sorted(ids)
    assert split_ids(ids, 0.1, 0.2, seed=4).test != a.test
    with pytest.raises(MedalError, match="val_fraction"):
        split_ids(ids, 0.5, 0.5, seed=0)


def test_paired_augmentation_keeps_pairs_aligned() -> None:
    torch.manual_seed(0)
    x = torch.zeros(8, 1, 32, 32)
    x[:, :, 4:12, 6:26] = 1.0  # an asymmetric bar, so flips and rotations show
    y = 0.5 * x  # the same scene at another contrast; every augmentation here is linear in intensity
    x_aug, y_aug = PairedAugment(hflip=0.5, degrees=30.0)(x, y)
    assert not torch.allclose(x_aug, x)
    torch.testing.assert_close(y_aug, 0.5 * x_aug)
    per_image_change = (x_aug - x).abs().flatten(1).sum(1)
    assert per_image_change.unique().numel() > 1  # parameters are drawn per pair, not per batch


def test_paired_flip_only_is_an_exact_mirror() -> None:
    x, y = torch.rand(2, 1, 16, 16), torch.rand(2, 1, 16, 16)
    x_aug, y_aug = PairedAugment(hflip=1.0, degrees=30.0, rotation_p=0.0)(x, y)
    torch.testing.assert_close(x_aug, x.flip(-1))
    torch.testing.assert_close(y_aug, y.flip(-1))
