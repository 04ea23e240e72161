"""One pretraining run (`medal pretrain`): train an encoder on a source task, export its backbone, probe it.

`pretrain=ssl` trains SimCLR on the target data set's training images without labels (`data.py` says which
images); `pretrain=supervised` trains age + sex on a phantom set of another acquisition profile. Either way
the backbone is written as `backbone.safetensors` (`medal.models.weights.save_backbone`), which
`medal boneage model.weights=<run>/backbone.safetensors` loads into the same `model=`. Then, as evaluation only,
a kNN probe (`probe.py`) scores the pooled features on the target's validation labels, beside the same probe
on the backbone before pretraining and the train-mean predictor.

Artifacts in the run dir: `backbone.safetensors`, `checkpoints/last.ckpt`, `plots/loss.png`,
`csv/metrics.csv`, `split.csv` (the target's split), `source/split.csv` (supervised) and the record
`.medal/pretrain.json` (`medal.resume.Marker`, policy refuse): the same settings in the same folder return
the finished run's metrics or continue from `last.ckpt`; other settings are refused.
"""

from __future__ import annotations

import copy
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
from hydra.utils import instantiate
from omegaconf import DictConfig
from torch.utils.data import DataLoader

from medal.boneage.experiment import begin_run, run_settings
from medal.boneage.targets import TargetScaler
from medal.callbacks.checkpoints import LAST, latest, resume_from
from medal.config import options_from
from medal.data.datamodule import BoneAgeDataModule, build_boneage_datamodule
from medal.errors import MedalError
from medal.loggers import build_loggers
from medal.models.weights import save_backbone
from medal.pretrain.curve import LossCurve
from medal.pretrain.data import source_datamodule, ssl_images
from medal.pretrain.module import PretrainModule, SimCLRModule, SourceTaskModule
from medal.pretrain.probe import probe_scores
from medal.resume import Marker
from medal.runs import Reused

log = logging.getLogger("medal.pretrain")

BACKBONE_FILE = "backbone.safetensors"
ARTIFACTS = {"backbone": BACKBONE_FILE, "loss_curve": "plots/loss.png"}  # outputs by name, in the run folder
RUN_MARKER = "pretrain"  # <run dir>/.medal/pretrain.json


@dataclass(frozen=True)
class SSLOptions:
    """`pretrain=ssl` (`conf/pretrain/ssl.yaml`)."""

    name: str
    batch_size: int
    unlabelled: str | None  # a folder of unlabelled radiographs pretrained on beside the training images
    head: dict[str, Any]  # lightly projection head (`_target_`; its input_dim is the backbone's width)
    loss: dict[str, Any]  # a two-view loss `loss(z0, z1)` (`_target_`)
    views: dict[str, Any]  # medal.pretrain.views.ViewOptions


@dataclass(frozen=True)
class SupervisedOptions:
    """`pretrain=supervised` (`conf/pretrain/supervised.yaml`)."""

    name: str
    batch_size: int
    age_weight: float
    sex_weight: float
    source: dict[str, Any]  # medal.pretrain.data.SourceOptions


@dataclass(frozen=True)
class ProbeOptions:
    """`probe`: neighbours of the kNN probe and the batch size of feature extraction."""

    k: int
    batch_size: int


def run_marker(run_dir: str | Path) -> Marker:
    """The record of the pretraining run in `run_dir` (policy refuse: another run's folder is never deleted)."""
    return Marker.in_folder(run_dir, RUN_MARKER, policy="refuse", what="a pretraining run")


def _ssl(cfg: DictConfig, target: BoneAgeDataModule) -> tuple[PretrainModule, dict[str, Any], int]:
    """SimCLR module, its image loader (shuffled, full batches only) and the number of images."""
    opts = options_from(SSLOptions, cfg.pretrain, "pretrain")
    images = ssl_images(target, opts.unlabelled)
    if len(images) < 2 or int(opts.batch_size) < 2:
        raise MedalError(f"pretrain.batch_size={opts.batch_size} with {len(images)} images: a contrastive batch "
                         "needs at least two images")
    workers = int(cfg.data.num_workers)
    loader = DataLoader(images, batch_size=min(int(opts.batch_size), len(images)), shuffle=True, drop_last=True,
                        num_workers=workers, persistent_workers=workers > 0)
    module = SimCLRModule(cfg.model, head=opts.head, loss=opts.loss, views=opts.views,
                          image_size=int(cfg.data.image_size), optimizer=cfg.optimizer, scheduler=cfg.scheduler)
    return module, {"train_dataloaders": loader}, len(images)


