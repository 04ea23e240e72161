"""Scoring a segmenter: each round's Dice at working resolution, and the final full-size Dice.

Both score the members' mean probability binarised with Otsu (the paper's g(y)), through the `SegModel`
protocol only, a chunk of images at a time: images are read, predicted and scored `batch_size` at a time, so
no split's images or probability maps are ever all in memory.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import torch

from medal.active.model import ImageSource, Rows, SegModel, chunks, in_chunks
from medal.data.images import read_image, resize
from medal.preprocess.masks import binarise
from medal.segment.data import SegData
from medal.segment.metrics import dice_iou, mean_mask_scores, summary_scores


def mean_probs(model: SegModel, images: ImageSource, batch_size: int) -> np.ndarray:
    """The members' mean foreground probability (N, S, S) float32 of images (N, S, S), all at once: for a few
    images (`mean_prob_maps` streams them)."""
    return in_chunks(lambda x: model.predict_probs(x).mean(0), images, batch_size, desc="predicting").numpy()


def mean_prob_maps(model: SegModel, images: ImageSource, batch_size: int) -> Iterator[np.ndarray]:
    """The members' mean foreground probability (S, S) float32 of each image of `images` (N, S, S) in order,
    predicted `batch_size` images at a time: one batch of maps in memory, whatever N."""
    for part in chunks(images, batch_size, desc="predicting"):
        yield from model.predict_probs(part).mean(0).numpy()


def per_image_dice(model: SegModel, images: ImageSource, masks: ImageSource, batch_size: int
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """Dice and IoU (N,) of the members' mean probability (Otsu-binarised) against masks (N, S, S), a batch of
    images and masks read at a time."""
    if len(images) != len(masks):
        raise ValueError(f"{len(images)} images but {len(masks)} masks")

    def score(part: np.ndarray, gold: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        probs = model.predict_probs(part).mean(0)[:, None]
        return dice_iou(probs, torch.from_numpy(np.asarray(gold, dtype=np.float32))[:, None])

    parts = [score(part, gold) for part, gold in zip(chunks(images, batch_size, "scoring"),
                                                     chunks(masks, batch_size, "masks"), strict=True)]
    if not parts:
        return torch.empty(0), torch.empty(0)
    return torch.cat([d for d, _ in parts]), torch.cat([i for _, i in parts])


def split_scores(model: SegModel, data: SegData, idx: np.ndarray, prefix: str, batch_size: int) -> dict[str, float]:
    """`<prefix>/dice`, `<prefix>/iou` and `<prefix>/dice_worst_decile` of the mean probability (Otsu-binarised)
    on rows `idx` at working resolution; {} when there are no such rows or no held-out masks."""
    if len(idx) == 0 or data.eval_masks is None:
        return {}
    dice, iou = per_image_dice(model, Rows(data.images, idx), Rows(data.eval_masks, idx), batch_size)
    return {f"{prefix}/{k}": v for k, v in summary_scores(dice.numpy(), iou.numpy()).items()}


def held_out_scores(model: SegModel, images: ImageSource, ids: Sequence[str], masks_dir: Path, postprocess: bool,
                    batch_size: int) -> dict[str, float]:
    """Mean Dice and IoU (and the worst decile's Dice) of full-size masks made as `write_final` makes them (mean
    probability upsampled to the reference mask's size, Otsu, largest component), against
    `<masks_dir>/<id>.png`; writes nothing. Streams: one batch of maps and one full-size mask pair at a time."""
    probs = mean_prob_maps(model, images, batch_size)

    def pairs():
        for prob, image_id in zip(probs, ids, strict=True):
            gold = read_image(masks_dir / f"{image_id}.png") > 0.5
            yield binarise(np.clip(resize(prob, gold.shape), 0, 1), postprocess), gold

    return mean_mask_scores(pairs())
