"""One bone age experiment: train with the chosen fine-tune mode, keep the best checkpoint by val MAE,
then test that checkpoint on the held-out split (never on training images) and write every artifact.

A k-fold run (`cv.folds=K cv.fold=i`, `medal.data.split.CVOptions`) trains on the other folds, selects its
checkpoint on an inner validation split of them (`cv.inner_val`; 0 keeps the last epoch's weights, no selection),
and also predicts the fold it holds out (`oof` rows, `oof/*` metrics); the last fold to finish pools the K folds'
out-of-fold predictions beside them (`medal.boneage.cv`).

Artifacts in the run dir: `checkpoints/{best-*,last}.ckpt`, `predictions.csv` (val + test rows, and the `oof`
rows of a k-fold run, whose rows carry its `fold`),
`plots/{bland_altman,predicted_vs_true}.png`, `csv/metrics.csv` (the Lightning CSV logger) and the run's
record `.medal/boneage.json` (`medal.resume.Marker`): the resolved settings the run was trained with
(`run_settings`) and, once finished, its metrics. A rerun in the same folder with the same settings
returns the finished metrics, or continues an interrupted run from `last.ckpt`; other settings are
refused (the folder is an experiment's history, never deleted). `medal cam` reads the record to see the
images the model was trained on.
"""

from __future__ import annotations

import logging
import shutil
import warnings
from pathlib import Path
from typing import Any

import pandas as pd
import pytorch_lightning as pl
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from pytorch_lightning.callbacks import BaseFinetuning, EarlyStopping, EMAWeightAveraging

from medal.atomic import atomic_path
from medal.boneage.evaluate import floor_mae, mean_predictor_mae, predict_frame
from medal.boneage.metrics import cohort_metrics
from medal.boneage.module import BoneAgeModule
from medal.boneage.plots import bland_altman, predicted_vs_true
from medal.boneage.predictions import PREDICTIONS_FILE
from medal.boneage.targets import TargetScaler
from medal.callbacks.checkpoints import LAST, best_and_last, resume_from
from medal.callbacks.checkpoints import latest as last_checkpoint
from medal.config import options_from, to_plain
from medal.data.phantom.floor import read_floor
from medal.data.split import FOLD_COLUMN, CVOptions
from medal.errors import MedalError
from medal.hardware import use_bf16
from medal.loggers import build_loggers, log_figure
from medal.models.stages import FINETUNE_MODES
from medal.resume import Marker
from medal.runs import Reused

log = logging.getLogger("medal.boneage")

ARTIFACTS = {"predicted_vs_true": "plots/predicted_vs_true.png", "bland_altman": "plots/bland_altman.png"}  # outputs by name, in the run folder
RUN_MARKER = "boneage"  # <run dir>/.medal/boneage.json
#: Top-level keys that do not change what a run computes: where it writes, how it is logged or named.
NOT_SETTINGS: tuple[str, ...] = ("paths", "hydra", "logger", "task_name", "optimized_metric", "experiment_name")
#: Keys inside a section that only set progress display, logging cadence or worker counts.
NOT_SETTINGS_IN: dict[str, tuple[str, ...]] = {
    "trainer": ("default_root_dir", "enable_progress_bar", "enable_model_summary", "log_every_n_steps"),
    "data": ("num_workers", "cache_workers"),
    "enhance": ("num_workers",),  # the enhancer's loader processes (hardware-dependent: ${loader_workers:...})
}


def run_settings(cfg: DictConfig) -> dict[str, Any]:
    """The resolved settings a run's result depends on: the whole config but `NOT_SETTINGS(_IN)`.

    They are the run's resume fingerprint and its record, which `medal cam` reads for the data settings. A run
    without folds (`cv.folds` null) records no `cv`, so the folders of runs made before medal had folds resume.
    """
    settings: dict[str, Any] = {}
    for key in cfg:
        if key in NOT_SETTINGS or (key == "cv" and cfg.cv.folds is None):
            continue
        node, skip = cfg[key], NOT_SETTINGS_IN.get(str(key), ())
        if skip and OmegaConf.is_dict(node):
            settings[str(key)] = {str(k): to_plain(node[k]) for k in node if k not in skip}
        else:
            settings[str(key)] = to_plain(node)
    return settings


def run_marker(run_dir: str | Path) -> Marker:
    """The record of the bone age run in `run_dir` (policy refuse: a run of other settings is never deleted)."""
    return Marker.in_folder(run_dir, RUN_MARKER, policy="refuse", what="a bone age run")


def check_recorded_split(settings: dict[str, Any], run: str | Path) -> None:
    """Refuse, in one line naming `run`, the record of a bone age run made before medal fixed one test holdout
    per data set: its `data.split` has `test_fraction` (a test set drawn per run, with the split's seed) and its
    `data` no `holdout`.

    Reading the old key as `data.holdout.fraction` would not make the run usable: its test images are not the data
    set's holdout, so its `split.csv` is refused when loaded (`medal.data.split.load_or_make_split`), and they may
    since have made gold standards or GAN pairs. Tasks that read a run's record (`medal cam`, `medal export`) call
    this before anything else.
    """
    data = settings["data"]
    if "test_fraction" in data["split"] or "holdout" not in data:
        raise MedalError(f"{run}: a bone age run made before medal fixed one test holdout per data set (its record has "
                         "data.split.test_fraction, no data.holdout), so its test images are not the data set's "
                         "holdout; retrain it in a new folder with this medal (the same `medal boneage` overrides), "
                         "or read it with the medal version that made it")


