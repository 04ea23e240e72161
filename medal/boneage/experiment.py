"""One bone age experiment: train with the chosen fine-tune mode, keep the best checkpoint by val MAE,
then test that checkpoint on the held-out split (never on training images) and write every artifact.

Artifacts in the run dir: `checkpoints/{best-*,last}.ckpt`, `predictions.csv` (val + test rows),
`plots/{bland_altman,predicted_vs_true}.png`, `csv/metrics.csv` (the Lightning CSV logger).
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path
from typing import Any

import pandas as pd
import pytorch_lightning as pl
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig
from pytorch_lightning.callbacks import BaseFinetuning, EarlyStopping

from medal.atomic import atomic_path
from medal.boneage.evaluate import mean_predictor_mae, predict_frame
from medal.boneage.metrics import cohort_metrics
from medal.boneage.module import BoneAgeModule
from medal.boneage.plots import bland_altman, predicted_vs_true
from medal.boneage.targets import TargetScaler
from medal.callbacks.checkpoints import best_and_last
from medal.errors import MedalError
from medal.hardware import use_bf16
from medal.loggers import build_loggers, log_figure
from medal.runs import read_metrics

log = logging.getLogger("medal.boneage")

PREDICTIONS_FILE = "predictions.csv"
ARTIFACTS = {"predicted_vs_true": "plots/predicted_vs_true.png", "bland_altman": "plots/bland_altman.png"}  # outputs by name, in the run folder


def build_module(cfg: DictConfig, train_months: Any) -> BoneAgeModule:
    """The LightningModule of a composed `boneage` config, its target scaling fitted on `train_months`."""
    target = cfg.get("target") or {}
    scaler = TargetScaler.fit(str(target.get("scaling", "zscore")), train_months,
                              divisor=float(target.get("divisor", 240.0)))
    return BoneAgeModule(model_cfg=cfg.model, target_shift=scaler.shift, target_scale=scaler.scale,
                         loss=str(cfg.get("loss", "l1")), optimizer=cfg.get("optimizer"),
                         scheduler=cfg.get("scheduler"), channels_last=bool(cfg.get("channels_last", True)))


def build_finetune_callback(finetune_cfg: DictConfig) -> BaseFinetuning:
    """The `finetune=` group's callback (`name` labels the mode, the other keys are its arguments)."""
    if "_target_" not in finetune_cfg:
        raise MedalError("finetune: no _target_; choose finetune=ptl|above_fc|above_exit|above_mid|above_entry|all")
    return instantiate({k: v for k, v in finetune_cfg.items() if k != "name"})


def _resume_path(cfg: DictConfig, ckpt_dir: Path) -> str | None:
    last = ckpt_dir / "last.ckpt"
    if cfg.get("resume", True) and last.is_file():
        log.info("resuming from %s", last)
        return str(last)
    return None


def _finished(out_dir: Path) -> dict[str, Any] | None:
    try:
        metrics = read_metrics(out_dir)
    except (FileNotFoundError, ValueError):
        return None
    return metrics if metrics.get("status") == "ok" and "test/mae" in metrics else None


def _test_module(checkpoint: str | None, module: BoneAgeModule) -> BoneAgeModule:
    """The model to report: the best checkpoint's weights (or the final ones when none was kept)."""
    if not checkpoint:
        log.warning("no best checkpoint (no validation data?): testing the final weights")
        return module
    state = torch.load(checkpoint, map_location="cpu", weights_only=True)["state_dict"]
    module.load_state_dict(state)
    return module


