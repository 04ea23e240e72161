"""Committee inference: pool scoring for the query strategies and the final full-size masks and RoIs.

Scoring runs batch by batch under `inference_mode` with the fast dtype (bf16 autocast) and keeps only
per-image scores, so a 12k-image pool never holds every probability map or feature vector at once.
The final pass upsamples the committee-mean probability to each image's full size before Otsu, so the
masks are as sharp as bilinear interpolation of the low-resolution map allows.
"""

from __future__ import annotations

import csv
import logging
from collections.abc import Callable, Iterator, Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from skimage.filters import threshold_otsu
from tqdm.auto import tqdm

from medal.active import strategies
from medal.atomic import atomic_path
from medal.data.images import DERIVED_BITS, read_image, read_radiograph, resize, write_png
from medal.errors import MedalError
from medal.preprocess.coarse import clean_mask
from medal.preprocess.crop import crop_square, roi_box
from medal.segment.committee import Committee
from medal.segment.losses import mean_mask_scores

log = logging.getLogger("medal.segment")

BOXES_FILE = "boxes.csv"


def _autocast(device: torch.device, fast: bool):
    if not fast:
        return nullcontext()
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16)


def batches(images: np.ndarray, batch_size: int, desc: str) -> Iterator[tuple[slice, torch.Tensor]]:
    """(slice, float32 tensor (b, 1, S, S)) over the rows of an (N, S, S) array, with a progress bar."""
    n = len(images)
    for start in tqdm(range(0, n, batch_size), desc=desc, unit="batch", leave=False, disable=n <= batch_size):
        sl = slice(start, min(n, start + batch_size))
        yield sl, torch.from_numpy(np.asarray(images[sl], dtype=np.float32))[:, None]


@torch.inference_mode()
def committee_apply(
    committee: Committee,
    images: np.ndarray,
    reduce: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    batch_size: int = 16,
    fast: bool = True,
    desc: str = "scoring",
) -> torch.Tensor:
    """Concatenate `reduce(probs (M,b,1,S,S), features (M,b,D))` over batches of `images` (N, S, S)."""
    was_training = committee.training
    committee.eval()
    device = committee.device
    out = []
    for _, x in batches(images, batch_size, desc):
        with _autocast(device, fast):
            logits, feats = committee(x.to(device))
        out.append(reduce(torch.sigmoid(logits.float()), feats.float()).cpu())
    committee.train(was_training)
    return torch.cat(out) if out else torch.empty(0)


def score_pool(
    committee: Committee | None,
    images: np.ndarray,
    strategy: str,
    batch_size: int = 16,
    fast: bool = True,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Informativeness score of every pool image (higher = query first)."""
    if strategy == "random":
        return strategies.random(len(images), 0, generator)[1]
    if committee is None:
        raise MedalError(f"strategy={strategy}: needs a trained committee")
    if strategy == "qbc":
        return committee_apply(committee, images, lambda p, f: strategies.qbc(f, 0)[1], batch_size, fast)
    if strategy == "entropy":
        return committee_apply(committee, images, lambda p, f: strategies.entropy(p, 0)[1], batch_size, fast)
    raise MedalError(f"strategy={strategy!r}: unknown; use one of {', '.join(strategies.STRATEGIES)}")


def mean_probs(committee: Committee, images: np.ndarray, batch_size: int = 16, fast: bool = True) -> np.ndarray:
    """Committee-mean foreground probability (N, S, S) float32."""
    probs = committee_apply(committee, images, lambda p, f: p.mean(0)[:, 0], batch_size, fast, desc="predicting")
    return probs.numpy()


def member_probs(committee: Committee, images: np.ndarray, batch_size: int = 16, fast: bool = True) -> np.ndarray:
    """Every member's probability (M, N, S, S) float32 (for figures: keep N small)."""
    probs = committee_apply(committee, images, lambda p, f: p[:, :, 0].transpose(0, 1), batch_size, fast)
    return probs.transpose(0, 1).numpy()


def binarise(prob: np.ndarray, postprocess: bool = True) -> np.ndarray:
    """Otsu-binarised probability map (the paper's g(y)); optionally one solid blob (largest component)."""
    thr = threshold_otsu(prob) if float(prob.max()) - float(prob.min()) > 1e-6 else 0.5
    mask = prob > thr
    return clean_mask(mask, closing_radius=0) if postprocess and mask.any() else mask


def held_out_scores(committee: Committee, images: np.ndarray, ids: Sequence[str], masks_dir: Path,
                    postprocess: bool = True, batch_size: int = 16, fast: bool = False) -> dict[str, float]:
    """Mean Dice and IoU of full-size masks made as `write_final` makes them (mean probability upsampled to
    the reference mask's size, Otsu, largest component), against `<masks_dir>/<id>.png`; writes nothing."""
    probs = mean_probs(committee, images, batch_size, fast)

    def pairs():
        for prob, image_id in zip(probs, ids, strict=True):
            gold = read_image(masks_dir / f"{image_id}.png") > 0.5
            yield binarise(np.clip(resize(prob, gold.shape), 0, 1), postprocess), gold

    return mean_mask_scores(pairs())


@dataclass
class FinalOutputs:
    """Where the final pass writes (contract 5) and how."""

    work_dir: Path
    roi_size: int = 512
    margin: float = 0.05
    postprocess: bool = True

    @property
    def masks(self) -> Path:
        return self.work_dir / "masks"

    @property
    def roi(self) -> Path:
        return self.work_dir / "roi"

    @property
    def roi_gold(self) -> Path:
        return self.work_dir / "roi_gold"


def write_final(
    out: FinalOutputs,
    ids: Sequence[str],
    paths: Sequence[str],
    probs: np.ndarray,
    inverted: dict[str, bool],
    gold_dir: Path | None = None,
) -> Path:
    """Full-size masks, hand RoIs (polarity-normalised, background zeroed) and their boxes; gold crops too.

    Masks are 8-bit binary; RoIs and gold crops are 16-bit (`DERIVED_BITS`), read with `read_radiograph`
    (the file's stored range mapped to [0, 1], so a 12-bit image in a 16-bit file keeps its 4096 levels and
    its polarity flip stays inside its range).

    `probs` is the committee-mean probability at working resolution, row i for ids[i] (a stretched
    square of the image, so a plain resize maps it back). boxes.csv is written last: its presence
    marks a complete pass.
    """
    rows = []
    for i, (image_id, path) in enumerate(tqdm(list(zip(ids, paths, strict=True)), desc="masks + RoIs", unit="img")):
        image = read_radiograph(path)
        prob = np.clip(resize(probs[i], image.shape), 0.0, 1.0)
        mask = binarise(prob, out.postprocess)
        write_png(out.masks / f"{image_id}.png", mask)
        flip = bool(inverted.get(image_id, False))
        hand = (1.0 - image if flip else image) * mask
        box = roi_box(mask, out.margin)
        write_png(out.roi / f"{image_id}.png", crop_square(hand, box, out.roi_size), bits=DERIVED_BITS)
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
    path = out.roi / BOXES_FILE
    with atomic_path(path) as tmp, tmp.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["id", "y0", "x0", "y1", "x1", "inverted", "height", "width", "mask_fraction", "gold"])
        writer.writerows(rows)
    log.info("wrote %d masks and RoIs under %s", len(rows), out.work_dir)
    return path