def build_module(cfg: DictConfig, train_months: Any) -> BoneAgeModule:
    """The LightningModule of a composed `boneage` config, its target scaling fitted on `train_months`."""
    scaler = TargetScaler.fit(str(cfg.target.scaling), train_months, divisor=float(cfg.target.divisor))
    return BoneAgeModule(model_cfg=cfg.model, target_shift=scaler.shift, target_scale=scaler.scale,
                         loss=str(cfg.loss), optimizer=cfg.optimizer, scheduler=cfg.scheduler,
                         channels_last=bool(cfg.channels_last))


def build_finetune_callback(finetune_cfg: DictConfig) -> BaseFinetuning:
    """The `finetune=` group's callback (`name` labels the mode, the other keys are its arguments)."""
    if "_target_" not in finetune_cfg:
        raise MedalError(f"finetune: no _target_; choose finetune={'|'.join(FINETUNE_MODES)}")
    return instantiate({k: v for k, v in finetune_cfg.items() if k != "name"})


def _test_module(checkpoint: str | None, module: BoneAgeModule) -> BoneAgeModule:
    """The model to report: the best checkpoint's weights (or the final ones when none was kept)."""
    if not checkpoint:
        log.warning("no best checkpoint (no validation data?): testing the final weights")
        return module
    state = torch.load(checkpoint, map_location="cpu", weights_only=True)["state_dict"]
    module.load_state_dict(state)
    return module


def _keep_last(last: Path, epochs: int) -> str:
    """A run without checkpoint selection (`cv.inner_val=0`) keeps its last epoch's weights as its `best-*.ckpt`,
    the one checkpoint every run keeps for what it tested (`medal cam`, `medal export` read it)."""
    kept = last.parent / f"best-{epochs - 1:03d}.ckpt"
    with atomic_path(kept) as tmp:
        shutil.copyfile(last, tmp)
    return str(kept)


def evaluate_splits(module: BoneAgeModule, datamodule: Any, out_dir: Path, cfg: DictConfig,
                    loggers: list[Any], cv: CVOptions | None = None) -> dict[str, float]:
    """Val and test (and a k-fold run's out-of-fold) metrics by cohort, train-mean baseline, predictions.csv and
    plots."""
    ev = cfg.evaluation
    bf16 = use_bf16(ev.bf16, next(module.parameters()).device.type)
    train_ids = set(datamodule.frames["train"]["id"])
    loaders = [("val", datamodule.val_dataloader()), ("test", datamodule.test_dataloader())]
    if cv is not None and cv.enabled:
        loaders.append(("oof", datamodule.oof_dataloader()))
    frames = {}
    for split, loader in loaders:
        frames[split] = predict_frame(module, loader, split, bf16=bf16)
        leaked = train_ids & set(frames[split]["id"])
        if leaked:
            raise MedalError(f"{len(leaked)} training images are in the {split} split (e.g. {sorted(leaked)[0]}); "
                             "delete split.csv in the run dir and rerun")
    predictions = pd.concat(frames.values(), ignore_index=True)
    if cv is not None and cv.enabled:
        predictions[FOLD_COLUMN] = int(cv.fold)
    with atomic_path(out_dir / PREDICTIONS_FILE) as tmp:
        predictions.to_csv(tmp, index=False)

    metrics: dict[str, float] = {}
    floor = read_floor(cfg.data.root)  # phantoms only: real data has no floor, and no key for it
    for split, frame in frames.items():
        if frame.empty:
            continue
        metrics.update(cohort_metrics(frame["predicted"].to_numpy(), frame["true"].to_numpy(),
                                      (frame["sex"] == "M").to_numpy(), split,
                                      n_resamples=int(ev.bootstrap), seed=int(cfg.seed)))
        metrics.update(mean_predictor_mae(datamodule.frames["train"]["boneage"].to_numpy(), frame, split))
        if floor is not None:
            metrics.update(floor_mae(floor, frame, split))
    test = frames["test"]
    if ev.plots and not test.empty:
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


def _early_stopping(cfg: DictConfig, selects: bool) -> EarlyStopping | None:
    """`early_stopping.patience` epochs without a `min_delta` gain of the checkpoint monitor; null = off."""
    stopping = cfg.early_stopping
    if stopping.patience is None:
        return None
    if int(stopping.patience) < 1:
        raise MedalError(f"early_stopping.patience={stopping.patience}: must be >= 1 (or null for no early stop)")
    if not selects:
        raise MedalError(f"early_stopping.patience={stopping.patience} with cv.inner_val=0: no validation images to "
                         "stop on; set cv.inner_val > 0 or early_stopping.patience=null")
    return EarlyStopping(monitor=str(cfg.checkpoint.monitor), mode=str(cfg.checkpoint.mode),
                         patience=int(stopping.patience), min_delta=float(stopping.min_delta),
                         check_on_train_epoch_end=True)


