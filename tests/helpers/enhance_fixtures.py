"""Synthetic (input, gold) pairs for the enhancement tests: a learnable, pixel-aligned degradation."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from helpers.rsna_layouts import make_official
from medal.data.images import write_png


def synthetic_pair(rng: np.random.Generator, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Gold: dark background, soft tissue, bright 'bones'. Input: the same scene, washed out and noisy."""
    yy, xx = np.mgrid[0:size, 0:size] / size
    hand = ((xx - 0.5) / 0.35) ** 2 + ((yy - 0.5) / 0.45) ** 2 < 1
    gold = 0.15 * hand.astype(np.float32)
    for _ in range(rng.integers(3, 7)):
        cx, cy = rng.uniform(0.3, 0.7, 2)
        rx, ry = rng.uniform(0.03, 0.08), rng.uniform(0.08, 0.2)
        bone = ((xx - cx) / rx) ** 2 + ((yy - cy) / ry) ** 2 < 1
        gold[bone & hand] = rng.uniform(0.6, 0.9)
    contrast, offset = rng.uniform(0.3, 0.5), rng.uniform(0.25, 0.4)
    noisy = offset + contrast * gold + rng.normal(0, 0.03, gold.shape)
    inp = np.where(hand, noisy, 0.0).astype(np.float32)
    return np.clip(inp, 0, 1), gold


def write_pairs(root: Path, n: int, size: int, seed: int = 0) -> tuple[Path, Path]:
    """Write `n` pairs as `root/roi/<id>.png` and `root/roi_gold/<id>.png`; return both folders."""
    rng = np.random.default_rng(seed)
    for i in range(n):
        inp, gold = synthetic_pair(rng, size)
        write_png(root / "roi" / f"{1000 + i}.png", inp)
        write_png(root / "roi_gold" / f"{1000 + i}.png", gold)
    return root / "roi", root / "roi_gold"


def pairs_data_set(root: Path, n: int) -> Path:
    """The data set (official RSNA layout) that `write_pairs(..., n)`'s RoIs come from, at `root`: training
    images 1000 .. 1000 + n - 1, and a labelled official test split (9000, 9001) that is its test holdout, so
    the enhancer, which leaves the holdout out of its pairs, keeps every pair. Returns `root`."""
    make_official(root, n_train=n, n_val=2, n_test=2, size=(24, 20), modes=("L",))
    return root
