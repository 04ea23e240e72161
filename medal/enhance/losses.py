"""Enhancer losses: adversarial (`GANLoss`, on logits) and reconstruction (`paper` eq. 4 or `l1`).

Every loss takes the generator's *logits*, never probabilities, so the sigmoid and the log of the
BCE are fused (`binary_cross_entropy_with_logits`), which stays finite under bf16 and at saturation.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from medal.errors import MedalError
from medal.losses import bce_dice_loss

# Dice smoothing on intensities: small, so a dark image's Dice is not pulled to 1 (masks use medal.losses.DICE_EPS).
INTENSITY_DICE_EPS = 1e-6

ADVERSARIAL_MODES = ("bce", "lsgan")
RECONSTRUCTIONS = ("paper", "l1")


class GANLoss(nn.Module):
    """Adversarial loss on discriminator logits against an all-real or all-fake target.

    `bce`: the standard (non-saturating for G) GAN loss, BCE with logits.
    `lsgan`: least squares (Mao et al.) on the raw logits, targets 1 / 0.

    Args:
        logits: D's output, any shape (one logit per pair, or a PatchGAN map).

    Raises:
        MedalError: `mode` is not one of `ADVERSARIAL_MODES`.

    Examples:
        >>> GANLoss("bce")(torch.zeros(4), target_is_real=True)  # D undecided: log 2
        tensor(0.6931)
        >>> GANLoss("lsgan")(torch.tensor([1.0, 3.0]), target_is_real=False)  # (1 + 9) / 2
        tensor(5.)
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


def paper_reconstruction(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Eq. 4 of the paper on intensities: mean pixelwise BCE + (1 - soft Dice), averaged over the batch.

    Args:
        logits: G's output (B, 1, H, W) before the sigmoid; target: the gold intensities, same shape, in [0, 1].

    Examples:
        >>> target = torch.tensor([[[[1.0, 0.0]]]])
        >>> perfect = paper_reconstruction(torch.tensor([[[[20.0, -20.0]]]]), target)
        >>> wrong = paper_reconstruction(torch.tensor([[[[-20.0, 20.0]]]]), target)
        >>> bool(perfect < 1e-6), bool(wrong > 10)
        (True, True)
    """
    return bce_dice_loss(logits, target, eps=INTENSITY_DICE_EPS)


def l1_reconstruction(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """pix2pix's L1 between the generated intensities and the target.

    Examples:
        >>> l1_reconstruction(torch.zeros(1, 1, 1, 2), torch.tensor([[[[0.5, 0.0]]]]))  # sigmoid(0) = 0.5
        tensor(0.2500)
    """
    return F.l1_loss(torch.sigmoid(logits.float()), target.float())


def reconstruction_loss(kind: str):
    """Reconstruction loss by config name (`enhance.reconstruction.kind`)."""
    losses = {"paper": paper_reconstruction, "l1": l1_reconstruction}
    if kind not in losses:
        raise MedalError(
            f"enhance.reconstruction.kind={kind!r}: unknown loss; use one of {', '.join(RECONSTRUCTIONS)}"
        )
    return losses[kind]
