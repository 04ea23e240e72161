"""The calibration table of a bundle (`calibration.json`): its chain run over labelled images no model saw.

Which images: at export the `calibration` role of the regressors' split (`calibration_inputs`: carved before
training, so neither training, checkpoint selection, early stopping nor Optuna saw them; `refuse_seen` checks
every regressor's split), or a hospital's own labelled cases (`medal recalibrate`). For each image the chain's
estimate (without and with test-time mirroring; with the true sex and, when the bundle needs the sex, also as
`predict.sex=unknown` would give it) is kept beside the label, so `medal predict` can compute the interval of any
method (`medal.predict.conformal.METHODS`) at any coverage. The same pass gives the quality fences
(`medal.predict.qc`) of the mask share and the committee's agreement.

A bundle of the K fold runs of a cross-validation may instead take the out-of-fold residuals
(`export.conformal.source=cv_plus`, `cv_plus_inputs`): every image of the folded pool, each estimated by the
models of its own fold (`medal.predict.cv_plus.out_of_fold`), which never trained on it or selected with it
(`refuse_in_fold` checks each regressor's split). The calibration split, which no fold model saw, then checks
those intervals (`cv_plus_check`, recorded as `check`).

Layout (`conformal.SCHEMA` 2; CV+ tables `conformal.CV_PLUS_SCHEMA` 3, which adds `cases.fold`, `regressor_folds`
and `check`, so a medal that reads only schema 2 refuses them rather than misread them):

    schema, source          where the images came from (kind `split`: the split file and role; kind `cases`: the
                            hospital's file, its sha256, count, date, medal version; kind `cv_plus`: the split
                            file, its folds and roles)
    settings                method (the bundle's default), min_cohort, min_band, edges (age bands, months) and
                            difficulty (sigma of normalised conformal), each with where it came from
    cases                   id, male, reference, known[tta], unknown[tta] (or null), spread[tta]: one per image;
                            CV+: fold (the estimates are that fold's models')
    regressor_folds         CV+: the fold each regressor of the chain was trained without
    check                   CV+: coverage and median width of its intervals on the calibration split
    images, skipped, qc, mae
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from medal.bundle.load import Bundle
from medal.data.rsna import read_index
from medal.data.split import read_folds, read_split
from medal.errors import MedalError
from medal.predict import conformal, cv_plus, ensemble, qc
from medal.predict.chain import TTA, ChainModule, ChainOptions, InputImages, Measured, collate

log = logging.getLogger("medal.predict")


def _no_calibration_role(split_file: str | Path) -> str:
    return (f"{split_file}: no calibration images (a split drawn by an older medal, or with data.split.calibration=0); "
            "the intervals must be calibrated on images that neither trained nor selected the models: rerun the bone "
            "age runs in new folders (a pipeline: pipeline.force=[boneage]) with data.split.calibration > 0, then "
            "export again")


def calibration_inputs(data: dict[str, Any]) -> pd.DataFrame:
    """The input table (`medal.predict.inputs.COLUMNS`) of the calibration images of a bundle's sources.

    `data` is `medal.bundle.sources.Sources.data` (or a bundle manifest's `data`): the data set root and the split
    file of the regressors' runs. These images trained, selected and tested nothing, so anything calibrated on
    them (conformal intervals, an out-of-distribution score) holds for new images exchangeable with them.
    """
    split = read_split(data["split_file"])
    ids = set(split.index[split == "calibration"])
    if not ids:
        raise MedalError(_no_calibration_role(data["split_file"]))
    index = read_index(data["root"], strict=False)
    rows = index[index["id"].isin(ids) & index["boneage"].notna()]
    if rows.empty:
        raise MedalError(f"{data['split_file']}: none of its {len(ids)} calibration images is a labelled image under "
                         f"{data['root']}; the intervals are calibrated on them")
    return pd.DataFrame({"id": rows["id"].astype(str), "path": rows["path"].astype(str),
                         "male": rows["male"].astype(float), "sex_source": "labels",
                         "reference": rows["boneage"].astype(float)}).reset_index(drop=True)


def cv_plus_inputs(data: dict[str, Any], cohorts: list[str]) -> pd.DataFrame:
    """The input table of the folded images of a k-fold bundle's split (`data`: `Sources.data`), with each image's
    `fold`; only the sexes some regressor applies to (a bundle of male models calibrates on boys)."""
    folds = read_folds(data["split_file"])
    if folds is None:
        raise MedalError(f"{data['split_file']}: no fold column; export.conformal.source=cv_plus needs the K fold runs "
                         "of a k-fold cross-validation (medal boneage -m cv.folds=K 'cv.fold=range(K)')")
    index = read_index(data["root"], strict=False)
    rows = index[index["id"].isin(set(folds.index)) & index["boneage"].notna()]
    if "all" not in cohorts:
        rows = rows[rows["male"].astype(bool).isin({c == "male" for c in cohorts})]
    return pd.DataFrame({"id": rows["id"].astype(str), "path": rows["path"].astype(str),
                         "male": rows["male"].astype(float), "sex_source": "labels",
                         "reference": rows["boneage"].astype(float),
                         "fold": folds.loc[rows["id"].astype(str)].to_numpy()}).reset_index(drop=True)


def refuse_in_fold(inputs: pd.DataFrame, regressors: list[tuple[str | Path, int]]) -> None:
    """Refuse, in one line, an out-of-fold case that its fold's model (`(split file, fold)` per regressor) did not
    hold out: its split must give every image of its fold the role `oof`."""
    for path, fold in regressors:
        split = read_split(path)
        mine = inputs.loc[inputs["fold"] == fold, "id"]
        seen = sorted(i for i in mine if split.get(i) != "oof")
        if seen:
            raise MedalError(f"{path}: {len(seen)} images of fold {fold} are not held out by this fold's model (e.g. "
                             f"{seen[0]}, role {split.get(seen[0])}); its out-of-fold residuals would be optimistic: "
                             "export the fold runs of one cross-validation (the same data.split and cv.seed)")


def refuse_seen(ids: set[str], split_files: list[str | Path]) -> None:
    """Refuse, in one line, calibration images that a model trained on or was selected with (role `train` or `val`
    in any of the models' splits)."""
    for path in split_files:
        split = read_split(path)
        seen = sorted(ids & set(split.index[split.isin(("train", "val"))]))
        if seen:
            role = split[seen[0]]
            raise MedalError(f"{path}: {len(seen)} calibration images were {'trained on' if role == 'train' else 'used to select the checkpoint'} "
                             f"by this model (e.g. {seen[0]}, role {role}); its residuals would be optimistic: export "
                             "models that share one split (the same data.split)")


def band_edges_of(data: dict[str, Any], bands: int) -> list[float]:
    """Age band edges (months) for `mondrian_age`: quantiles of the training labels of the bundle's split (known
    before any calibration image is seen)."""
    split = read_split(data["split_file"])
    index = read_index(data["root"], strict=False)
    ages = index.loc[index["id"].isin(set(split.index[split == "train"])), "boneage"].dropna()
    return conformal.band_edges(ages.to_numpy(dtype=float), bands)


def difficulty_of(runs: list[Path]) -> dict[str, list[float]]:
    """sigma of normalised conformal from the regressors' validation predictions (`<run>/predictions.csv`, rows of
    split `val`), all regressors pooled: the shape of the error over the estimate, fixed before calibration.

    k-fold runs trained without selection (`cv.inner_val=0`) have no validation rows; their out-of-fold rows (split
    `oof`) give the curve then. Under CV+ those images are also the cases the scores rank, so the curve is not
    independent of them; it has a few bins of many images each, so one case barely moves it (docs/experiments.md).
    """
    from medal.boneage.experiment import PREDICTIONS_FILE

    frames = []
    for run in runs:
        path = Path(run) / PREDICTIONS_FILE
        if not path.is_file():
            raise MedalError(f"{path}: missing; a finished `medal boneage` run writes its val and test predictions there")
        frames.append(pd.read_csv(path))
    rows = pd.concat(frames, ignore_index=True)
    val = rows[rows["split"] == "val"]
    if val.empty:
        val = rows[rows["split"] == "oof"]
    return conformal.difficulty_curve(val["predicted"].to_numpy(float), val["true"].to_numpy(float))


#: what calibration reads of each measured image's sample (the rest is pixels)
KEPT = ("id", "status", "male", "reference")


def slim(m: Measured) -> Measured:
    """`m` without its pixels: the sample's decoded radiograph, working image and network inputs, the thumbnail
    and overlay are dropped, the estimates, measures and pooled features (D floats per regressor, which
    `medal recalibrate` scores for the OOD threshold) kept, so the pass holds one batch of images, not the split
    (a decoded 1,300-px radiograph alone is ~6 MB as float32; an image's residuals are a few numbers)."""
    return Measured({k: m.sample[k] for k in KEPT}, predictions=m.predictions, mask_fraction=m.mask_fraction,
                    agreement=m.agreement, features=m.features)


def measure(bundle: Bundle, inputs: pd.DataFrame, device: str, batch_size: int,
            num_workers: int) -> tuple[list[Measured], dict[str, str]]:
    """The chain run over labelled `inputs`: (the images it estimated with a known sex, {id: why not} for the rest)."""
    options = ChainOptions(tta="none", sex="unknown", coverage=0.9, bf16="as_trained", cam=False)
    module = ChainModule(bundle, options, calibrating=True).to(torch.device(device)).eval()
    module.prepare()
    loader = DataLoader(InputImages(inputs, bundle.chain, "unknown"), batch_size=batch_size,
                        num_workers=num_workers, collate_fn=collate)
    measured = [slim(m) for batch in tqdm(loader, desc="calibrating", unit="batch") for m in module.measure(batch)]
    live = [m for m in measured if m.sample["status"] == "ok" and np.isfinite(m.sample["male"])]
    kept = {id(m) for m in live}  # by identity: a Measured holds arrays, which `==` cannot compare
    skipped = {m.sample["id"]: m.sample["status"] if m.sample["status"] != "ok" else "no_sex" for m in measured
               if id(m) not in kept}
    if skipped:
        log.warning("calibration: %d image(s) gave no estimate (%s); left out", len(skipped),
                    ", ".join(f"{i}: {s}" for i, s in list(skipped.items())[:3]))
    if not live:
        raise MedalError("calibration: no image gave an estimate; the chain cannot be calibrated")
    return live, skipped


def calibrate(bundle: Bundle, inputs: pd.DataFrame, device: str, batch_size: int, num_workers: int,
              settings: dict[str, Any], source: dict[str, Any], folds: list[int] | None = None) -> dict[str, Any]:
    """The calibration table (module docstring) of `bundle`'s chain run over `inputs` (labelled: `reference`).

    With `folds` (the fold each regressor was trained without; `inputs` then has each image's `fold`) every image
    is estimated by its own fold's models: the out-of-fold table of CV+.
    """
    live, skipped = measure(bundle, inputs, device, batch_size, num_workers)
    return table_of(bundle, live, skipped, settings, source, inputs, folds)


def table_of(bundle: Bundle, live: list[Measured], skipped: dict[str, str], settings: dict[str, Any],
             source: dict[str, Any], inputs: pd.DataFrame, folds: list[int] | None = None) -> dict[str, Any]:
    """The calibration table of the images `measure` estimated (`live`; `skipped`: why the others gave none), so
    a caller that needs more of the same pass (`medal recalibrate`: the OOD scores) runs the chain once."""
    cohorts = [r.cohort for r in bundle.chain.regressors]
    male = np.array([m.sample["male"] for m in live], dtype=np.float64)
    truth = np.array([m.sample["reference"] for m in live], dtype=np.float64)
    ids = [str(m.sample["id"]) for m in live]
    case_folds = None if folds is None else dict(zip(inputs["id"].astype(str), inputs["fold"], strict=True))
    case_fold = None if case_folds is None else np.array([int(case_folds[i]) for i in ids])

    def combine(preds: dict[bool, np.ndarray], sexes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        if case_fold is None:
            return ensemble.combine(preds, cohorts, sexes)
        return cv_plus.out_of_fold(preds, cohorts, sexes, folds, case_fold)

    known, unknown, spread, mae = {}, {}, {}, {}
    for mode in TTA:
        preds = {s: np.stack([m.predictions[mode][s] for m in live], axis=1) for s in (True, False)}
        estimate, spread_mode = combine(preds, male)
        known[mode], spread[mode] = _floats(estimate), _floats(spread_mode)
        mae[mode] = float(np.nanmean(np.abs(estimate - truth)))
        if bundle.chain.needs_sex:
            unknown[mode] = _floats(combine(preds, np.full_like(male, np.nan))[0])
    cases = {"id": ids, "male": male.tolist(), "reference": truth.tolist(),
             "known": known, "unknown": unknown or None, "spread": spread}
    measures = {"mask_fraction": [m.mask_fraction for m in live], "agreement": [m.agreement for m in live]}
    table = {"schema": conformal.SCHEMA, "source": source, "settings": settings, "images": len(live),
             "skipped": skipped, "cases": cases, "mae": mae,
             "qc": {name: [v if np.isfinite(v) else None for v in qc.fences(values)]
                    for name, values in measures.items()}}
    if case_fold is not None:
        table |= {"schema": conformal.CV_PLUS_SCHEMA, "regressor_folds": [int(f) for f in folds]}
        cases["fold"] = case_fold.tolist()
    for mode in TTA:  # every method builds, and its fallbacks are said once, here
        for method in conformal.METHODS:
            notes = conformal.interval_table(table, mode, method).survey()
            if method == settings["method"] and mode == "none":
                for note in notes:
                    log.info("calibration (%s): %s", method, note)
    return table


#: The coverages at which export checks a CV+ table on the calibration split.
CHECK_COVERAGES = (0.8, 0.9, 0.95)


def cv_plus_check(bundle: Bundle, table: dict[str, Any], inputs: pd.DataFrame, device: str, batch_size: int,
                  num_workers: int) -> dict[str, Any]:
    """How the CV+ intervals of `table` (the bundle's method, each TTA mode) cover the images of `inputs` (the
    calibration split, which no fold model saw): the share inside and the median width at `CHECK_COVERAGES`."""
    live, _ = measure(bundle, inputs, device, batch_size, num_workers)
    cohorts = [r.cohort for r in bundle.chain.regressors]
    folds = [int(f) for f in table["regressor_folds"]]
    truth = np.array([m.sample["reference"] for m in live], dtype=np.float64)
    check: dict[str, Any] = {"role": "calibration", "images": len(live), "method": table["settings"]["method"],
                             "coverage": {}, "width": {}}
    for mode in TTA:
        intervals = conformal.interval_table(table, mode)
        inside, width = {c: [] for c in CHECK_COVERAGES}, {c: [] for c in CHECK_COVERAGES}
        for m, reference in zip(live, truth, strict=True):
            male = float(m.sample["male"])
            preds = {s: m.predictions[mode][s][:, None] for s in (True, False)}
            estimate = float(ensemble.combine(preds, cohorts, np.array([male]))[0][0])
            if not np.isfinite(estimate):
                continue
            per_fold = cv_plus.fold_estimates(m.predictions[mode], cohorts, folds, male)
            for coverage in CHECK_COVERAGES:
                low, high, _ = intervals.bounds(estimate, "male" if male >= 0.5 else "female", coverage, per_fold)
                inside[coverage].append(low <= reference <= high)
                width[coverage].append(high - low)
        check["coverage"][mode] = {str(c): float(np.mean(v)) if v else None for c, v in inside.items()}
        check["width"][mode] = {str(c): float(np.median(v)) if v else None for c, v in width.items()}
    log.info("CV+ intervals on %d calibration images no fold model saw: coverage %s at nominal %s (no TTA)",
             len(live), ", ".join(f"{v:.1%}" for v in check["coverage"]["none"].values() if v is not None),
             ", ".join(f"{c:.0%}" for c in CHECK_COVERAGES))
    return check


def _floats(values: np.ndarray) -> list[float | None]:
    return [float(v) if np.isfinite(v) else None for v in values]
