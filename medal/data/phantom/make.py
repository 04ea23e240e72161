"""`medal phantoms`' body: generate (or finish) a phantom data set, log its summary, write its contact sheet."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from medal.data.phantom.dataset import generate_dataset
from medal.data.phantom.sheet import write_contact_sheet
from medal.errors import MedalError

log = logging.getLogger("medal.phantoms")


def run_phantoms(cfg: DictConfig) -> dict[str, float]:
    """Generate `cfg.n` phantoms under `cfg.out`, log a summary, write the contact sheet; return metrics."""
    splits = cfg.splits
    if set(splits) != {"train", "val", "test"}:
        raise MedalError(f"phantoms.splits={dict(splits)}: give exactly the keys train, val and test")
    out = Path(cfg.out)
    meta = generate_dataset(
        out,
        n=cfg.n,
        seed=cfg.seed,
        image_size=cfg.image_size,
        workers=cfg.workers,
        splits=(splits.train, splits.val, splits.test),
        age_range=(cfg.age.min, cfg.age.max),
        male_fraction=cfg.male_fraction,
        maturity_sd=cfg.maturity_sd,
        timing_sd=cfg.timing_sd,
        nuisance=OmegaConf.to_container(cfg.nuisance, resolve=True),
    )
    summary = meta.groupby(["split", "male"]).boneage.agg(["count", "min", "mean", "max"])
    log.info(
        "phantoms in %s (seed %d, %d px):\n%s", out, cfg.seed, cfg.image_size, summary.round(1).to_string()
    )
    log.info("inverted: %d, 16-bit: %d", int(meta.inverted.sum()), int((meta.bits == 16).sum()))
    generated, seconds = meta.attrs["generated"], meta.attrs["seconds"]
    sheet = out / "contact_sheet.png"
    if generated or not sheet.exists():  # a finished data set keeps its sheet
        write_contact_sheet(out, meta, sheet, columns=cfg.contact_sheet_columns)
    run_dir = Path(cfg.paths.output_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(sheet, run_dir / sheet.name)
    log.info("contact sheet: %s", sheet)
    metrics = {
        "phantoms/n": float(len(meta)),
        "phantoms/generated": float(generated),
        "phantoms/seconds": seconds,
        **{f"phantoms/n_{split}": float((meta.split == split).sum()) for split in ("train", "val", "test")},
        "phantoms/boneage_min": float(meta.boneage.min()),
        "phantoms/boneage_max": float(meta.boneage.max()),
    }
    if generated:
        metrics["phantoms/images_per_s"] = generated / seconds
    return metrics
