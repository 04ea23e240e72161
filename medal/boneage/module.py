"""LightningModule of the bone age regressor: scaled-target loss, month-valued metrics, config optimisers.

Everything it needs to be rebuilt is a plain hyperparameter (model config, target scaling, loss, optimiser
and scheduler configs), so `BoneAgeModule.load_from_checkpoint(path)` restores a trained model for testing
and CAM. Logged names: `train/loss` (per epoch; the loss-curve reader relies on it), `train/mae`,
`val/loss`, `val/mae`, `val/rmse`, `val/bias`, `val/within12`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from hydra.utils import instantiate
from torchmetrics import MeanAbsoluteError

from medal.boneage.metrics import boneage_metrics
from medal.boneage.targets import TargetScaler
from medal.config import to_plain
from medal.errors import MedalError
from medal.models.regressor import build_regressor

LOSSES = {"l1": F.l1_loss, "mse": F.mse_loss, "huber": F.smooth_l1_loss}


class BoneAgeModule(pl.LightningModule):
    """Trains a `BoneAgeRegressor` on scaled targets; predicts and reports months.

    Every argument comes from the `boneage` config (`model`, the fitted `target` scaling, `loss`, `optimizer`,
    `scheduler`, `channels_last`); none has a default, so the YAML stays the one place they are set.
    `optimizer` is a partial optimiser config (`_target_`, `_partial_: true`); `scheduler` may be null.
    """

    def __init__(self, model_cfg: Mapping[str, Any], *, target_shift: float, target_scale: float, loss: str,
                 optimizer: Mapping[str, Any], scheduler: Mapping[str, Any] | None, channels_last: bool) -> None:
        super().__init__()
        model_cfg, optimizer, scheduler = to_plain(model_cfg), to_plain(optimizer), to_plain(scheduler)
        if loss not in LOSSES:
            raise MedalError(f"loss={loss!r}: choose one of {', '.join(LOSSES)}")
        if not optimizer:
            raise MedalError("optimizer: null; give a partial optimiser config (e.g. _target_: torch.optim.RMSprop, "
                             "_partial_: true, lr: 1.0e-3) as conf/boneage.yaml does")
        self.save_hyperparameters({"model_cfg": model_cfg, "target_shift": float(target_shift),
                                   "target_scale": float(target_scale), "loss": loss,
                                   "optimizer": optimizer, "scheduler": scheduler, "channels_last": channels_last})
        self.model = build_regressor(model_cfg)
        self.scaler = TargetScaler(float(target_shift), float(target_scale))
        self.loss_fn = LOSSES[loss]
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        self.model.to(memory_format=self.memory_format)
        self.train_mae = MeanAbsoluteError()
        self.val_metrics = boneage_metrics("val/")

    def forward(self, image: torch.Tensor, male: torch.Tensor | None = None) -> torch.Tensor:
        """Bone age in months."""
        return self.months_of_features(self.features(image), male)

    def features(self, image: torch.Tensor) -> torch.Tensor:
        """The backbone's last feature maps (B, C, h, w) of images (B, 1, S, S): `forward`'s first half, which
        `medal predict` runs once per image for both sexes, the mirror image's mean and the CAM."""
        return self.model.features(image.contiguous(memory_format=self.memory_format))

    def months_of_features(self, features: torch.Tensor, male: torch.Tensor | None = None) -> torch.Tensor:
        """Bone age in months (B,) from `features`' maps: `forward`'s second half (the head and the scaling)."""
        return self.scaler.to_months(self.model.head(features, male).float())

    def _step(self, batch: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
        image = batch["image"].contiguous(memory_format=self.memory_format)
        scaled = self.model(image, batch["male"]).float()
        loss = self.loss_fn(scaled, self.scaler.scale_targets(batch["boneage"].float()))
        return loss, self.scaler.to_months(scaled.detach())

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        loss, months = self._step(batch)
        size = len(batch["boneage"])
        # synced across ranks: PTL decides its stage from this value, and every rank must decide alike
        self.log("train/loss", loss, on_step=False, on_epoch=True, prog_bar=True, batch_size=size, sync_dist=True)
        self.train_mae(months, batch["boneage"].float())
        self.log("train/mae", self.train_mae, on_step=False, on_epoch=True, batch_size=size)
        return loss

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        loss, months = self._step(batch)
        size = len(batch["boneage"])
        self.log("val/loss", loss, on_step=False, on_epoch=True, batch_size=size, sync_dist=True)
        self.val_metrics.update(months, batch["boneage"].float())

    def on_validation_epoch_end(self) -> None:
        self.log_dict(self.val_metrics.compute())
        self.val_metrics.reset()

    def configure_optimizers(self) -> Any:
        params = [p for p in self.parameters() if p.requires_grad]
        if not params:
            raise MedalError("no trainable parameters: check finetune= and the model's block map")
        optimizer = instantiate(self.hparams.optimizer)(params)
        if not self.hparams.scheduler:
            return optimizer
        scheduler = instantiate(self.hparams.scheduler)(optimizer)
        if not isinstance(scheduler, Mapping):
            scheduler = {"scheduler": scheduler, "interval": "epoch"}
        return {"optimizer": optimizer, "lr_scheduler": dict(scheduler)}
