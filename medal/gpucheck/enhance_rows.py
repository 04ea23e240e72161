"""Enhancement rows: the GAN (U-Net generator, the paper's conv+FC discriminator) at 512 px, one training step
(a D step, then a G step with D frozen: `medal enhance`'s `Enhancer` under Lightning) and the generator's
inference images/s (`generator_method`: bf16 autocast and channels_last as `enhance.inference` says).

The training batches are random tensors already decoded: the row measures the networks, not the PNG reading.
"""

from __future__ import annotations

import time

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig
from torch.utils.data import DataLoader, Dataset

from medal.enhance.run import generator_method
from medal.enhance.train import build_enhancer
from medal.gpucheck.context import Context
from medal.gpucheck.record import Row
from medal.gpucheck.timing import StepTimer, sync
from medal.hardware import use_bf16


class RandomPairs(Dataset):
    """`n` (input, gold) pairs in the enhancer's batch format, drawn from `distinct` random images (1, size, size)
    made once, so the loader only indexes and stacks: the row times the networks, not the random numbers."""

    def __init__(self, n: int, size: int, distinct: int = 16) -> None:
        self.n = n
        self.images = torch.rand(distinct + 1, 1, size, size, generator=torch.Generator().manual_seed(0))

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        k = i % (len(self.images) - 1)
        return {"input": self.images[k], "gold": self.images[k + 1]}


def _config(ctx: Context, run: str) -> DictConfig:
    return ctx.compose("enhance", run, ["enhance=gan", f"enhance.image_size={ctx.sizes.gan_size}",
                                        *ctx.sizes.gan_overrides])


def gan_training(ctx: Context, deadline: float) -> Row:
    """Images/s and seconds per step of the GAN's training (D step + G step) at `enhance.batch_size`."""
    cfg = _config(ctx, "gan_training")
    method = cfg.enhance
    timer = StepTimer(deadline, lambda batch: len(batch["input"]), min_steps=ctx.sizes.warmup_steps + 2)
    trainer = instantiate(cfg.trainer, max_epochs=1, limit_val_batches=0, num_sanity_val_steps=0, logger=False,
                          enable_checkpointing=False, enable_model_summary=False, callbacks=[timer])
    batch = int(method.batch_size)
    loader = DataLoader(RandomPairs(batch * 1000, ctx.sizes.gan_size), batch_size=batch,
                        pin_memory=ctx.device.type == "cuda")
    trainer.fit(build_enhancer(method), train_dataloaders=loader)
    warmup = ctx.sizes.warmup_steps
    return Row("", timer.rate(warmup), "img/s", note=f"batch {batch}, {timer.step_seconds(warmup):.3f} s per step",
               detail={"median_step_s": timer.step_seconds(warmup), "batch": batch, "steps": timer.steps,
                       "image_size": ctx.sizes.gan_size, "precision": str(cfg.trainer.precision)})


def gan_inference(ctx: Context, deadline: float) -> Row:
    """Images/s of the generator enhancing RoIs at `enhance.inference.batch_size` (device-resident batches)."""
    cfg = _config(ctx, "gan_inference")
    method = cfg.enhance
    generator = build_enhancer(method).generator.to(ctx.device)
    bf16 = use_bf16(method.inference.bf16, ctx.device.type)
    enhance = generator_method(generator, bf16, bool(method.inference.channels_last))
    batch = int(method.inference.batch_size)
    x = torch.rand(batch, 1, ctx.sizes.gan_size, ctx.sizes.gan_size, device=ctx.device)
    with torch.inference_mode():
        enhance(x)
        sync(ctx.device)
        done, started = 0, time.perf_counter()
        while done < 2 * batch or time.perf_counter() < deadline:
            enhance(x)
            sync(ctx.device)
            done += batch
            if done >= 200 * batch:
                break
    return Row("", done / (time.perf_counter() - started), "img/s", note=f"batch {batch}, bf16 {bf16}",
               detail={"batch": batch, "bf16": bf16, "channels_last": bool(method.inference.channels_last),
                       "image_size": ctx.sizes.gan_size})
