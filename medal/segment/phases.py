"""The phases of `medal segment` over a data set: coarse masks, working-resolution arrays, final outputs.

Each phase writes its files atomically and ends by writing a small marker (a CSV or JSON listing what
it covered), so a rerun skips a phase whose marker matches and redoes one that was interrupted.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path

import numpy as np
import pandas as pd

from medal.active.loop import SegData
from medal.atomic import atomic_path, write_json
from medal.data.cache import cached_images
from medal.data.images import read_image, write_png
from medal.data.parallel import iter_parallel
from medal.errors import MedalError
from medal.preprocess.coarse import coarse_mask
from medal.segment.losses import mean_mask_scores

log = logging.getLogger("medal.segment")

COARSE_TABLE = "coarse.csv"
COARSE_VERSION = 2  # bump when coarse_mask changes, so stale masks are recomputed


@dataclass(frozen=True)
class CoarseOptions:
    work_size: int = 512
    closing_radius: int = 2
    border: float = 0.05


def _coarse_one(job: tuple[str, str, str], options: CoarseOptions) -> tuple[str, bool, float]:
    image_id, path, out = job
    mask, inverted = coarse_mask(read_image(path), options.work_size, options.closing_radius, options.border)
    write_png(out, mask)
    return image_id, inverted, float(mask.mean())


def coarse_phase(index: pd.DataFrame, work_dir: Path, options: CoarseOptions, workers: int | None = None) -> pd.DataFrame:
    """Write `coarse/<id>.png` for every image and `coarse/coarse.csv` (id, inverted, fraction); reuse if done."""
    out_dir = work_dir / "coarse"
    table_path = out_dir / COARSE_TABLE
    stamp_path = out_dir / "stamp.json"
    stamp = {"options": asdict(options), "version": COARSE_VERSION}
    if table_path.is_file() and read_stamp(stamp_path) == stamp:
        table = pd.read_csv(table_path, dtype={"id": str})
        if set(table["id"]) >= set(index["id"]) and all((out_dir / f"{i}.png").is_file() for i in index["id"]):
            log.info("coarse masks: reusing %s", table_path)
            return table.set_index("id").loc[list(index["id"])].reset_index()
    jobs = [(i, p, str(out_dir / f"{i}.png")) for i, p in zip(index["id"], index["path"], strict=True)]
    rows = list(iter_parallel(partial(_coarse_one, options=options), jobs, workers=workers, desc="coarse masks"))
    table = pd.DataFrame(rows, columns=["id", "inverted", "fraction"])
    with atomic_path(table_path) as tmp:
        table.to_csv(tmp, index=False)
    write_stamp(stamp_path, stamp)
    log.info("coarse masks: %d written, %d inverted", len(table), int(table["inverted"].sum()))
    return table


def mask_scores(pred_dir: Path, gold_dir: Path, ids: list[str]) -> dict[str, float]:
    """Mean Dice and IoU of full-size masks `<pred_dir>/<id>.png` against `<gold_dir>/<id>.png`."""
    def pairs():
        for image_id in ids:
            pred = read_image(pred_dir / f"{image_id}.png") > 0.5
            gold = read_image(gold_dir / f"{image_id}.png") > 0.5
            if pred.shape != gold.shape:
                raise MedalError(f"{gold_dir / image_id}.png: reference mask size differs from the image's")
            yield pred, gold

    return mean_mask_scores(pairs())


def with_masks(ids: list[str], masks_dir: Path | None) -> list[str]:
    """The ids that have `<masks_dir>/<id>.png`."""
    if masks_dir is None or not masks_dir.is_dir():
        return []
    return [i for i in ids if (masks_dir / f"{i}.png").is_file()]


def load_seg_data(
    index: pd.DataFrame,
    work_dir: Path,
    size: int,
    inverted: dict[str, bool] | None,
    eval_masks_dir: Path | None,
    workers: int | None = None,
) -> SegData:
    """Every image at size x size (stretched, cached), polarity-normalised; held-out masks likewise."""
    ids = list(index["id"])
    images = np.asarray(cached_images(ids, list(index["path"]), work_dir, size, fit="stretch", workers=workers),
                        dtype=np.float32)
    if inverted:
        flip = np.array([bool(inverted.get(i, False)) for i in ids])
        images[flip] = 1.0 - images[flip]
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
    return SegData(ids, index["split"].to_numpy(), images, eval_masks, has_eval)


def read_stamp(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None


def write_stamp(path: Path, stamp: dict) -> None:
    write_json(path, stamp, indent=1, sort_keys=True)
