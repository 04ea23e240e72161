"""The calibration table of a bundle (`calibration.json`): its chain run over labelled images no model saw.

Which images: at export the `calibration` role of the regressors' split (`calibration_inputs`: carved before
training, so neither training, checkpoint selection, early stopping nor Optuna saw them; `refuse_seen` checks
every regressor's split), or a hospital's own labelled cases (`medal recalibrate`). For each image the chain's
estimate (without and with test-time mirroring; with the true sex and, when the bundle needs the sex, also as
`predict.sex=unknown` would give it) is kept beside the label, so `medal predict` can compute the interval of any
method (`medal.predict.conformal.METHODS`) at any coverage. The same pass gives the quality fences
(`medal.predict.qc`) of the mask share and the committee's agreement.

Layout (`SCHEMA` 2; open to other sources of residuals, e.g. out-of-fold predictions of k-fold runs):

    schema, source          where the images came from (kind `split`: the split file and role; kind `cases`: the
                            hospital's file, its sha256, count, date, medal version)
    settings                method (the bundle's default), min_cohort, min_band, edges (age bands, months) and
                            difficulty (sigma of normalised conformal), each with where it came from
    cases                   id, male, reference, known[tta], unknown[tta] (or null), spread[tta]: one per image
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
from medal.data.split import read_split
from medal.errors import MedalError
from medal.predict import conformal, ensemble, qc
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
    split `val`), all regressors pooled: the shape of the error over the estimate, fixed before calibration."""
    from medal.boneage.experiment import PREDICTIONS_FILE

    frames = []
    for run in runs:
        path = Path(run) / PREDICTIONS_FILE
        if not path.is_file():
            raise MedalError(f"{path}: missing; a finished `medal boneage` run writes its val and test predictions there")
        table = pd.read_csv(path)
        frames.append(table[table["split"] == "val"])
    val = pd.concat(frames, ignore_index=True)
    return conformal.difficulty_curve(val["predicted"].to_numpy(float), val["true"].to_numpy(float))


#: what calibration reads of each measured image's sample (the rest is pixels)
KEPT = ("id", "status", "male", "reference")


def slim(m: Measured) -> Measured:
    """`m` without its pixels: the sample's decoded radiograph, working image and network inputs, the thumbnail
    and overlay are dropped, the estimates and measures kept, so the pass holds one batch of images, not the
    split (a decoded 1,300-px radiograph alone is ~6 MB as float32; an image's residuals are a few numbers)."""
    return Measured({k: m.sample[k] for k in KEPT}, predictions=m.predictions, mask_fraction=m.mask_fraction,
                    agreement=m.agreement)


def calibrate(bundle: Bundle, inputs: pd.DataFrame, device: str, batch_size: int, num_workers: int,
              settings: dict[str, Any], source: dict[str, Any]) -> dict[str, Any]:
    """The calibration table (module docstring) of `bundle`'s chain run over `inputs` (labelled: `reference`)."""
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
    cohorts = [r.cohort for r in bundle.chain.regressors]
    male = np.array([m.sample["male"] for m in live], dtype=np.float64)
    truth = np.array([m.sample["reference"] for m in live], dtype=np.float64)
    known, unknown, spread, mae = {}, {}, {}, {}
    for mode in TTA:
        preds = {s: np.stack([m.predictions[mode][s] for m in live], axis=1) for s in (True, False)}
        estimate, spread_mode = ensemble.combine(preds, cohorts, male)
        known[mode], spread[mode] = _floats(estimate), _floats(spread_mode)
        mae[mode] = float(np.nanmean(np.abs(estimate - truth)))
        if bundle.chain.needs_sex:
            unknown[mode] = _floats(ensemble.combine(preds, cohorts, np.full_like(male, np.nan))[0])
    cases = {"id": [str(m.sample["id"]) for m in live], "male": male.tolist(), "reference": truth.tolist(),
             "known": known, "unknown": unknown or None, "spread": spread}
    measures = {"mask_fraction": [m.mask_fraction for m in live], "agreement": [m.agreement for m in live]}
    table = {"schema": conformal.SCHEMA, "source": source, "settings": settings, "images": len(live),
             "skipped": skipped, "cases": cases, "mae": mae,
             "qc": {name: [v if np.isfinite(v) else None for v in qc.fences(values)]
                    for name, values in measures.items()}}
    for mode in TTA:  # every method builds, and its fallbacks are said once, here
        for method in conformal.METHODS:
            notes = conformal.interval_table(table, mode, method).survey()
            if method == settings["method"] and mode == "none":
                for note in notes:
                    log.info("calibration (%s): %s", method, note)
    return table


def _floats(values: np.ndarray) -> list[float | None]:
    return [float(v) if np.isfinite(v) else None for v in values]
