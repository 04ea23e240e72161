"""Pooled out-of-fold metrics of a k-fold cross-validation, written by the last fold run to finish.

Each fold run (`medal boneage cv.folds=K cv.fold=i`) predicts the fold it holds out (the `oof` rows of its
predictions.csv, scored as `oof/*`: the per-fold metrics) and the test holdout (`test/*`). When a fold run
finishes, or a rerun finds it finished, it looks for the other folds of its cross-validation among the run
folders beside its own (a sweep's jobs, a pipeline's stages): finished bone age runs whose recorded settings are
its own but for `cv.fold`. Once all K have finished, `pool_folds` writes `<parent>/cv_<fingerprint>/` (the
fingerprint of fold 0's settings less `cv.fold`). A caller that knows its K fold runs (`medal pipeline`, whose
folds may each read their own enhancer's images) pools them with `pool_runs`, into the same folder:

    predictions.csv     every out-of-fold prediction (split `cv`, with its `fold`) and, per test image, the mean of
                        the K fold models (split `ensemble`, what a bundle of the K models estimates)
    folds.csv           per fold: its run folder, held-out images, oof MAE with its CI, test MAE
    metrics.json        `cv/*`: the pooled out-of-fold metrics (MAE, RMSE, bias, within 12 months, by sex, n, the
                        bootstrap CI of the MAE, as `medal.boneage.metrics.cohort_metrics` computes a split's; on
                        phantoms the noise floor `cv/mae_floor`), `cv/folds`, the mean and sd of the per-fold MAEs;
                        `ensemble/*`: the K models' mean on the test holdout
    .hydra/config.yaml  the folds' shared settings with `cv.fold: null`, so `medal table` reads the folder as a run
    .medal/cv.json      the fold runs' file stamps (`medal.resume.Marker`, policy rebuild): pooled once, redone when
                        a fold is retrained

The pooled MAE is the mean over images of each image's out-of-fold error, not the mean of the K fold MAEs (they
differ when the folds differ in size). Its bootstrap CI resamples images and treats the K models' errors as one
sample; it leaves out the fold models' own variability, so it is narrower than the uncertainty of "the MAE of
this training recipe" (Bates, Hastie & Tibshirani, JASA 2024, "Cross-validation: what does it estimate and how well
does it do it?").
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from medal.atomic import atomic_path, write_text
from medal.boneage.metrics import cohort_metrics
from medal.boneage.predictions import COLUMNS, PREDICTIONS_FILE, read_predictions
from medal.data.cache import file_stamp
from medal.data.split import FOLD_COLUMN, SPLIT_FILE, read_folds
from medal.errors import MedalError
from medal.resume import Marker, fingerprint
from medal.runs import METRICS_FILE, read_metrics, write_metrics

log = logging.getLogger("medal.boneage")

POOL_PREFIX = "cv_"
FOLDS_FILE = "folds.csv"
OOF_SPLIT, POOLED_SPLIT, ENSEMBLE_SPLIT = "oof", "cv", "ensemble"  # predictions.csv's split names


def group_settings(settings: dict[str, Any]) -> dict[str, Any]:
    """A fold run's recorded settings without `cv.fold`: what the K runs of one cross-validation share."""
    cv = {k: v for k, v in settings["cv"].items() if k != "fold"}
    return {**settings, "cv": cv}


def pool_dir(parent: Path, settings: dict[str, Any]) -> Path:
    """Where the pooled record of the cross-validation of a fold run with `settings` lies (beside the folds)."""
    return parent / f"{POOL_PREFIX}{fingerprint(group_settings(settings))}"


def sibling_folds(run_dir: Path, settings: dict[str, Any]) -> dict[int, Path] | None:
    """The finished fold runs of `run_dir`'s cross-validation among the folders beside it, by fold; None while a
    fold is missing or unfinished, or when two folders hold the same fold (which to pool would be a guess)."""
    from medal.boneage.experiment import RUN_MARKER

    group = fingerprint(group_settings(settings))
    found: dict[int, list[Path]] = {}
    for folder in sorted(p for p in run_dir.parent.iterdir() if p.is_dir()):
        record = Marker.in_folder(folder, RUN_MARKER).read()
        if not record or not record.get("finished") or "cv" not in record.get("parts", {}):
            continue
        parts = record["parts"]
        if parts["cv"].get("fold") is None or fingerprint(group_settings(parts)) != group:
            continue
        found.setdefault(int(parts["cv"]["fold"]), []).append(folder)
    twice = {fold: dirs for fold, dirs in found.items() if len(dirs) > 1}
    if twice:
        fold, dirs = next(iter(twice.items()))
        log.warning("cross-validation not pooled: fold %d was run in %s with the same settings; move one away and "
                    "rerun a fold to pool", fold, " and ".join(map(str, dirs)))
        return None
    if set(found) != set(range(int(settings["cv"]["folds"]))):
        return None
    return {fold: dirs[0] for fold, dirs in sorted(found.items())}


