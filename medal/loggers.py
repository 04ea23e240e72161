"""Build the configured Lightning loggers and send figures to them."""

from __future__ import annotations

from pathlib import Path

from hydra.utils import instantiate
from omegaconf import DictConfig
from pytorch_lightning.loggers import Logger


def build_loggers(cfg: DictConfig) -> list[Logger]:
    """Instantiate every entry of `cfg.logger` (a dict of name -> `_target_` config)."""
    section = cfg.get("logger") or {}
    return [instantiate(conf) for conf in section.values() if conf and "_target_" in conf]


def log_figure(loggers: list[Logger], key: str, png_path: str | Path, step: int | None = None) -> None:
    """Send a saved PNG to loggers that take images (W&B); others keep the file in the run dir."""
    for logger in loggers:
        log_image = getattr(logger, "log_image", None)
        if callable(log_image):
            log_image(key=key, images=[str(png_path)], step=step)
