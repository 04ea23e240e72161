"""Train the GAN enhancer once per (method config, pairs, seed) and keep its generator for reuse.

The training dir is keyed by a fingerprint of everything that changes the result, so a re-run or a
later stage of a multirun reuses a finished generator, an interrupted fit resumes from `last.ckpt`,
and a sweep over, say, `enhance.optim.lr` never mixes two trainings.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from safetensors.torch import load_file, save_file

from medal.atomic import atomic_path
from medal.callbacks.checkpoints import best_and_last
from medal.enhance.module import Enhancer, build_generator
from medal.enhance.pairs import PairDataModule, PairedAugment, PairSplit

log = logging.getLogger("medal.enhance")

GENERATOR_FILE = "generator.safetensors"
# the `enhance.*` keys that change what training produces (inference settings and paths do not)
TRAINING_KEYS = ("generator", "residual", "discriminator", "adversarial", "reconstruction", "optim", "epochs",
                 "batch_size", "augment", "image_size", "pairs")


def fingerprint(*parts: Any) -> str:
    """Short stable hash of JSON-able parts (configs are resolved to plain containers first)."""
    plain = [OmegaConf.to_container(p, resolve=True) if isinstance(p, DictConfig) else p for p in parts]
    return hashlib.sha1(json.dumps(plain, sort_keys=True, default=str).encode()).hexdigest()[:10]


def training_dir(method: DictConfig, trainer_cfg: DictConfig, seed: int) -> Path:
    """`<train_root>/<name>_<fingerprint>`: one folder per distinct training setting."""
    key = fingerprint({k: method[k] for k in TRAINING_KEYS}, trainer_cfg.get("precision"), seed)
    return Path(method.train_root) / f"{method.name}_{key}"


def build_enhancer(method: DictConfig, sample_dir: str | None = None) -> Enhancer:
    """The LightningModule from an `enhance` group config (`gan`, `gan_l1`)."""
    return Enhancer(
        generator=dict(method.generator),
        discriminator=dict(method.discriminator),
        residual=bool(method.residual),
        adversarial=method.adversarial,
        reconstruction=method.reconstruction.kind,
        reconstruction_weight=float(method.reconstruction.weight),
        lr=float(method.optim.lr),
        betas=tuple(float(b) for b in method.optim.betas),
        sample_every_n_epochs=int(method.sample_every_n_epochs),
        sample_dir=sample_dir,
    )


def load_generator(method: DictConfig, path: str | Path) -> torch.nn.Module:
    """A generator with the weights exported by `train_gan`, in eval mode."""
    generator = build_generator(dict(method.generator), bool(method.residual))
    generator.load_state_dict(load_file(str(path)))
    return generator.eval()


def train_gan(
    method: DictConfig,
    split: PairSplit,
    trainer_cfg: DictConfig,
    train_dir: str | Path,
    loggers: list | None = None,
    sample_dir: str | Path | None = None,
) -> Path:
    """Fit the enhancer on `split` (unless `train_dir` already holds its generator); return the weights path.

    The exported generator is the checkpoint with the best `val/psnr`, not the last epoch's.
    """
    train_dir = Path(train_dir)
    weights = train_dir / GENERATOR_FILE
    if weights.is_file():
        log.info("reusing the trained generator %s", weights)
        return weights
    pairs = method.pairs
    datamodule = PairDataModule(
        pairs.input_dir,
        pairs.gold_dir,
        split,
        image_size=int(method.image_size),
        batch_size=int(method.batch_size),
        num_workers=int(method.num_workers),
        augment=PairedAugment(float(method.augment.hflip), float(method.augment.degrees)),
    )
    module = build_enhancer(method, str(sample_dir) if sample_dir else None)
    checkpoint, latest = best_and_last(train_dir / "checkpoints", "val/psnr", "max")
    trainer: pl.Trainer = instantiate(
        trainer_cfg, max_epochs=int(method.epochs), callbacks=[checkpoint, latest], logger=loggers or False
    )
    last = train_dir / "checkpoints" / "last.ckpt"
    trainer.fit(module, datamodule=datamodule, ckpt_path=str(last) if last.is_file() else None)
    best = checkpoint.best_model_path or str(last)
    state = torch.load(best, map_location="cpu", weights_only=False)["state_dict"]
    generator = {k.removeprefix("generator."): v.contiguous() for k, v in state.items() if k.startswith("generator.")}
    with atomic_path(weights) as tmp:
        save_file(generator, str(tmp))
    log.info("generator (best val/psnr %.2f dB) exported to %s", float(checkpoint.best_model_score or 0), weights)
    return weights