def _weight_averaging(cfg: DictConfig) -> EMAWeightAveraging | None:
    """`ema.decay`: an exponential moving average of the weights, updated after every optimiser step; null = off.

    Validation, the kept checkpoints and so the test and every later use (`medal cam`, export) see the average.
    The BatchNorm statistics are averaged with the weights. The training itself runs on the raw weights, which a
    resumed run restores from `last.ckpt` beside the average.
    """
    decay = cfg.ema.decay
    if decay is None:
        return None
    if not 0.0 < float(decay) < 1.0:
        raise MedalError(f"ema.decay={decay}: must lie between 0 and 1 (e.g. 0.99), or null for no averaging")
    return EMAWeightAveraging(decay=float(decay))


def begin_run(marker: Marker, settings: dict[str, Any], ckpt_dir: Path) -> str:
    """The run's status (`done`, `resume`, `fresh`); refuses a folder whose checkpoints have no record.

    Shared by the training tasks that keep Lightning checkpoints in their run folder (bone age, pretraining).
    """
    if marker.read() is None and any(ckpt_dir.glob("*.ckpt")):
        raise MedalError(f"{ckpt_dir}: checkpoints without a record of the settings that made them "
                         f"({marker.path} is missing); delete that run folder or choose another")
    return marker.begin(settings)


def run_boneage(cfg: DictConfig) -> dict[str, float]:
    """Train, select by val MAE, test; returns the metrics for metrics.json."""
    from medal.boneage.cv import pool_when_complete
    from medal.data.datamodule import build_boneage_datamodule

    out_dir = Path(cfg.paths.output_dir)
    ckpt_dir = out_dir / "checkpoints"
    cv = options_from(CVOptions, cfg.cv, "cv")
    settings, marker = run_settings(cfg), run_marker(out_dir)
    status = begin_run(marker, settings, ckpt_dir)
    if status == "done":
        log.info("%s already holds this run, finished; its metrics are returned (a new run needs another folder)",
                 out_dir)
        if cv.enabled:  # a sweep killed after its last fold finished, before it pooled
            pool_when_complete(out_dir, settings)
        return Reused(marker.read()["metrics"])
    selects = not (cv.enabled and cv.inner_val == 0)  # a k-fold run may train a fixed number of epochs instead
    early_stopping = _early_stopping(cfg, selects)
    pl.seed_everything(int(cfg.seed), workers=True)
    datamodule = build_boneage_datamodule(cfg, cv)
    datamodule.prepare_data()
    datamodule.setup("fit")
    module = build_module(cfg, datamodule.frames["train"]["boneage"].to_numpy())

    loggers = build_loggers(cfg)
    latest = last_checkpoint(ckpt_dir)
    checkpoint = best_and_last(ckpt_dir, str(cfg.checkpoint.monitor), str(cfg.checkpoint.mode))[0] if selects else None
    callbacks: list[pl.Callback] = [build_finetune_callback(cfg.finetune), *([checkpoint] if checkpoint else []), latest]
    if (stopping := early_stopping) is not None:
        callbacks.append(stopping)
    if (averaging := _weight_averaging(cfg)) is not None:
        callbacks.append(averaging)
    trainer: pl.Trainer = instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False)
    last = ckpt_dir / f"{LAST}.ckpt"
    ckpt_path = resume_from(last, status == "resume")
    if ckpt_path:
        log.info("resuming from %s", last)
    with warnings.catch_warnings():  # frozen blocks keep their BatchNorm in eval mode on purpose
        warnings.filterwarnings("ignore", message=r"Found \d+ module\(s\) in eval mode at the start of training")
        trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path, weights_only=True)
    if not trainer.is_global_zero:
        return {}
    tested = checkpoint.best_model_path if checkpoint is not None else _keep_last(last, trainer.current_epoch)
    module = _test_module(tested, module).to(trainer.strategy.root_device)
    metrics = evaluate_splits(module, datamodule, out_dir, cfg, loggers, cv)
    if checkpoint is not None and checkpoint.best_model_score is not None:
        metrics["val/mae_best_epoch"] = float(checkpoint.best_model_score)
    metrics["train/epochs"] = float(trainer.current_epoch)
    log.info("test MAE %.2f months (train-mean predictor %.2f, noise floor %s); val MAE %.2f",
             metrics.get("test/mae", float("nan")), metrics.get("test/mae_mean_predictor", float("nan")),
             f"{metrics['test/mae_floor']:.2f}" if "test/mae_floor" in metrics else "unknown: not phantoms",
             metrics.get("val/mae", float("nan")))
    marker.finish(settings, metrics=metrics)
    if cv.enabled:
        log.info("fold %d of %d: out-of-fold MAE %.2f months on %d images", cv.fold, cv.folds,
                 metrics.get("oof/mae", float("nan")), len(datamodule.frames["oof"]))
        pool_when_complete(out_dir, settings)
    return metrics
