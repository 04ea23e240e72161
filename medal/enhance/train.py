"""Train the GAN enhancer once per (method config, pairs, seed) and keep its generator for reuse.

The training dir `<train_root>/<name>_<fingerprint>` is keyed by `medal.resume.fingerprint` of everything
that changes the result (`training_parts`), so a sweep over, say, `enhance.optim.lr` never mixes two
trainings. Inside it, a `medal.resume.Marker` (`.medal/generator.json`) says what a rerun does: a finished
training (generator exported) is reused, an interrupted one resumes from `last.ckpt`.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig
from safetensors.torch import load_file, save_file

from medal.atomic import atomic_path
from medal.callbacks.checkpoints import LAST, best_and_last, resume_from
from medal.config import to_plain
from medal.enhance.module import Enhancer, build_generator
from medal.enhance.pairs import PairDataModule, PairedAugment, PairSplit, excluded_ids
from medal.resume import Marker, fingerprint

log = logging.getLogger("medal.enhance")

GENERATOR_FILE = "generator.safetensors"
# the `enhance.*` keys that change what training produces (inference settings and paths do not)
TRAINING_KEYS = ("generator", "residual", "discriminator", "adversarial", "reconstruction", "optim", "epochs",
                 "batch_size", "augment", "image_size", "pairs")


def training_parts(method: DictConfig, trainer_cfg: DictConfig, seed: int) -> dict[str, Any]:
    """What a trained generator depends on: the `TRAINING_KEYS` of the method, the precision and the seed.

    `pairs.exclude` counts by the ids it leaves out (a per-fold enhancer's fold), not by its file name; null is
    left out, so generators trained before the key existed keep their folders.
    """
    parts = {k: to_plain(method[k]) for k in TRAINING_KEYS}
    exclude = parts["pairs"].pop("exclude")
    if exclude is not None:
        parts["pairs"]["exclude_ids"] = fingerprint(sorted(excluded_ids(exclude)))
    return {"method": parts, "precision": str(trainer_cfg.precision), "seed": int(seed)}


def training_dir(method: DictConfig, parts: dict[str, Any]) -> Path:
    """`<train_root>/<name>_<fingerprint of parts>`: one folder per distinct training setting."""
    return Path(method.train_root) / f"{method.name}_{fingerprint(parts)}"


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
    seed: int,
    loggers: list | None = None,
    sample_dir: str | Path | None = None,
) -> Path:
    """Fit the enhancer on `split` (unless its training dir holds a finished one); return the weights path.

    The exported generator is the checkpoint with the best `val/psnr`, not the last epoch's.
    """
    parts = training_parts(method, trainer_cfg, seed)
    train_dir = training_dir(method, parts)
    weights, ckpt_dir = train_dir / GENERATOR_FILE, train_dir / "checkpoints"
    marker = Marker.in_folder(train_dir, "generator", outputs=[ckpt_dir, weights], what="a trained generator")
    status = marker.begin(parts)
    if status == "done":
        if weights.is_file():
            log.info("reusing the trained generator %s", weights)
            return weights
        log.warning("%s: finished training but no %s; training again", train_dir, GENERATOR_FILE)
        status = marker.begin(parts, force=True)
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
    checkpoint, latest = best_and_last(ckpt_dir, "val/psnr", "max")
    trainer: pl.Trainer = instantiate(
        trainer_cfg, max_epochs=int(method.epochs), callbacks=[checkpoint, latest], logger=loggers or False
    )
    last = ckpt_dir / f"{LAST}.ckpt"
    trainer.fit(module, datamodule=datamodule, ckpt_path=resume_from(last, status == "resume"), weights_only=True)
    best = checkpoint.best_model_path or str(last)
    state = torch.load(best, map_location="cpu", weights_only=True)["state_dict"]  # tensors only: no unpickling
    generator = {k.removeprefix("generator."): v.contiguous() for k, v in state.items() if k.startswith("generator.")}
    with atomic_path(weights) as tmp:
        save_file(generator, str(tmp))
    marker.finish(parts, best_val_psnr=float(checkpoint.best_model_score or float("nan")))
    log.info("generator (best val/psnr %.2f dB) exported to %s", float(checkpoint.best_model_score or 0), weights)
    return weights
