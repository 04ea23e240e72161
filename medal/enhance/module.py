"""The enhancer's LightningModule: pix2pix-style conditional GAN with manual optimisation.

Per batch: one D step on detached fakes (G gets no gradient), then one G step with D frozen
(`toggled_optimizer` sets requires_grad False on D, so D accumulates no gradient either).
A non-finite loss raises `MedalError` *before* its optimiser step, so the weights and the last
checkpoint (`last.ckpt`, written every epoch) stay the last good ones.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from torchmetrics.image import PeakSignalNoiseRatio, StructuralSimilarityIndexMeasure
from torchvision.utils import make_grid

from medal.data.images import write_png
from medal.enhance.losses import GANLoss, reconstruction_loss
from medal.errors import MedalError
from medal.loggers import log_figure
from medal.models.discriminators import build_discriminator
from medal.models.unet import InputResidual, UNet

log = logging.getLogger("medal.enhance")
ARTIFACTS = {"samples": "samples/epoch_*.png"}  # outputs by name, in the run folder


def build_generator(generator: dict[str, Any] | None = None, residual: bool = True) -> torch.nn.Module:
    """G: a 1 -> 1 channel U-Net emitting logits; `residual` wraps it as a correction of the input."""
    net = UNet(in_channels=1, out_channels=1, **(generator or {}))
    return InputResidual(net) if residual else net


class Enhancer(pl.LightningModule):
    """G: U-Net x -> logits of y; D(x, y) -> logits; losses per `enhance.*` config."""

    def __init__(
        self,
        generator: dict[str, Any] | None = None,
        discriminator: dict[str, Any] | None = None,
        residual: bool = True,
        adversarial: str = "bce",
        reconstruction: str = "paper",
        reconstruction_weight: float = 100.0,
        lr: float = 2e-4,
        betas: tuple[float, float] = (0.5, 0.999),
        sample_every_n_epochs: int = 5,
        sample_dir: str | None = None,
        n_samples: int = 4,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.automatic_optimization = False
        self.generator = build_generator(generator, residual)
        self.discriminator = build_discriminator(in_channels=2, **(discriminator or {"kind": "paper"}))
        self.gan_loss = GANLoss(adversarial)
        self.recon_loss = reconstruction_loss(reconstruction)
        self.val_psnr = PeakSignalNoiseRatio(data_range=1.0)
        self.val_ssim = StructuralSimilarityIndexMeasure(data_range=1.0)
        self._samples: torch.Tensor | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Enhanced intensities in [0, 1]."""
        return torch.sigmoid(self.generator(x))

    def configure_optimizers(self):
        betas = tuple(float(b) for b in self.hparams.betas)
        lr = float(self.hparams.lr)
        opt_g = torch.optim.Adam(self.generator.parameters(), lr=lr, betas=betas)
        opt_d = torch.optim.Adam(self.discriminator.parameters(), lr=lr, betas=betas)
        return opt_g, opt_d

    def _check_finite(self, name: str, loss: torch.Tensor) -> None:
        if not torch.isfinite(loss):
            ckpt = getattr(self.trainer.checkpoint_callback, "last_model_path", "") or "none saved yet"
            raise MedalError(
                f"enhancer: {name} loss is {loss.item()} at epoch {self.current_epoch}, step {self.global_step}; "
                f"run stopped, last good checkpoint: {ckpt}; lower enhance.optim.lr or use trainer.precision=32-true"
            )

    def discriminator_step(self, x: torch.Tensor, y: torch.Tensor, fake: torch.Tensor) -> torch.Tensor:
        """Real pairs -> 1, detached fake pairs -> 0; updates D only."""
        _, opt_d = self.optimizers()
        with self.toggled_optimizer(opt_d):
            real_logits = self.discriminator(x, y)
            fake_logits = self.discriminator(x, fake.detach())
            loss = 0.5 * (self.gan_loss(real_logits, True) + self.gan_loss(fake_logits, False))
            self._check_finite("discriminator", loss)
            opt_d.zero_grad(set_to_none=True)
            self.manual_backward(loss)
            opt_d.step()
        return loss.detach()

    def generator_step(
        self, x: torch.Tensor, y: torch.Tensor, fake_logits: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Fool the frozen D and reconstruct the gold: adv + weight * recon; updates G only."""
        opt_g, _ = self.optimizers()
        with self.toggled_optimizer(opt_g):
            adv = self.gan_loss(self.discriminator(x, torch.sigmoid(fake_logits)), True)
            recon = self.recon_loss(fake_logits, y)
            loss = adv + float(self.hparams.reconstruction_weight) * recon
            self._check_finite("generator", loss)
            opt_g.zero_grad(set_to_none=True)
            self.manual_backward(loss)
            opt_g.step()
        return adv.detach(), recon.detach()

    def training_step(self, batch: dict, batch_idx: int) -> None:
        x, y = batch["input"], batch["gold"]
        fake_logits = self.generator(x)
        loss_d = self.discriminator_step(x, y, torch.sigmoid(fake_logits))
        adv, recon = self.generator_step(x, y, fake_logits)
        self.log_dict(
            {"train/loss_d": loss_d, "train/loss_g_adv": adv, "train/loss_recon": recon},
            prog_bar=True, on_step=True, on_epoch=True, batch_size=x.shape[0],
        )

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        x, y = batch["input"], batch["gold"]
        logits = self.generator(x)
        fake = torch.sigmoid(logits.float())
        self.val_psnr(fake, y.float())
        self.val_ssim(fake, y.float())
        self.log("val/loss_recon", self.recon_loss(logits, y), batch_size=x.shape[0])
        self.log("val/psnr", self.val_psnr, prog_bar=True, batch_size=x.shape[0])
        self.log("val/ssim", self.val_ssim, batch_size=x.shape[0])
        if batch_idx == 0:
            k = self.hparams.n_samples
            self._samples = torch.cat([x[:k], fake[:k], y[:k]], dim=3).float().cpu()

    def on_validation_epoch_end(self) -> None:
        every = self.hparams.sample_every_n_epochs
        last = self.trainer.max_epochs is not None and self.current_epoch == self.trainer.max_epochs - 1
        if self._samples is None or not self.hparams.sample_dir or not every:
            return
        if (self.current_epoch + 1) % every and not last:
            return
        path = Path(self.hparams.sample_dir) / f"epoch_{self.current_epoch:04d}.png"
        save_sample_grid(self._samples, path)
        log_figure(self.loggers, "enhance/samples", path, step=self.global_step)
        self._samples = None


def save_sample_grid(rows: torch.Tensor, path: str | Path) -> Path:
    """One row per pair, (input | generated | gold) side by side, as an 8-bit PNG."""
    grid = make_grid(rows.clamp(0, 1), nrow=1, padding=2, pad_value=1.0)
    return write_png(path, grid[0].numpy())
