"""Build the configured Lightning loggers, log the resolved config, and send figures to them.

`conf/logger/<name>.yaml` files each hold one top-level key (`csv:`, `wandb:`), so both `logger=csv` and
`logger=[csv,wandb]` compose into one dict `name -> logger config` and `build_loggers` needs no special case.
"""

from __future__ import annotations

import csv
import logging
import netrc
import os
import sys
from argparse import Namespace
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from hydra.utils import instantiate
from lightning_fabric.loggers.logger import rank_zero_experiment
from omegaconf import DictConfig, OmegaConf
from pytorch_lightning.loggers import CSVLogger, Logger, WandbLogger
from pytorch_lightning.loggers.csv_logs import ExperimentWriter
from pytorch_lightning.utilities.rank_zero import rank_zero_only

from medal import wandb_record
from medal.errors import MedalError
from medal.extras import WANDB, require

log = logging.getLogger("medal.loggers")

WANDB_TAG_MAX = 64  # W&B rejects longer tags


class _AppendingWriter(ExperimentWriter):
    """Lightning's CSV writer, except that an existing metrics.csv is continued rather than deleted."""

    def _check_log_dir_exists(self) -> None:
        if self._fs.isfile(self.metrics_file_path):
            with self._fs.open(self.metrics_file_path, "r", newline="") as handle:
                self.metrics_keys = next(csv.reader(handle), [])  # appended rows follow the file's header


class ResumableCSVLogger(CSVLogger):
    """`CSVLogger` for runs that resume: Lightning's own deletes `metrics.csv` when its folder is reused, so a
    resumed training run or active-learning loop would lose the epochs and rounds logged before the stop.
    Rows logged again after a resume are appended; readers keep the last row per epoch."""

    @property
    @rank_zero_experiment
    def experiment(self) -> ExperimentWriter:
        if self._experiment is None:
            self._fs.makedirs(self.root_dir, exist_ok=True)
            self._experiment = _AppendingWriter(log_dir=self.log_dir)
        return self._experiment


class RecordingWandbLogger(WandbLogger):
    """Lightning's `WandbLogger`, which also keeps medal's plain record of what it sends in the W&B run's files
    folder (`medal/wandb_record.py`): what `medal table table.source=wandb_offline` reads, since an offline
    run keeps its config, history and summary only in W&B's private log. Images are kept when given as files
    (medal logs its figures as PNG paths)."""

    @rank_zero_only
    def log_hyperparams(self, params: dict[str, Any] | Namespace) -> None:
        super().log_hyperparams(params)
        run = self.experiment
        config = vars(params) if isinstance(params, Namespace) else dict(params)
        wandb_record.write_run(run.dir, run.id, run.project, run.group or "", run.tags or (), config)

    @rank_zero_only
    def log_metrics(self, metrics: Mapping[str, Any], step: int | None = None) -> None:
        super().log_metrics(metrics, step)
        wandb_record.append_history(self.experiment.dir, metrics, step)

    @rank_zero_only
    def log_image(self, key: str, images: list[Any], step: int | None = None, **kwargs: Any) -> None:
        super().log_image(key, images, step, **kwargs)
        files = [image for image in images if isinstance(image, str | Path)]
        if files:
            wandb_record.keep_image(self.experiment.dir, key, files)


def resolved_config(cfg: DictConfig) -> dict[str, Any]:
    """The run's config as plain, resolved containers (without Hydra's own node): what a logger records."""
    resolved: dict[str, Any] = {}
    for key in cfg:
        if key == "hydra":  # Hydra's own node: launcher/sweeper internals, some unresolvable outside a sweep
            continue
        node = cfg[key]
        resolved[str(key)] = (OmegaConf.to_container(node, resolve=True, throw_on_missing=False)
                              if OmegaConf.is_config(node) else node)
    return resolved


def build_loggers(cfg: DictConfig, log_config: bool = True) -> list[Logger]:
    """Instantiate every entry of `cfg.logger` and (by default) log the resolved config to each of them.

    A task config without a `logger` node (`logger=null` drops the group) logs nowhere; an entry without a
    `_target_` is a config error, named in one line.
    """
    if "logger" not in cfg or cfg.logger is None:
        return []
    loggers = []
    for name, conf in cfg.logger.items():
        if not OmegaConf.is_dict(conf) or "_target_" not in conf:
            raise MedalError(f"logger.{name}: not a logger config (no _target_); see conf/logger/*.yaml")
        loggers.append(instantiate(conf))
    if loggers and log_config:
        params = resolved_config(cfg)
        for logger in loggers:
            logger.log_hyperparams(params)
    return loggers


def log_figure(loggers: list[Logger], key: str, png_path: str | Path, step: int | None = None) -> None:
    """Send a saved PNG to loggers that take images (W&B); others keep the file in the run dir."""
    for logger in loggers:
        log_image = getattr(logger, "log_image", None)
        if callable(log_image):
            log_image(key=key, images=[str(png_path)], step=step)


def wandb_api_key_available() -> bool:
    """True when W&B could authenticate: `WANDB_API_KEY` or a netrc entry for the W&B host."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    host = urlparse(os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai")).hostname or "api.wandb.ai"
    try:
        return netrc.netrc().authenticators(host) is not None
    except (FileNotFoundError, netrc.NetrcParseError, OSError):
        return False


def wandb_offline_wanted() -> bool:
    """Offline when the user asked for it (`WANDB_MODE=offline|dryrun`) or when there is no key to go online."""
    mode = os.environ.get("WANDB_MODE", "").lower()
    return mode in {"offline", "dryrun"} or not wandb_api_key_available()


def wandb_logger(
    save_dir: str | Path,
    project: str = "medal",
    tags: Iterable[str] | None = None,
    name: str | None = None,
    offline: bool | None = None,
    **init_kwargs: Any,
) -> WandbLogger:
    """A WandbLogger writing under `save_dir/wandb/` (with medal's record of the run inside the run's folder);
    `offline=None` decides from the environment.

    `tags` are the run's Hydra overrides (`finetune=ptl`, ...) so runs of a sweep can be filtered by
    them; the display name defaults to the same overrides joined, which tells the runs of a group apart.
    """
    require(WANDB, "logger=wandb")  # Lightning's WandbLogger imports wandb only here, when it is built
    tag_list = [str(tag)[:WANDB_TAG_MAX] for tag in (tags or [])]
    offline = wandb_offline_wanted() if offline is None else offline
    Path(save_dir).mkdir(parents=True, exist_ok=True)
    if offline:
        log.info("W&B runs offline in %s/wandb (sync later with `wandb sync`)", save_dir)
    return RecordingWandbLogger(
        save_dir=str(save_dir),
        project=project,
        tags=tag_list,
        name=name or (",".join(tag_list)[:128] or None),
        offline=offline,
        **init_kwargs,
    )


def summarize_run(metrics: Mapping[str, Any], status: str) -> None:
    """Copy a run's final metrics and status into the open W&B run's summary and medal's record of the run
    (no-op without W&B).

    metrics.json, the W&B summary and the record then hold the same numbers, so tables built from any agree.
    """
    wandb = sys.modules.get("wandb")
    run = getattr(wandb, "run", None) if wandb is not None else None
    if run is None:
        return
    measured = {k: v for k, v in metrics.items() if v is not None}
    run.summary.update({"status": status, **measured})
    wandb_record.write_summary(run.dir, status, measured)