def _supervised(cfg: DictConfig, out_dir: Path) -> tuple[PretrainModule, dict[str, Any], int]:
    """Source-task module and the source set's DataModule (generated first when missing)."""
    opts = options_from(SupervisedOptions, cfg.pretrain, "pretrain")
    source = source_datamodule(cfg, out_dir / "source")
    source.prepare_data()
    source.setup("fit")
    ages = source.frames["train"]["boneage"].to_numpy()
    scaler = TargetScaler.fit("zscore", ages, divisor=1.0)  # divisor: only read by the "divide" scaling
    module = SourceTaskModule(cfg.model, age_shift=scaler.shift, age_scale=scaler.scale,
                              age_weight=float(opts.age_weight), sex_weight=float(opts.sex_weight),
                              optimizer=cfg.optimizer, scheduler=cfg.scheduler)
    return module, {"datamodule": source}, len(ages)


def pretrain_settings(cfg: DictConfig) -> dict[str, Any]:
    """The run's resume fingerprint: `run_settings` (as for bone age) less the source generator's process
    count, which does not change a single image."""
    settings = run_settings(cfg)
    if "source" in settings["pretrain"]:
        del settings["pretrain"]["source"]["workers"]
    return settings


def run_pretrain(cfg: DictConfig) -> dict[str, float]:
    """Pretrain, export the backbone, probe it; returns the metrics for metrics.json."""
    out_dir = Path(cfg.paths.output_dir)
    ckpt_dir = out_dir / "checkpoints"
    method = str(cfg.pretrain.name)
    if method not in ("ssl", "supervised"):
        raise MedalError(f"pretrain.name={method!r}: choose pretrain=ssl or pretrain=supervised")
    settings, marker = pretrain_settings(cfg), run_marker(out_dir)
    status = begin_run(marker, settings, ckpt_dir)
    if status == "done":
        log.info("%s already holds this pretraining run, finished; its metrics are returned", out_dir)
        return Reused(marker.read()["metrics"])
    probe = None if cfg.probe is None else options_from(ProbeOptions, cfg.probe, "probe")
    pl.seed_everything(int(cfg.seed), workers=True)
    target = None
    if method == "ssl" or probe is not None:  # the target's split (saved as split.csv), images and probe labels
        target = build_boneage_datamodule(cfg)
        target.prepare_data()
        target.setup("fit")
    if method == "ssl":
        module, fit_data, n_images = _ssl(cfg, target)
    else:
        module, fit_data, n_images = _supervised(cfg, out_dir)
    start = copy.deepcopy(module.encoder)  # the backbone before pretraining, for the probe's baseline

    curve = LossCurve("train/loss")
    loggers = build_loggers(cfg)
    trainer: pl.Trainer = instantiate(cfg.trainer, callbacks=[curve, latest(ckpt_dir)], logger=loggers or False)
    last = ckpt_dir / f"{LAST}.ckpt"
    ckpt_path = resume_from(last, status == "resume")
    if ckpt_path:
        log.info("resuming from %s", last)
    trainer.fit(module, ckpt_path=ckpt_path, weights_only=True, **fit_data)
    if not trainer.is_global_zero:
        return {}

    backbone = save_backbone(module.encoder.backbone, out_dir / BACKBONE_FILE, str(cfg.model.timm_name),
                             method=method, model=str(cfg.model.name), image_size=str(cfg.data.image_size))
    log.info("backbone written to %s (medal boneage model=%s model.weights=%s)", backbone, cfg.model.name, backbone)
    curve.plot(out_dir / ARTIFACTS["loss_curve"], f"{method} pretraining of {cfg.model.name}")
    metrics: dict[str, float] = {**curve.metrics(), "train/epochs": float(trainer.current_epoch),
                                 "pretrain/images": float(n_images)}
    metrics.update({k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("source/")})
    if probe is not None and target is not None:
        device = trainer.strategy.root_device
        encoders = {"": module.encoder.to(device), "before": start.to(device)}
        metrics.update(probe_scores(encoders, target.datasets["train"], target.datasets["val"], int(probe.k),
                                    int(probe.batch_size)))
        log.info("kNN probe on the target's val split: MAE %.2f months after pretraining, %.2f before, "
                 "%.2f for the train mean", metrics["probe/val_mae"], metrics["probe/val_mae_before"],
                 metrics["probe/val_mae_mean_predictor"])
    marker.finish(settings, metrics=metrics)
    return metrics
