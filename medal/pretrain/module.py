"""The two pretraining LightningModules: SimCLR on unlabelled images, and a supervised source task.

Both own an `Encoder` (the regressor's backbone, normalisation and pooling) plus a head that is thrown away
after pretraining; only `encoder.backbone` is exported. Every argument comes from the `pretrain` config and
is saved as a plain hyperparameter. Logged: `train/loss` per epoch (the loss curve), and for the source task
`train/age_loss`, `train/sex_loss`, `source/val_mae` (months), `source/val_sex_accuracy`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from hydra.utils import instantiate
from torch import nn
from torchmetrics import MeanAbsoluteError
from torchmetrics.classification import BinaryAccuracy

from medal.boneage.targets import TargetScaler
from medal.config import options_from, to_plain
from medal.errors import MedalError
from medal.pretrain.encoder import build_encoder
from medal.pretrain.views import ViewOptions, Views


class PretrainModule(pl.LightningModule):
    """Encoder + a method's head; the optimiser (`_partial_` config) and optional per-epoch scheduler."""

    def __init__(self, model_cfg: Mapping[str, Any], optimizer: Mapping[str, Any],
                 scheduler: Mapping[str, Any] | None) -> None:
        super().__init__()
        if not optimizer:
            raise MedalError("optimizer: null; give a partial optimiser config as conf/pretrain.yaml does")
        self.encoder = build_encoder(to_plain(model_cfg))
        self.optimizer_cfg, self.scheduler_cfg = to_plain(optimizer), to_plain(scheduler)

    def log_loss(self, name: str, value: torch.Tensor, size: int) -> None:
        self.log(name, value, on_step=False, on_epoch=True, prog_bar=name == "train/loss", batch_size=size,
                 sync_dist=True)

    def configure_optimizers(self) -> Any:
        optimizer = instantiate(self.optimizer_cfg)(self.parameters())
        if not self.scheduler_cfg:
            return optimizer
        return {"optimizer": optimizer,
                "lr_scheduler": {"scheduler": instantiate(self.scheduler_cfg)(optimizer), "interval": "epoch"}}


class SimCLRModule(PretrainModule):
    """SimCLR: two random views of each image, one shared encoder, a projection head and a contrastive loss
    (lightly's `SimCLRProjectionHead` and `NTXentLoss` by default; any head and two-view loss `loss(z0, z1)`
    from the config fit, e.g. lightly's `VICRegLoss` or `BarlowTwinsLoss`).

    A batch is (B, 1, S, S) images without labels; both views go through the encoder as one 2B batch.
    """

    def __init__(self, model_cfg: Mapping[str, Any], *, head: Mapping[str, Any], loss: Mapping[str, Any],
                 views: Mapping[str, Any], image_size: int, optimizer: Mapping[str, Any],
                 scheduler: Mapping[str, Any] | None) -> None:
        super().__init__(model_cfg, optimizer, scheduler)
        self.save_hyperparameters({"model_cfg": to_plain(model_cfg), "head": to_plain(head), "loss": to_plain(loss),
                                   "views": to_plain(views), "image_size": int(image_size),
                                   "optimizer": to_plain(optimizer), "scheduler": to_plain(scheduler)})
        self.head = instantiate(to_plain(head), input_dim=self.encoder.num_features)
        self.criterion = instantiate(to_plain(loss))
        self.views = Views(options_from(ViewOptions, views, "pretrain.views"), int(image_size))

    def training_step(self, images: torch.Tensor, batch_idx: int) -> torch.Tensor:
        pair = torch.cat([self.views(images), self.views(images)])
        z0, z1 = self.head(self.encoder(pair)).float().chunk(2)
        loss = self.criterion(z0, z1)
        self.log_loss("train/loss", loss, len(images))
        return loss


class SourceTaskModule(PretrainModule):
    """Supervised source task: bone age (z-scored on the source's training set, L1) and sex (logit, BCE)
    from one linear layer on the pooled features; `loss = age_weight * L1 + sex_weight * BCE`.

    Batches are the bone age DataModule's dicts: `image` (B, 1, S, S), `boneage` months (B,), `male` 0/1 (B,).
    """

    def __init__(self, model_cfg: Mapping[str, Any], *, age_shift: float, age_scale: float, age_weight: float,
                 sex_weight: float, optimizer: Mapping[str, Any], scheduler: Mapping[str, Any] | None) -> None:
        super().__init__(model_cfg, optimizer, scheduler)
        self.save_hyperparameters({"model_cfg": to_plain(model_cfg), "age_shift": float(age_shift),
                                   "age_scale": float(age_scale), "age_weight": float(age_weight),
                                   "sex_weight": float(sex_weight), "optimizer": to_plain(optimizer),
                                   "scheduler": to_plain(scheduler)})
        self.head = nn.Linear(self.encoder.num_features, 2)  # (scaled age, sex logit)
        self.scaler = TargetScaler(float(age_shift), float(age_scale))
        self.age_weight, self.sex_weight = float(age_weight), float(sex_weight)
        self.val_mae, self.val_sex = MeanAbsoluteError(), BinaryAccuracy()

    def _outputs(self, batch: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
        age, sex_logit = self.head(self.encoder(batch["image"])).float().unbind(dim=1)
        return age, sex_logit

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        age, sex_logit = self._outputs(batch)
        age_loss = F.l1_loss(age, self.scaler.scale_targets(batch["boneage"].float()))
        sex_loss = F.binary_cross_entropy_with_logits(sex_logit, batch["male"].float())
        loss = self.age_weight * age_loss + self.sex_weight * sex_loss
        size = len(batch["boneage"])
        self.log_loss("train/loss", loss, size)
        self.log_loss("train/age_loss", age_loss, size)
        self.log_loss("train/sex_loss", sex_loss, size)
        return loss

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        age, sex_logit = self._outputs(batch)
        self.val_mae.update(self.scaler.to_months(age), batch["boneage"].float())
        self.val_sex.update(torch.sigmoid(sex_logit), batch["male"].long())

    def on_validation_epoch_end(self) -> None:
        self.log_dict({"source/val_mae": self.val_mae.compute(), "source/val_sex_accuracy": self.val_sex.compute()})
        self.val_mae.reset()
        self.val_sex.reset()
