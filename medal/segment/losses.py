"""Segmentation loss (paper eq. 3-4) and the paper's Dice metric on Otsu-binarised predictions.

The loss is pixelwise BCE + (1 - soft Dice). BCE takes logits (`binary_cross_entropy_with_logits`),
which is stable where a sigmoid followed by log would saturate (the reference code's double-sigmoid
bug). The Dice in the loss is the soft one (differentiable); the *metric* binarises the probability
map with Otsu's threshold first, as the paper's g(y) does.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable

import numpy as np
import torch
import torch.nn.functional as F
from skimage.filters import threshold_otsu
from torchmetrics.functional.classification import binary_jaccard_index
from torchmetrics.functional.segmentation import dice_score


def soft_dice(probs: torch.Tensor, target: torch.Tensor, eps: float = 1.0) -> torch.Tensor:
    """Per-image soft Dice 2|p*y| / (|p| + |y|), smoothed by `eps` so empty masks score 1, not NaN."""
    dims = tuple(range(1, probs.dim()))
    inter = (probs * target).sum(dims)
    return (2 * inter + eps) / (probs.sum(dims) + target.sum(dims) + eps)


def bce_dice_loss(logits: torch.Tensor, target: torch.Tensor, eps: float = 1.0) -> torch.Tensor:
    """Mean pixelwise BCE + mean over images of (1 - soft Dice), computed in float32."""
    logits = logits.float()
    target = target.float()
    bce = F.binary_cross_entropy_with_logits(logits, target)
    return bce + (1.0 - soft_dice(torch.sigmoid(logits), target, eps)).mean()


def otsu_binarise(probs: torch.Tensor) -> torch.Tensor:
    """Binarise each probability map (B, 1, H, W) with its own Otsu threshold (0.5 if it is flat)."""
    arr = probs.detach().float().cpu().numpy()
    out = np.zeros(arr.shape, dtype=bool)
    for i, p in enumerate(arr):
        lo, hi = float(p.min()), float(p.max())
        thr = threshold_otsu(p.ravel()) if hi - lo > 1e-6 else 0.5
        out[i] = p > thr
    return torch.from_numpy(out).to(probs.device)


def mean_mask_scores(pairs: Iterable[tuple[np.ndarray, np.ndarray]]) -> dict[str, float]:
    """Mean Dice and IoU over (predicted, reference) boolean full-size mask pairs; {} when there are none."""
    dices, ious = [], []
    for pred, gold in pairs:
        dice, iou = dice_iou(torch.from_numpy(pred).float()[None, None], torch.from_numpy(gold).float()[None, None])
        dices.append(float(dice))
        ious.append(float(iou))
    return {"dice": float(np.mean(dices)), "iou": float(np.mean(ious))} if dices else {}


def dice_iou(probs: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-image Dice and IoU of the Otsu-binarised prediction against a binary target, both (B,)."""
    pred = otsu_binarise(probs).long()
    gold = (target > 0.5).long()
    with warnings.catch_warnings():  # torchmetrics warns about a default change even when `average` is given
        warnings.simplefilter("ignore", UserWarning)
        dice = dice_score(pred, gold, num_classes=1, input_format="one-hot", average="micro")
    iou = torch.stack([binary_jaccard_index(p, g, zero_division=1.0) for p, g in zip(pred, gold, strict=True)])
    dice = torch.nan_to_num(dice.reshape(-1).float(), nan=1.0)  # both masks empty: perfect agreement
    return dice, iou.float()
