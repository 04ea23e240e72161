"""Segmentation metrics: the paper's Dice (and IoU) on Otsu-binarised predictions, per image and over files.

The loss (`medal.losses.bce_dice_loss`) uses a soft Dice; the *metric* binarises each probability map with
its own Otsu threshold first (`medal.preprocess.masks.binarise`, the paper's g(y)), as the paper reports it.
Both masks empty counts as perfect agreement (Dice and IoU 1).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import torch
from torchmetrics.functional.classification import binary_jaccard_index
from torchmetrics.functional.segmentation import dice_score

from medal.data.images import read_image
from medal.errors import MedalError
from medal.preprocess.masks import binarise


def otsu_binarise(probs: torch.Tensor) -> torch.Tensor:
    """Binarise each probability map of (B, 1, H, W) with its own Otsu threshold (0.5 if it is flat).

    Examples:
        >>> p = torch.tensor([[[[0.1, 0.4], [0.1, 0.45]]], [[[0.7, 0.7], [0.7, 0.7]]]])
        >>> otsu_binarise(p).int().flatten(1).tolist()
        [[0, 1, 0, 1], [1, 1, 1, 1]]
    """
    arr = probs.detach().float().cpu().numpy()
    out = np.stack([binarise(p, postprocess=False) for p in arr]) if len(arr) else np.zeros(arr.shape, bool)
    return torch.from_numpy(out).to(probs.device)


def dice_iou(probs: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-image Dice and IoU of the Otsu-binarised prediction (B, 1, H, W) against a binary target, both (B,).

    Examples:
        >>> probs = torch.full((1, 1, 4, 4), 0.1); probs[..., :2, :] = 0.4  # Otsu keeps 8 px although < 0.5
        >>> target = torch.zeros(1, 1, 4, 4); target[..., :3, :] = 1  # 12 px, 8 of them predicted
        >>> [round(v.item(), 4) for v in dice_iou(probs, target)]
        [0.8, 0.6667]
    """
    pred = otsu_binarise(probs).long()
    gold = (target > 0.5).long()
    with warnings.catch_warnings():  # torchmetrics warns about a default change even when `average` is given
        warnings.simplefilter("ignore", UserWarning)
        dice = dice_score(pred, gold, num_classes=1, input_format="one-hot", average="micro")
    iou = torch.stack([binary_jaccard_index(p, g, zero_division=1.0) for p, g in zip(pred, gold, strict=True)])
    dice = torch.nan_to_num(dice.reshape(-1).float(), nan=1.0)  # both masks empty: perfect agreement
    return dice, iou.float()


def worst_share_mean(values: np.ndarray | Sequence[float], share: float = 0.1) -> float:
    """Mean of the worst `share` of per-image scores (at least one image): the worst-decile Dice by default, the
    hard cases that annotation should fix and a mean hides.

    Examples:
        >>> worst_share_mean([0.99, 0.98, 0.97, 0.5, 0.96, 0.95, 0.94, 0.93, 0.92, 0.6], 0.2)  # 2 of 10
        0.55
        >>> worst_share_mean([0.9, 0.8])  # two images: the worst one
        0.8
    """
    v = np.sort(np.asarray(values, dtype=np.float64))
    if v.size == 0:
        raise MedalError("worst share of no scores: need at least one image")
    return float(v[: max(1, math.ceil(share * v.size - 1e-9))].mean())


def summary_scores(dice: np.ndarray | Sequence[float], iou: np.ndarray | Sequence[float]) -> dict[str, float]:
    """`dice`, `iou` (means over images) and `dice_worst_decile` of per-image scores; {} when there are none.

    Examples:
        >>> {k: round(v, 3) for k, v in summary_scores([1.0, 0.5, 0.9], [1.0, 0.33, 0.8]).items()}
        {'dice': 0.8, 'iou': 0.71, 'dice_worst_decile': 0.5}
    """
    if len(dice) == 0:
        return {}
    return {"dice": float(np.mean(dice)), "iou": float(np.mean(iou)), "dice_worst_decile": worst_share_mean(dice)}


def mean_mask_scores(pairs: Iterable[tuple[np.ndarray, np.ndarray]]) -> dict[str, float]:
    """Mean Dice and IoU (and the worst decile's Dice) over (predicted, reference) boolean full-size mask pairs;
    {} when there are none.

    Examples:
        >>> a = np.zeros((4, 4), bool); a[:2] = True
        >>> b = np.zeros((4, 4), bool); b[:1] = True
        >>> {k: round(v, 4) for k, v in mean_mask_scores([(a, a), (a, b)]).items()}  # Dice 1 and 2/3, IoU 1 and 1/2
        {'dice': 0.8333, 'iou': 0.75, 'dice_worst_decile': 0.6667}
    """
    dices, ious = [], []
    for pred, gold in pairs:
        dice, iou = dice_iou(torch.from_numpy(pred).float()[None, None], torch.from_numpy(gold).float()[None, None])
        dices.append(float(dice))
        ious.append(float(iou))
    return summary_scores(dices, ious)


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