def _fold_frames(runs: dict[int, Path]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(out-of-fold rows, test rows) of every fold run, each with its `fold`; refuses folds drawn differently."""
    shared = None
    oof, test = [], []
    for fold, run in runs.items():
        folds = read_folds(run / SPLIT_FILE)
        if folds is None:
            raise MedalError(f"{run / SPLIT_FILE}: no fold column; is {run} a k-fold run (cv.folds)?")
        if shared is None:
            shared = folds.sort_index()
        elif not folds.sort_index().equals(shared):
            raise MedalError(f"{run / SPLIT_FILE}: its folds differ from {runs[0] / SPLIT_FILE}'s; the runs of one "
                             "cross-validation share one fold assignment (same data set, data.split and cv.seed)")
        frame = read_predictions(run / PREDICTIONS_FILE)
        rows = frame[frame["split"] == OOF_SPLIT]
        outside = sorted(set(rows["id"]) - set(folds.index[folds == fold]))
        if outside:
            raise MedalError(f"{run / PREDICTIONS_FILE}: out-of-fold image {outside[0]} is not in fold {fold}; rerun "
                             "that fold in a new folder")
        oof.append(rows[COLUMNS].assign(fold=fold))
        test.append(frame.loc[frame["split"] == "test", COLUMNS].assign(fold=fold))
    pooled = pd.concat(oof, ignore_index=True)
    twice = pooled["id"][pooled["id"].duplicated()]
    if len(twice):
        raise MedalError(f"image {twice.iloc[0]} was predicted out of fold by two folds; the folds must be disjoint")
    return pooled, pd.concat(test, ignore_index=True)


def _ensemble(test: pd.DataFrame, folds: int) -> pd.DataFrame:
    """Per test image, the mean estimate of the K fold models (split `ensemble`); an image not every fold scored is
    left out (a fold run of another cohort)."""
    grouped = test.groupby("id", sort=True)
    counts = grouped["predicted"].count()
    kept = counts.index[counts == folds]
    mean = grouped.agg(sex=("sex", "first"), true=("true", "first"), predicted=("predicted", "mean")).loc[kept]
    return mean.reset_index().assign(split=ENSEMBLE_SPLIT, fold=pd.NA)[[*COLUMNS, FOLD_COLUMN]]


def _split_metrics(frame: pd.DataFrame, split: str, n_resamples: int, seed: int) -> dict[str, float]:
    if frame.empty:
        return {}
    return cohort_metrics(frame["predicted"].to_numpy(float), frame["true"].to_numpy(float),
                          (frame["sex"] == "M").to_numpy(), split, n_resamples=n_resamples, seed=seed)


def pool_folds(runs: dict[int, Path], out: Path, settings: dict[str, Any]) -> dict[str, float]:
    """Write the pooled record of the fold runs `runs` (fold -> run folder, every fold of one cross-validation)
    into `out` (module docstring) and return its metrics; the same runs, unchanged, pool once."""
    from medal.boneage.evaluate import floor_mae
    from medal.boneage.experiment import RUN_MARKER
    from medal.data.phantom.floor import read_floor

    # the run record, not metrics.json: a sweep's or a pipeline's wrapper writes that after the last fold has pooled
    stamps = {str(fold): [file_stamp(p) for p in (run / PREDICTIONS_FILE, run / SPLIT_FILE,
                                                  Marker.in_folder(run, RUN_MARKER).path)]
              for fold, run in runs.items()}
    outputs = [out / PREDICTIONS_FILE, out / FOLDS_FILE, out / METRICS_FILE, out / ".hydra"]
    marker = Marker.in_folder(out, "cv", policy="rebuild", outputs=outputs, what="pooled cross-validation metrics")
    parts = {"runs": stamps}
    if marker.begin(parts) == "done":
        return dict(marker.read()["metrics"])
    n_resamples, seed = int(settings["evaluation"]["bootstrap"]), int(settings["seed"])
    pooled, test = _fold_frames(runs)
    ensemble = _ensemble(test, len(runs))
    metrics = {**_split_metrics(pooled, POOLED_SPLIT, n_resamples, seed),
               **_split_metrics(ensemble, ENSEMBLE_SPLIT, n_resamples, seed)}
    floor = read_floor(settings["data"]["root"])  # phantoms only
    if floor is not None:
        metrics.update(floor_mae(floor, pooled, POOLED_SPLIT))
        if not ensemble.empty:
            metrics.update(floor_mae(floor, ensemble, ENSEMBLE_SPLIT))
    rows = []
    for fold, run in runs.items():
        recorded = Marker.in_folder(run, RUN_MARKER).read()["metrics"]
        rows.append({"fold": fold, "run": str(run), "images": int((pooled["fold"] == fold).sum()),
                     **{key: recorded.get(key) for key in ("oof/mae", "oof/mae_ci_low", "oof/mae_ci_high",
                                                           "test/mae", "val/mae_best_epoch")}})
    per_fold = pd.DataFrame(rows)
    fold_mae = per_fold["oof/mae"].dropna().to_numpy(float)
    metrics |= {"cv/folds": float(len(runs)), "cv/mae_fold_mean": float(fold_mae.mean()),
                "cv/mae_fold_sd": float(fold_mae.std(ddof=1)) if fold_mae.size > 1 else math.nan}
    with atomic_path(out / PREDICTIONS_FILE) as tmp:
        pd.concat([pooled.assign(split=POOLED_SPLIT), ensemble], ignore_index=True).to_csv(tmp, index=False)
    with atomic_path(out / FOLDS_FILE) as tmp:
        per_fold.to_csv(tmp, index=False)
    config = {**settings, "cv": {**settings["cv"], "fold": None}, "task_name": "boneage"}
    write_text(out / ".hydra" / "config.yaml", yaml.safe_dump(config, sort_keys=False))
    write_metrics(out, metrics)
    marker.finish(parts, metrics=metrics)
    log.info("cross-validation of %d folds pooled in %s: out-of-fold MAE %.2f months (95%% CI %.2f-%.2f) over %d "
             "images; per fold %.2f ± %.2f; the folds' ensemble on the test holdout %.2f", len(runs), out,
             metrics["cv/mae"], metrics["cv/mae_ci_low"], metrics["cv/mae_ci_high"], len(pooled),
             metrics["cv/mae_fold_mean"], metrics["cv/mae_fold_sd"], metrics.get("ensemble/mae", math.nan))
    return metrics


def pool_when_complete(run_dir: Path, settings: dict[str, Any]) -> Path | None:
    """Pool the cross-validation of the fold run in `run_dir` once every fold beside it has finished; returns the
    pooled folder, or None while folds are missing (the last fold to finish pools)."""
    runs = sibling_folds(run_dir, settings)
    if runs is None:
        log.info("cross-validation: %s is one of %d folds; the last fold to finish pools them beside it", run_dir,
                 int(settings["cv"]["folds"]))
        return None
    out = pool_dir(run_dir.parent, settings)
    pool_folds(runs, out, settings)
    return out


@dataclass(frozen=True)
class Pooled:
    """A pooled record as its readers (the pipeline's report) see it: where it is, its metrics, its folds."""

    folder: Path
    metrics: dict[str, float]
    folds: pd.DataFrame  # folds.csv: fold, run, images, oof/mae (and CI), test/mae, val/mae_best_epoch


def pool_runs(runs: list[Path]) -> Pooled:
    """Pool the finished fold runs `runs` (fold 0 to K-1 of one cross-validation, whose folders the caller knows:
    a pipeline's fold stages) beside them, where their last fold would (`pool_dir` of fold 0's settings; a record
    already there for the same runs is kept), and read it back.

    Unlike `pool_when_complete` it does not ask that the runs' settings agree but for `cv.fold`: a pipeline that
    refits the enhancer per fold trains each fold on its own enhancer's images. It asks that run i holds out fold
    i of one fold draw (`cv.folds`, `cv.seed`, and, through `_fold_frames`, one assignment).
    """
    from medal.boneage.experiment import run_marker

    settings = []
    for fold, run in enumerate(runs):
        record = run_marker(run).read()
        if not record or not record.get("finished"):
            raise MedalError(f"{run}: no finished bone age run; finish fold {fold} before pooling the folds")
        cv = record["parts"].get("cv")
        if cv is None or cv.get("fold") != fold or int(cv["folds"]) != len(runs):
            raise MedalError(f"{run}: not fold {fold} of {len(runs)} (its cv: {cv}); give fold 0 to K-1 of one "
                             "cross-validation, in order")
        settings.append(record["parts"])
    draws = {(int(p["cv"]["folds"]), int(p["cv"]["seed"])) for p in settings}
    if len(draws) > 1:
        raise MedalError(f"{runs[0].parent}: the fold runs come from different fold draws (cv.folds, cv.seed: "
                         f"{sorted(draws)}); pool the folds of one cross-validation")
    out = pool_dir(runs[0].parent, settings[0])
    pool_folds(dict(enumerate(runs)), out, settings[0])
    return Pooled(out, read_metrics(out), pd.read_csv(out / FOLDS_FILE))
