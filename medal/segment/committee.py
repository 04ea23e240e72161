"""The query-by-committee segmenter: `size` FC-DenseNets, one labelled set.

Members start from seeds seed, seed+1, ... (`shared=False`, the paper's "different random seeds") or all from
`seed` (`shared=True`), and train on the same batches or each on its own (`RoundTraining` with
`member_data=bootstrap`: a batch is then (B, size, 1, H, W), member k reading column k). Members from unrelated
random weights keep unrelated channel bases, so their bottleneck vectors are near-orthogonal for every image and
QBC's eq. 5 cannot rank anything; a shared start keeps the bases aligned and lets the data make them differ.
They are optimised by one optimiser on the sum of their losses: their parameters are disjoint, so this is
exactly `size` independent trainings in one pass (and one Lightning loop). Validation logs every member's Dice
and the committee-mean's Dice, both on Otsu-binarised probabilities (the paper's metric). The paper's U-Net
baseline is a committee of one `UNetMember`. Active learning sees it through `medal.segment.model.CommitteeModel`.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from typing import Any

import pytorch_lightning as pl
import torch
from torch import nn

from medal.config import options_from
from medal.data.augment import AugmentOptions, augment, build_augmentation
from medal.errors import MedalError
from medal.losses import bce_dice_loss
from medal.models.fc_densenet import FCDenseNet
from medal.models.unet import UNet
from medal.segment.metrics import dice_iou


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
NETWORKS: dict[str, type[nn.Module]] = {"fc_densenet": FCDenseNet, "unet": UNet}  # whose arguments `net` holds


def check_net(arch: str, net: Mapping[str, Any]) -> None:
    """Refuse an unknown architecture or a `net` key its network does not take, in one line.

    Examples:
        >>> check_net("unet", {"depth": 3, "width": 8})
        >>> check_net("unet", {"depht": 3})
        Traceback (most recent call last):
        ...
        medal.errors.MedalError: segmenter.net.depht: not an argument of UNet; known: depth, dropout, in_channels, norm, out_channels, width
    """
    if arch not in ARCHS:
        raise MedalError(f"segmenter.arch={arch!r}: unknown; use one of {', '.join(ARCHS)}")
    known = set(inspect.signature(NETWORKS[arch]).parameters) - {"self"}
    unknown = sorted(set(net) - known)
    if unknown:
        raise MedalError(f"segmenter.net.{unknown[0]}: not an argument of {NETWORKS[arch].__name__}; "
                         f"known: {', '.join(sorted(known))}")


def build_members(size: int, seed: int, net: Mapping[str, Any], arch: str, shared: bool) -> nn.ModuleList:
    """`size` networks initialised from seeds seed, seed+1, ... (or all from `seed` when `shared`) without
    touching the global RNG."""
    check_net(arch, net)
    if size < 1:
        raise MedalError(f"segmenter.members={size}: must be >= 1 (al.committee_size for the committee)")
    members = []
    for k in range(size):
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed if shared else seed + k)
            members.append(ARCHS[arch](**dict(net)))
    return nn.ModuleList(members)


class Committee(pl.LightningModule):
    """Training batches are (image, mask) of (B, K, 1, H, W), K = 1 (every member reads the same images) or K =
    `size` (member k reads column k); validation batches (B, 1, H, W). Images in [0, 1], masks in {0, 1}."""

    def __init__(
        self,
        *,
        net: Mapping[str, Any],
        size: int,
        seed: int,
        lr: float,
        weight_decay: float,
        augment: Mapping[str, Any],
        channels_last: bool,
        arch: str,
        shared_init: bool,
    ) -> None:
        """`augment` is `segment.augment` (its `enabled` switches it off); `shared_init` is `al.member_init`;
        the others as in conf/segment.yaml."""
        super().__init__()
        self.save_hyperparameters()
        self.members = build_members(size, seed, net, arch, shared_init)
        self.augmentation = build_augmentation(options_from(AugmentOptions, augment, "segment.augment"))
        self.channels_last = channels_last
        if channels_last:
            self.members.to(memory_format=torch.channels_last)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Logits (M, B, 1, H, W) and feature vectors (M, B, D) of every member."""
        outs = [self.run_member(member, x) for member in self.members]
        return torch.stack([o[0] for o in outs]), torch.stack([o[1] for o in outs])

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        image, mask = batch  # (B, K, 1, H, W)
        b, k = image.shape[:2]
        if k not in (1, len(self.members)):
            raise MedalError(f"committee batch with {k} columns for {len(self.members)} members: need 1 or one each")
        image, mask = image.flatten(0, 1), mask.flatten(0, 1)
        if self.augmentation is not None:  # every image its own draw; image and mask the same one
            image, mask = augment(self.augmentation, image, mask)
            mask = (mask > 0.5).float()
        image, mask = image.unflatten(0, (b, k)), mask.unflatten(0, (b, k))
        if k == 1:
            logits = self(image[:, 0])[0]
            losses = torch.stack([bce_dice_loss(member_logits, mask[:, 0]) for member_logits in logits])
        else:
            losses = torch.stack([bce_dice_loss(self.run_member(m, image[:, i])[0], mask[:, i])
                                  for i, m in enumerate(self.members)])
        self.log("train/loss", losses.mean(), prog_bar=True, batch_size=b)
        return losses.sum()

    def run_member(self, member: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """One member on its own batch (B, 1, H, W)."""
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return member(x)

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
