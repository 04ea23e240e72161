"""Deterministic mode: one training step of every network medal trains, under `torch.use_deterministic_algorithms`
(what `trainer.deterministic=true` asks for), to name any operation that has no deterministic implementation on
this device. On a GPU several common ones raise there (adaptive pooling's backward, bilinear interpolation's
backward, scatter-adds); on a CPU almost none do, so this row finds them only where it runs on a GPU.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable

import numpy as np
import torch

from medal.boneage.experiment import build_module
from medal.enhance.train import build_enhancer
from medal.gpucheck.boneage_rows import _overrides, _synthetic_batch
from medal.gpucheck.context import Context
from medal.gpucheck.enhance_rows import _config as gan_config
from medal.gpucheck.record import Row
from medal.gpucheck.segment_rows import _setup as segment_setup
from medal.segment.committee import Committee


def _regressor_step(ctx: Context) -> None:
    backbone = ctx.sizes.backbones[0]
    cfg = ctx.compose("boneage", f"deterministic_{backbone}", _overrides(ctx, backbone))
    module = build_module(cfg, np.array([1.0, 228.0])).to(ctx.device).train()
    with ctx.autocast():
        loss, _ = module._step(_synthetic_batch(ctx, cfg, 2))
    loss.backward()


def _committee_step(ctx: Context) -> None:
    _, setup = segment_setup(ctx, "deterministic_committee")
    seg = setup.segment
    committee = Committee(net=setup.segmenter.net, size=setup.segmenter.members, seed=0, lr=seg.lr,
                          weight_decay=seg.weight_decay, augment=seg.augment, channels_last=seg.channels_last,
                          arch=setup.segmenter.arch).to(ctx.device).train()
    image = torch.rand(2, 1, seg.image_size, seg.image_size, device=ctx.device)
    with ctx.autocast(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # self.log without a trainer
        loss = committee.training_step((image, (image > 0.5).float()), 0)
    loss.backward()


def _gan_step(ctx: Context) -> None:
    enhancer = build_enhancer(gan_config(ctx, "deterministic_gan").enhance).to(ctx.device).train()
    x, y = (torch.rand(2, 1, ctx.sizes.gan_size, ctx.sizes.gan_size, device=ctx.device) for _ in range(2))
    with ctx.autocast():
        logits = enhancer.generator(x)
        loss = enhancer.gan_loss(enhancer.discriminator(x, torch.sigmoid(logits)), True) + enhancer.recon_loss(logits, y)
    loss.backward()


def deterministic_steps(ctx: Context, deadline: float) -> Row:
    """How many of the networks train under deterministic algorithms; failed, naming the operations, if any
    cannot."""
    steps: dict[str, Callable[[Context], None]] = {f"{ctx.sizes.backbones[0]} regressor": _regressor_step,
                                                   "FC-DenseNet committee": _committee_step,
                                                   "GAN (G and D)": _gan_step}
    refused: dict[str, str] = {}
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # what Lightning sets for deterministic=true
    torch.use_deterministic_algorithms(True)
    try:
        for name, step in steps.items():
            try:
                step(ctx)
            except RuntimeError as err:
                if "deterministic" not in str(err):
                    raise
                refused[name] = str(err).strip().splitlines()[0][:160]
    finally:
        torch.use_deterministic_algorithms(False)
    reason = "; ".join(f"{name}: {why}" for name, why in refused.items())
    return Row("", float(len(steps) - len(refused)), f"of {len(steps)} networks", goal=float(len(steps)),
               status="failed" if refused else "ok", reason=reason,
               note=", ".join(steps) + " (one training step each)", detail={"refused": refused})
