"""The final pass of `medal segment`: full-size masks, hand RoIs and their boxes (contract 5).

The committee-mean probability at working resolution (`medal.segment.evaluate.mean_probs`) is upsampled to
each image's full size before Otsu, so the masks are as sharp as bilinear interpolation of the low-resolution
map allows. `medal.segment.experiment.write_outputs` decides whether the pass runs (a resume marker).
"""

from __future__ import annotations

import csv
import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from medal.atomic import atomic_path
from medal.data.images import DERIVED_BITS, read_radiograph, resize, write_png
from medal.errors import MedalError
from medal.preprocess.crop import Box, crop_square, roi_box
from medal.preprocess.masks import binarise

log = logging.getLogger("medal.segment")

BOXES_FILE = "boxes.csv"
#: Columns of `boxes.csv`, one row per image: its RoI box (half-open y0, x0, y1, x1 in the raw image), whether
#: its polarity was inverted, the raw image's size, the mask's area share, and whether a gold crop was written.
BOX_COLUMNS = ("id", "y0", "x0", "y1", "x1", "inverted", "height", "width", "mask_fraction", "gold")


def write_boxes(path: Path, rows: Sequence[Sequence[object]]) -> Path:
    """Write `boxes.csv` atomically (rows in `BOX_COLUMNS` order); its presence marks the RoI folder complete."""
    with atomic_path(path) as tmp, tmp.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(BOX_COLUMNS)
        writer.writerows(rows)
    return path


def read_boxes(path: Path) -> dict[str, Box]:
    """The RoI box (y0, x0, y1, x1) of every id in a `boxes.csv`."""
    try:
        with path.open(newline="") as fh:
            return {row["id"]: (int(row["y0"]), int(row["x0"]), int(row["y1"]), int(row["x1"]))
                    for row in csv.DictReader(fh)}
    except (KeyError, ValueError) as err:
        raise MedalError(f"{path}: not a boxes file of `medal segment` ({type(err).__name__}: {err}); "
                         "rerun the segmentation to rewrite it") from None


@dataclass
class FinalOutputs:
    """Where the final pass writes (contract 5) and how (`segment.roi.size`, `segment.roi.margin`,
    `segment.postprocess`)."""

    work_dir: Path
    roi_size: int
    margin: float
    postprocess: bool

    @property
    def masks(self) -> Path:
        return self.work_dir / "masks"

    @property
    def roi(self) -> Path:
        return self.work_dir / "roi"

    @property
    def roi_gold(self) -> Path:
        return self.work_dir / "roi_gold"


def hand_roi(radiograph: np.ndarray, prob: np.ndarray, flip: bool, postprocess: bool, margin: float,
             roi_size: int) -> tuple[np.ndarray, np.ndarray, tuple[int, int, int, int]]:
    """(full-size mask, RoI (roi_size, roi_size) float32, box) of one radiograph (H, W) in [0, 1] from the
    committee-mean probability at working resolution (S, S): the map upsampled to (H, W), Otsu (and the
    clean-up with `postprocess`), the polarity-normalised hand with its background zeroed, cropped square.

    The final pass and `medal predict` both call this, so a bundle's RoIs are the training RoIs.
    """
    prob_full = np.clip(resize(prob, radiograph.shape), 0.0, 1.0)
    mask = binarise(prob_full, postprocess)
    roi, box = crop_hand(radiograph, mask, flip, margin, roi_size)
    return mask, roi, box


def crop_hand(radiograph: np.ndarray, mask: np.ndarray, flip: bool, margin: float,
              roi_size: int) -> tuple[np.ndarray, Box]:
    """The RoI (roi_size, roi_size) float32 of a radiograph (H, W) in [0, 1] and its hand mask (H, W) bool: the
    polarity-normalised hand with its background zeroed, cropped square around the mask with `margin`; and
    the box. `hand_roi` cuts the committee's mask this way, `medal.data.phantom.rois` the true one."""
    hand = (1.0 - radiograph if flip else radiograph) * mask
    box = roi_box(mask, margin)
    return crop_square(hand, box, roi_size), box


def write_final(
    out: FinalOutputs,
    ids: Sequence[str],
    paths: Sequence[str],
    probs: Iterable[np.ndarray],
    inverted: dict[str, bool],
    gold_dir: Path | None = None,
) -> Path:
    """Full-size masks, hand RoIs (polarity-normalised, background zeroed) and their boxes; gold crops too.

    Masks are 8-bit binary; RoIs and gold crops are 16-bit (`DERIVED_BITS`), read with `read_radiograph`
    (the file's stored range mapped to [0, 1], so a 12-bit image in a 16-bit file keeps its 4096 levels and
    its polarity flip stays inside its range).

    `probs` yields the committee-mean probability at working resolution (S, S) of ids[i], in order (a
    stretched square of the image, so a plain resize maps it back): an (N, S, S) array, or a stream
    (`medal.segment.evaluate.mean_prob_maps`), so one image's maps and full-size arrays are in memory at a
    time. boxes.csv is written last: its presence marks a complete pass.
    """
    rows = []
    for image_id, path, prob in tqdm(zip(ids, paths, probs, strict=True), total=len(ids), desc="masks + RoIs",
                                     unit="img"):
        image = read_radiograph(path)
        flip = bool(inverted.get(image_id, False))
        mask, roi, box = hand_roi(image, prob, flip, out.postprocess, out.margin, out.roi_size)
        write_png(out.masks / f"{image_id}.png", mask)
        write_png(out.roi / f"{image_id}.png", roi, bits=DERIVED_BITS)
        has_gold = False
        if gold_dir is not None and (gold_dir / f"{image_id}.png").is_file():
            gold = read_radiograph(gold_dir / f"{image_id}.png")
            if gold.shape != image.shape:
                raise MedalError(f"{gold_dir / image_id}.png: gold image size differs from the raw image's")
            write_png(out.roi_gold / f"{image_id}.png", crop_square(gold, box, out.roi_size), bits=DERIVED_BITS)
            has_gold = True
        y0, x0, y1, x1 = box
        rows.append([image_id, y0, x0, y1, x1, int(flip), image.shape[0], image.shape[1], float(mask.mean()),
                     int(has_gold)])
    path = write_boxes(out.roi / BOXES_FILE, rows)
    log.info("wrote %d masks and RoIs under %s", len(rows), out.work_dir)
    return path
