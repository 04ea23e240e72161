"""The paper's loss (eq. 3-4), shared by the learned stages: pixelwise BCE + (1 - soft Dice).

The segmenter applies it to hand masks, the enhancer's `paper` reconstruction to intensities in [0, 1]; one
copy, so the two stages cannot drift apart. BCE takes logits (`binary_cross_entropy_with_logits`), which
stays finite where a sigmoid followed by a log would saturate (the reference code applied the sigmoid twice).
Everything is computed in float32, also under bf16 autocast.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

DICE_EPS = 1.0  # smoothing: an empty prediction of an empty mask scores 1 (not 0/0), and gradients stay tame


def soft_dice(probs: torch.Tensor, target: torch.Tensor, eps: float = DICE_EPS) -> torch.Tensor:
    """Per-image soft Dice (2|p·y| + eps) / (|p| + |y| + eps) of maps (B, ...) in [0, 1] -> (B,).

    Examples:
        >>> p = torch.tensor([[[[1.0, 0.0]]], [[[0.0, 0.0]]]])
        >>> soft_dice(p, torch.tensor([[[[1.0, 0.0]]], [[[0.0, 0.0]]]])).tolist()  # exact, and both empty
        [1.0, 1.0]
        >>> round(soft_dice(p[:1], torch.tensor([[[[0.0, 1.0]]]])).item(), 3)  # disjoint: eps / (2 + eps)
        0.333
    """
    dims = tuple(range(1, probs.dim()))
    inter = (probs * target).sum(dims)
    return (2 * inter + eps) / (probs.sum(dims) + target.sum(dims) + eps)


def bce_dice_loss(logits: torch.Tensor, target: torch.Tensor, eps: float = DICE_EPS) -> torch.Tensor:
    """Mean pixelwise BCE of `logits` (B, ...) against `target` + mean over images of (1 - soft Dice).

    Examples:
        >>> loss = bce_dice_loss(torch.tensor([[[[20.0, -20.0]]]]), torch.tensor([[[[1.0, 0.0]]]]))
        >>> round(loss.item(), 4)  # confident and right: BCE ~ 0, Dice ~ 1
        0.0
        >>> bool(torch.isfinite(bce_dice_loss(torch.tensor([[[[200.0]]]]), torch.tensor([[[[0.0]]]]))))
        True
    """
    logits = logits.float()
    target = target.float()
    bce = F.binary_cross_entropy_with_logits(logits, target)
    return bce + (1.0 - soft_dice(torch.sigmoid(logits), target, eps)).mean()
