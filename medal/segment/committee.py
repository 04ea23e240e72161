"""The query-by-committee segmenter: `size` FC-DenseNets from different seeds, one labelled set.

All members see the same batches and are optimised by one optimiser on the sum of their losses:
their parameters are disjoint, so this is exactly `size` independent trainings in one pass over the
data (and one Lightning loop). Validation logs every member's Dice and the committee-mean's Dice,
both on Otsu-binarised probabilities (the paper's metric).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import pytorch_lightning as pl
import torch
from torch import nn

from medal.data.augment import AugmentOptions, augment, build_augmentation
from medal.errors import MedalError
from medal.models.fc_densenet import FCDenseNet
from medal.models.unet import UNet
from medal.segment.losses import bce_dice_loss, dice_iou


class UNetMember(nn.Module):
    """The paper's U-Net baseline behind the member interface: (logits, empty (B, 0) feature vector).

    The baseline draws its labels at random, so it needs no feature vector (QBC needs FC-DenseNets).
    """

    def __init__(self, **kwargs: Any) -> None:
        super().__init__()
        self.net = UNet(**kwargs)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits = self.net(x)
        return logits, logits.new_zeros((x.shape[0], 0))


ARCHS: dict[str, Callable[..., nn.Module]] = {"fc_densenet": FCDenseNet, "unet": UNetMember}


def build_members(size: int, seed: int, net: Mapping[str, Any], arch: str = "fc_densenet") -> nn.ModuleList:
    """`size` networks initialised from seeds seed, seed+1, ... without touching the global RNG."""
    if arch not in ARCHS:
        raise MedalError(f"segment arch={arch!r}: unknown; use one of {', '.join(ARCHS)}")
    if size < 1:
        raise MedalError(f"al.committee_size={size}: must be >= 1")
    members = []
    for k in range(size):
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed + k)
            members.append(ARCHS[arch](**dict(net)))
    return nn.ModuleList(members)


class Committee(pl.LightningModule):
    """Batches are (image (B,1,H,W) in [0,1], mask (B,1,H,W) in {0,1})."""

    def __init__(
        self,
        net: Mapping[str, Any] | None = None,
        size: int = 3,
        seed: int = 0,
        lr: float = 1e-3,
        weight_decay: float = 1e-4,
        augment: Mapping[str, Any] | None = None,
        channels_last: bool = True,
        arch: str = "fc_densenet",
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.members = build_members(size, seed, net or {}, arch)
        self.augmentation = build_augmentation(AugmentOptions(**dict(augment))) if augment else None
        self.channels_last = channels_last
        if channels_last:
            self.members.to(memory_format=torch.channels_last)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Logits (M, B, 1, H, W) and feature vectors (M, B, D) of every member."""
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        outs = [member(x) for member in self.members]
        return torch.stack([o[0] for o in outs]), torch.stack([o[1] for o in outs])

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        image, mask = batch
        if self.augmentation is not None:
            image, mask = augment(self.augmentation, image, mask)
            mask = (mask > 0.5).float()
        logits, _ = self(image)
        losses = torch.stack([bce_dice_loss(member_logits, mask) for member_logits in logits])
        self.log("train/loss", losses.mean(), prog_bar=True, batch_size=image.shape[0])
        return losses.sum()

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        image, mask = batch
        probs = torch.sigmoid(self(image)[0].float())
        n = image.shape[0]
        for k, member_probs in enumerate(probs):
            self.log(f"val/dice_m{k}", dice_iou(member_probs, mask)[0].mean(), batch_size=n)
        dice, iou = dice_iou(probs.mean(0), mask)
        self.log("val/dice", dice.mean(), prog_bar=True, batch_size=n)
        self.log("val/iou", iou.mean(), batch_size=n)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.AdamW(self.parameters(), lr=self.hparams.lr, weight_decay=self.hparams.weight_decay)
