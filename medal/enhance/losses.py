"""Enhancer losses: adversarial (`GANLoss`, on logits) and reconstruction (`paper` eq. 4 or `l1`).

Every loss takes the generator's *logits*, never probabilities, so the sigmoid and the log of the
BCE are fused (`binary_cross_entropy_with_logits`), which stays finite under bf16 and at saturation.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from medal.errors import MedalError

ADVERSARIAL_MODES = ("bce", "lsgan")
RECONSTRUCTIONS = ("paper", "l1")


class GANLoss(nn.Module):
    """Adversarial loss on discriminator logits against an all-real or all-fake target.

    `bce`: the standard (non-saturating for G) GAN loss, BCE with logits.
    `lsgan`: least squares (Mao et al.) on the raw logits, targets 1 / 0.
    """

    def __init__(self, mode: str = "bce") -> None:
        super().__init__()
        if mode not in ADVERSARIAL_MODES:
            raise MedalError(f"enhance.adversarial={mode!r}: unknown mode; use one of {', '.join(ADVERSARIAL_MODES)}")
        self.mode = mode

    def forward(self, logits: torch.Tensor, target_is_real: bool) -> torch.Tensor:
        logits = logits.float()
        target = torch.full_like(logits, 1.0 if target_is_real else 0.0)
        if self.mode == "bce":
            return F.binary_cross_entropy_with_logits(logits, target)
        return F.mse_loss(logits, target)


def soft_dice(prob: torch.Tensor, target: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Per-image soft Dice 2|p∩y| / (|p| + |y|) of intensities in [0, 1] -> (B,)."""
    dims = tuple(range(1, prob.ndim))
    inter = (prob * target).sum(dims)
    return (2 * inter + eps) / (prob.sum(dims) + target.sum(dims) + eps)


def paper_reconstruction(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Eq. 4 of the paper on intensities: mean pixelwise BCE + (1 - soft Dice), averaged over the batch."""
    logits, target = logits.float(), target.float()
    bce = F.binary_cross_entropy_with_logits(logits, target)
    return bce + (1 - soft_dice(torch.sigmoid(logits), target)).mean()


def l1_reconstruction(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """pix2pix's L1 between the generated intensities and the target."""
    return F.l1_loss(torch.sigmoid(logits.float()), target.float())


def reconstruction_loss(kind: str):
    """Reconstruction loss by config name (`enhance.reconstruction.kind`)."""
    losses = {"paper": paper_reconstruction, "l1": l1_reconstruction}
    if kind not in losses:
        raise MedalError(
            f"enhance.reconstruction.kind={kind!r}: unknown loss; use one of {', '.join(RECONSTRUCTIONS)}"
        )
    return losses[kind]
