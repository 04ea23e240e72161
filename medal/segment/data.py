"""Segmentation's data container: every image at working resolution, where its full-size original lives,
its polarity, and held-out masks where the data set has them.

Images are stretched to size x size (the cache's `fit="stretch"`), so a plain resize maps a prediction back
onto the original. With `normalise_polarity`, white-background radiographs (found by the coarse phase) are
inverted before the networks see them; the final RoIs are polarity-normalised either way.

The working images stay on disk: `load_seg_data` hands out `WorkingImages`, a reader of the image cache's float16
file (`medal.data.cache`) that returns the rows asked for as float32, polarity applied on read, and held-out
masks as `HeldOutMasks` over the masks' cache. So a data set costs its cache file's disk and no memory (about
26 GB in float32 at 100,000 images of 256 px); whoever reads the pool reads it a chunk of rows at a time
(`medal.active.model.Rows`, `in_chunks`). Each read maps the file afresh and lets it go, so the rows read
before do not stay in the process's resident memory, and the readers pickle as a path (a benchmark's worker
processes get the path, not the data).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from PIL import Image

from medal.active.model import ImageSource
from medal.data.cache import cached_images
from medal.data.images import read_image
from medal.errors import MedalError


def _rows(key: Any, n: int) -> np.ndarray | int:
    """Row numbers of `key` (int, slice, list, integer or boolean array) into n rows, as numpy indexes them."""
    return np.arange(n)[key]


def read_rows(path: Path, rows: np.ndarray) -> np.ndarray:
    """Rows `rows` (any order, repeats allowed) of the .npy array at `path`, read through a memory map opened for
    this read only, in the file's dtype: (len(rows), ...)."""
    array = np.load(path, mmap_mode="r")
    order = np.argsort(rows, kind="stable")  # ascending: each page of the file read once, front to back
    out = np.empty((len(rows), *array.shape[1:]), dtype=array.dtype)
    out[order] = array[rows[order]]
    del array  # unmapped: what was read leaves the process's resident set
    return out


@dataclass(frozen=True)
class WorkingImages:
    """The working images (N, S, S) of a cache file (`medal.data.cache`, float16 in [0, 1]) read on demand:
    `images[key]` (an int, a slice, a list or an index array) is float32, rows with `invert` set flipped
    (1 - x, the polarity normalisation): exactly the values of the whole array converted to float32."""

    path: Path  # the cache's .npy
    invert: np.ndarray  # (N,) bool
    shape: tuple[int, ...] = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "shape", tuple(self.array.shape))
        if len(self.invert) != self.shape[0]:
            raise MedalError(f"{self.path}: {self.shape[0]} cached images but {len(self.invert)} polarity flags")

    @property
    def array(self) -> np.memmap:
        """The cache itself, memory-mapped read-only (float16 (N, S, S)): no row is read until indexed."""
        return np.load(self.path, mmap_mode="r")

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, key: Any) -> np.ndarray:
        rows = _rows(key, len(self))
        if np.ndim(rows) == 0:
            return self[[int(rows)]][0]
        out = read_rows(self.path, rows).astype(np.float32)
        flip = self.invert[rows]
        out[flip] = 1.0 - out[flip]
        return out


@dataclass(frozen=True)
class HeldOutMasks:
    """Held-out masks (N, S, S) read on demand from the masks' cache (float16, one row per image that has a
    mask): `masks[key]` is bool, True above 0.5; a row without a mask (`row_of` -1) reads all False."""

    path: Path  # the masks' cache .npy
    row_of: np.ndarray  # (N,) int: row of the masks' cache, -1 where the image has no held-out mask
    shape: tuple[int, ...] = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "shape", (len(self.row_of), *np.load(self.path, mmap_mode="r").shape[1:]))

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, key: Any) -> np.ndarray:
        rows = _rows(key, len(self))
        if np.ndim(rows) == 0:
            return self[[int(rows)]][0]
        source = self.row_of[rows]
        out = np.zeros((len(rows), *self.shape[1:]), dtype=bool)
        has = source >= 0
        out[has] = read_rows(self.path, source[has]) > 0.5
        return out


@dataclass
class SegData:
    """Rows in index order; `rows[id]` is an image's row. Satisfies `medal.active.loop.PoolData`."""

    ids: list[str]
    split: np.ndarray  # (N,) 'train' | 'val' | 'test'
    images: ImageSource  # (N, S, S) float32 in [0, 1], polarity-normalised when `normalise_polarity` (on read)
    paths: list[str]  # (N,) full-size originals
    inverted: np.ndarray  # (N,) bool: the coarse phase found a white background
    normalise_polarity: bool
    eval_masks: ImageSource | None = None  # (N, S, S) bool, for val/test Dice only (never for training)
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
    """Every image of `index` at size x size (stretched, cached under `work_dir`; read from the cache on demand,
    `WorkingImages`), polarity-normalised on read when asked; held-out masks from `eval_masks_dir` likewise
    (`HeldOutMasks`). `inverted` must cover every id (the coarse table)."""
    ids = list(index["id"])
    missing = [i for i in ids if i not in inverted]
    if missing:
        raise MedalError(f"coarse table: no polarity for image {missing[0]} ({len(missing)} missing); "
                         "delete <data.work_dir>/coarse to recompute it")
    cache = cached_images(ids, list(index["path"]), work_dir, size, fit="stretch", workers=workers)
    flags = np.array([bool(inverted[i]) for i in ids], dtype=bool)
    images = WorkingImages(Path(cache.filename), flags if normalise_polarity else np.zeros(len(ids), dtype=bool))
    eval_ids = with_masks(ids, eval_masks_dir)
    eval_masks, has_eval = None, None
    if eval_ids:
        lowres = cached_images(eval_ids, [str(eval_masks_dir / f"{i}.png") for i in eval_ids], work_dir, size,
                               fit="stretch", workers=workers)
        rows = {i: r for r, i in enumerate(eval_ids)}
        row_of = np.array([rows.get(i, -1) for i in ids], dtype=np.int64)
        eval_masks, has_eval = HeldOutMasks(Path(lowres.filename), row_of), row_of >= 0
    return SegData(ids, index["split"].to_numpy(), images, [str(p) for p in index["path"]], flags,
                   normalise_polarity, eval_masks, has_eval)
