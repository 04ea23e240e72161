"""`medal enhance`'s experiment: train the GAN (enhance=gan|gan_l1) or take a baseline (clahe|none), score it
against gold standards on held-out pairs (`val/*`, `test/*` PSNR and SSIM), and enhance every RoI.

Every method scores the same held-out pairs (`pairs.split_ids` depends only on the ids, the seed and the
data set's test holdout, which no pair includes), so the
runs of `medal enhance -m enhance=gan,gan_l1,clahe,none` compare like with like.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
from omegaconf import DictConfig

from medal.config import options_from
from medal.data.cache import file_stamp
from medal.data.rsna import read_index
from medal.data.split import HoldoutOptions, held_out_ids
from medal.enhance.clahe import clahe_params
from medal.enhance.pairs import PairSplit, excluded_ids, matching_ids, split_ids
from medal.enhance.run import (
    Method,
    clahe_method,
    enhance_folder,
    generator_method,
    identity,
    score_pairs,
    summarise,
)
from medal.enhance.train import load_generator, train_gan
from medal.errors import MedalError
from medal.hardware import inference_device, use_bf16
from medal.loggers import build_loggers

log = logging.getLogger("medal.enhance")


def held_out_pairs(pairs: DictConfig, data: DictConfig) -> PairSplit | None:
    """The seeded train/val/test split of the (input, gold) pairs, without the data set's bone age test holdout
    (`data.holdout`) and the ids of `pairs.exclude`, or None when there are no gold standards."""
    if not Path(pairs.gold_dir).is_dir():
        log.warning("%s not found: enhancing without scoring against gold standards", pairs.gold_dir)
        return None
    holdout = held_out_ids(read_index(data.root, strict=False), data.work_dir,
                           options_from(HoldoutOptions, data.holdout, "data.holdout"))
    ids, left_out = matching_ids(pairs.input_dir, pairs.gold_dir), excluded_ids(pairs.exclude)
    if pairs.exclude is not None:
        log.info("pairs: enhance.pairs.exclude=%s leaves out %d of its %d ids that have a gold standard",
                 pairs.exclude, len(left_out & set(ids)), len(left_out))
    split = split_ids(ids, float(pairs.val_fraction), float(pairs.test_fraction), int(pairs.seed),
                      exclude=holdout | left_out)
    log.info("pairs: %d train, %d val, %d test", len(split.train), len(split.val), len(split.test))
    return split


def build_method(cfg: DictConfig, split: PairSplit | None, device: str) -> tuple[Method, dict[str, Any]]:
    """The method of `cfg.enhance` (training the GAN first when it has to) and the settings its outputs
    depend on (what the enhanced folder's resume record compares)."""
    enh = cfg.enhance
    if enh.method == "gan":
        if split is None:
            raise MedalError(f"enhance.pairs.gold_dir={enh.pairs.gold_dir}: not found; the GAN needs gold-standard "
                             "pairs: make them with `medal annotate annotate.mode=gold annotate.gold.count=N` (same "
                             "data= arguments), or use enhance=clahe or enhance=none")
        weights = train_gan(enh, split, cfg.trainer, int(cfg.seed), build_loggers(cfg),
                            Path(cfg.paths.output_dir) / "samples")
        bf16 = use_bf16(enh.inference.bf16, device)
        generator = load_generator(enh, weights).to(device)
        method = generator_method(generator, bf16, bool(enh.inference.channels_last))
        # a retrained G rewrites all; channels_last is recorded because it changes the numbers (a bundle reads it)
        return method, {"method": "gan", "generator": file_stamp(weights), "bf16": bf16,
                        "channels_last": bool(enh.inference.channels_last)}
    if enh.method == "clahe":
        clip_limit, grid = clahe_params(enh.clip_limit, enh.grid)
        keep_background = bool(enh.keep_background)
        return clahe_method(clip_limit, grid, keep_background), {
            "method": "clahe", "clip_limit": clip_limit, "grid": list(grid), "keep_background": keep_background}
    if enh.method == "none":
        return identity, {"method": "none"}
    raise MedalError(f"enhance.method={enh.method!r}: unknown method; use one of gan, clahe, none")


def run_enhance(cfg: DictConfig) -> dict[str, float]:
    """Train (gan) or set up (clahe, none) the enhancer, score it on held-out pairs, enhance every RoI."""
    pl.seed_everything(int(cfg.seed), workers=True)
    enh = cfg.enhance
    split = held_out_pairs(enh.pairs, cfg.data)
    device = inference_device(str(cfg.trainer.accelerator))  # Lightning's fit leaves nothing on the GPU
    method, settings = build_method(cfg, split, device)

    metrics: dict[str, float] = {}
    if split is not None:
        for name, ids in (("val", split.val), ("test", split.test)):
            scores = score_pairs(method, enh.pairs.input_dir, enh.pairs.gold_dir, ids, int(enh.image_size),
                                 batch_size=int(enh.inference.batch_size))
            metrics.update(summarise(name, scores))
        log.info("%s: test PSNR %.2f dB, SSIM %.3f", enh.name, metrics["test/psnr"], metrics["test/ssim"])
    if enh.method != "none":  # `none` reads the RoIs in place (images_dir = the roi folder)
        metrics.update(enhance_folder(
            method, enh.input_dir, enh.images_dir, int(enh.image_size), settings,
            batch_size=int(enh.inference.batch_size), num_workers=int(enh.inference.num_workers),
        ))
    return metrics