def evaluate(module: BoneAgeModule, datamodule: Any, out_dir: Path, cfg: DictConfig,
             loggers: list[Any]) -> dict[str, float]:
    """Val and test metrics by cohort, train-mean baseline, predictions.csv and plots."""
    ev = cfg.get("evaluation") or {}
    bf16 = use_bf16(ev.get("bf16", "auto"), next(module.parameters()).device.type)
    train_ids = set(datamodule.frames["train"]["id"])
    frames = {}
    for split, loader in (("val", datamodule.val_dataloader()), ("test", datamodule.test_dataloader())):
        frames[split] = predict_frame(module, loader, split, bf16=bf16)
        leaked = train_ids & set(frames[split]["id"])
        if leaked:
            raise MedalError(f"{len(leaked)} training images are in the {split} split (e.g. {sorted(leaked)[0]}); "
                             "delete split.csv in the run dir and rerun")
    predictions = pd.concat(frames.values(), ignore_index=True)
    with atomic_path(out_dir / PREDICTIONS_FILE) as tmp:
        predictions.to_csv(tmp, index=False)

    metrics: dict[str, float] = {}
    for split, frame in frames.items():
        if frame.empty:
            continue
        metrics.update(cohort_metrics(frame["predicted"].to_numpy(), frame["true"].to_numpy(),
                                      (frame["sex"] == "M").to_numpy(), split,
                                      n_resamples=int(ev.get("bootstrap", 1000)), seed=int(cfg.get("seed", 0))))
        metrics.update(mean_predictor_mae(datamodule.frames["train"]["boneage"].to_numpy(), frame, split))
    test = frames["test"]
    if ev.get("plots", True) and not test.empty:
        male = (test["sex"] == "M").to_numpy()
        name = f"{cfg.model.name} {cfg.finetune.name} ({cfg.cohort.name})"
        for key, plot in (("bland_altman", bland_altman), ("predicted_vs_true", predicted_vs_true)):
            path = plot(test["predicted"].to_numpy(), test["true"].to_numpy(), male,
                        out_dir / "plots" / f"{key}.png", title=f"{key.replace('_', ' ')}: {name}")
            log_figure(loggers, f"test/{key}", path)
    for logger in loggers:
        logger.log_metrics({k: v for k, v in metrics.items() if k.startswith(("test/", "val/"))})
        logger.save()
    return metrics


def run_boneage(cfg: DictConfig) -> dict[str, float]:
    """Train, select by val MAE, test; returns the metrics for metrics.json."""
    from medal.data.datamodule import build_boneage_datamodule

    out_dir = Path(cfg.paths.output_dir)
    done = _finished(out_dir) if cfg.get("resume", True) else None
    if done is not None:
        log.info("%s already holds the finished run's metrics; delete it or set resume=false to redo", out_dir)
        return {k: v for k, v in done.items() if isinstance(v, int | float)}
    pl.seed_everything(int(cfg.get("seed", 0)), workers=True)
    datamodule = build_boneage_datamodule(cfg)
    datamodule.prepare_data()
    datamodule.setup("fit")
    module = build_module(cfg, datamodule.frames["train"]["boneage"].to_numpy())

    ckpt_dir = out_dir / "checkpoints"
    checkpoint, latest = best_and_last(ckpt_dir, str(cfg.checkpoint.monitor), str(cfg.checkpoint.mode))
    finetune = build_finetune_callback(cfg.finetune)
    loggers = build_loggers(cfg)
    callbacks: list[pl.Callback] = [finetune, checkpoint, latest]
    stopping = cfg.get("early_stopping") or {}
    if stopping.get("patience") is not None:
        if int(stopping.patience) < 1:
            raise MedalError(f"early_stopping.patience={stopping.patience}: must be >= 1 (or null for no early stop)")
        callbacks.append(EarlyStopping(monitor=str(cfg.checkpoint.monitor), mode=str(cfg.checkpoint.mode),
                                       patience=int(stopping.patience), min_delta=float(stopping.min_delta),
                                       check_on_train_epoch_end=True))
    trainer: pl.Trainer = instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False)
    with warnings.catch_warnings():  # frozen blocks keep their BatchNorm in eval mode on purpose
        warnings.filterwarnings("ignore", message=r"Found \d+ module\(s\) in eval mode at the start of training")
        trainer.fit(module, datamodule=datamodule, ckpt_path=_resume_path(cfg, ckpt_dir))
    if not trainer.is_global_zero:
        return {}
    module = _test_module(checkpoint.best_model_path, module).to(trainer.strategy.root_device)
    metrics = evaluate(module, datamodule, out_dir, cfg, loggers)
    if checkpoint.best_model_score is not None:
        metrics["val/mae_best_epoch"] = float(checkpoint.best_model_score)
    metrics["train/epochs"] = float(trainer.current_epoch)
    log.info("test MAE %.2f months (train-mean predictor %.2f); val MAE %.2f", metrics.get("test/mae", float("nan")),
             metrics.get("test/mae_mean_predictor", float("nan")), metrics.get("val/mae", float("nan")))
    return metrics

