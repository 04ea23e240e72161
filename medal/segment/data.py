"""Segmentation's data container: every image at working resolution, where its full-size original lives,
its polarity, and held-out masks where the data set has them.

Images are stretched to size x size (the cache's `fit="stretch"`), so a plain resize maps a prediction back
onto the original. With `normalise_polarity`, white-background radiographs (found by the coarse phase) are
inverted before the networks see them; the final RoIs are polarity-normalised either way.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from medal.data.cache import cached_images
from medal.data.images import read_image
from medal.errors import MedalError


@dataclass
class SegData:
    """Rows in index order; `rows[id]` is an image's row. Satisfies `medal.active.loop.PoolData`."""

    ids: list[str]
    split: np.ndarray  # (N,) 'train' | 'val' | 'test'
    images: np.ndarray  # (N, S, S) float in [0, 1], polarity-normalised when `normalise_polarity`
    paths: list[str]  # (N,) full-size originals
    inverted: np.ndarray  # (N,) bool: the coarse phase found a white background
    normalise_polarity: bool
    eval_masks: np.ndarray | None = None  # (N, S, S) bool, for val/test Dice only (never for training)
    has_eval: np.ndarray | None = None  # (N,) bool: row has a held-out mask
    rows: dict[str, int] = field(init=False)

    def __post_init__(self) -> None:
        self.rows = {image_id: i for i, image_id in enumerate(self.ids)}
        if not len(self.ids) == len(self.split) == len(self.images) == len(self.paths) == len(self.inverted):
            raise MedalError(f"segmentation data: {len(self.ids)} ids but {len(self.images)} images, "
                             f"{len(self.paths)} paths, {len(self.inverted)} polarity flags")

    @property
    def size(self) -> int:
        return int(self.images.shape[-1])

    def where(self, split: str, with_masks: bool = False, limit: int | None = None) -> np.ndarray:
        """Rows of `split` (only those with a held-out mask when `with_masks`), the first `limit` of them."""
        idx = np.flatnonzero(self.split == split)
        if with_masks:
            idx = idx[self.has_eval[idx]] if self.has_eval is not None else idx[:0]
        return idx[:limit] if limit else idx

    def full_image(self, image_id: str) -> np.ndarray:
        """The original at full size, polarity-normalised like the working images."""
        row = self.rows[image_id]
        image = read_image(self.paths[row])
        return 1.0 - image if self.normalise_polarity and self.inverted[row] else image

    def full_shape(self, image_id: str) -> tuple[int, int]:
        """(height, width) of the original, read from its header."""
        with Image.open(self.paths[self.rows[image_id]]) as img:
            return img.size[1], img.size[0]


def with_masks(ids: list[str], masks_dir: Path | None) -> list[str]:
    """The ids that have `<masks_dir>/<id>.png`."""
    if masks_dir is None or not masks_dir.is_dir():
        return []
    return [i for i in ids if (masks_dir / f"{i}.png").is_file()]


def load_seg_data(
    index: pd.DataFrame,
    work_dir: Path,
    size: int,
    inverted: dict[str, bool],
    normalise_polarity: bool,
    eval_masks_dir: Path | None,
    workers: int | None,
) -> SegData:
    """Every image of `index` at size x size (stretched, cached under `work_dir`), polarity-normalised when
    asked; held-out masks from `eval_masks_dir` likewise. `inverted` must cover every id (the coarse table)."""
    ids = list(index["id"])
    missing = [i for i in ids if i not in inverted]
    if missing:
        raise MedalError(f"coarse table: no polarity for image {missing[0]} ({len(missing)} missing); "
                         "delete <data.work_dir>/coarse to recompute it")
    images = np.asarray(cached_images(ids, list(index["path"]), work_dir, size, fit="stretch", workers=workers),
                        dtype=np.float32)
    flags = np.array([bool(inverted[i]) for i in ids], dtype=bool)
    if normalise_polarity:
        images[flags] = 1.0 - images[flags]
    eval_ids = with_masks(ids, eval_masks_dir)
    eval_masks, has_eval = None, None
    if eval_ids:
        lowres = cached_images(eval_ids, [str(eval_masks_dir / f"{i}.png") for i in eval_ids], work_dir, size,
                               fit="stretch", workers=workers)
        eval_masks = np.zeros((len(ids), size, size), dtype=bool)
        rows = {i: r for r, i in enumerate(ids)}
        has_eval = np.zeros(len(ids), dtype=bool)
        for r, image_id in enumerate(eval_ids):
            eval_masks[rows[image_id]] = np.asarray(lowres[r]) > 0.5
            has_eval[rows[image_id]] = True
    return SegData(ids, index["split"].to_numpy(), images, [str(p) for p in index["path"]], flags,
                   normalise_polarity, eval_masks, has_eval)
