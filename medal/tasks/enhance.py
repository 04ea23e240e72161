"""`medal enhance`: train the GAN (enhance=gan|gan_l1) or take a baseline (clahe|none), enhance every RoI,
and score the method against gold standards on held-out pairs (`val/*`, `test/*` PSNR and SSIM)."""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path

import pytorch_lightning as pl
from omegaconf import DictConfig

from medal.enhance.clahe import clahe_params
from medal.enhance.pairs import matching_ids, split_ids
from medal.enhance.run import build_method, enhance_folder, score_pairs, summarise
from medal.enhance.train import load_generator, train_gan, training_dir
from medal.errors import MedalError
from medal.hardware import inference_device, use_bf16
from medal.loggers import build_loggers
from medal.tasks.runner import hydra_task

log = logging.getLogger("medal.enhance")


def run_enhance(cfg: DictConfig) -> dict[str, float]:
    """Train (gan) or set up (clahe, none) the enhancer, score it on held-out pairs, enhance every RoI."""
    pl.seed_everything(int(cfg.seed), workers=True)
    enh = cfg.enhance
    pairs = enh.pairs
    has_gold = Path(pairs.gold_dir).is_dir()
    split = None
    if has_gold:
        ids = matching_ids(pairs.input_dir, pairs.gold_dir)
        split = split_ids(ids, float(pairs.val_fraction), float(pairs.test_fraction), int(pairs.seed))
        log.info("pairs: %d train, %d val, %d test", len(split.train), len(split.val), len(split.test))
    else:
        log.warning("%s not found: enhancing without scoring against gold standards", pairs.gold_dir)

    device = inference_device(str(cfg.trainer.accelerator))  # Lightning's fit leaves nothing on the GPU
    generator, manifest = None, {"method": enh.method, "image_size": int(enh.image_size)}
    if enh.method == "gan":
        if split is None:
            raise MedalError(
                f"enhance.pairs.gold_dir={pairs.gold_dir}: not found; the GAN needs gold-standard pairs"
            )
        train_dir = training_dir(enh, cfg.trainer, int(cfg.seed))
        weights = train_gan(
            enh, split, cfg.trainer, train_dir, build_loggers(cfg), Path(cfg.paths.output_dir) / "samples"
        )
        generator = load_generator(enh, weights).to(device)
        manifest["generator"] = hashlib.sha1(weights.read_bytes()).hexdigest()  # a retrained G rewrites all
    clip_limit, grid = clahe_params(enh.get("clip_limit", 2.0), enh.get("grid", 8))
    keep_background = bool(enh.get("keep_background", True))
    if enh.method == "clahe":
        manifest.update(clip_limit=clip_limit, grid=list(grid), keep_background=keep_background)
    method = build_method(
        enh.method, generator, clip_limit=clip_limit, grid=grid, keep_background=keep_background,
        bf16=use_bf16(enh.inference.bf16, device), channels_last=bool(enh.inference.channels_last),
    )

    metrics: dict[str, float] = {}
    if split is not None:
        for name, ids in (("val", split.val), ("test", split.test)):
            scores = score_pairs(method, pairs.input_dir, pairs.gold_dir, ids, int(enh.image_size))
            metrics.update(summarise(name, scores))
        log.info("%s: test PSNR %.2f dB, SSIM %.3f", enh.name, metrics["test/psnr"], metrics["test/ssim"])
    if enh.method != "none":  # `none` reads the RoIs in place (images_dir = the roi folder)
        metrics.update(enhance_folder(
            method, enh.input_dir, enh.images_dir, int(enh.image_size), manifest,
            batch_size=int(enh.inference.batch_size), num_workers=int(enh.inference.num_workers),
        ))
    return metrics


main = hydra_task("enhance")(run_enhance)
