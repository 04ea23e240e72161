"""The calibration table of a bundle: its chain run over the validation split its regressors never trained on.

For every validation image the chain's estimate (without and with test-time mirroring; with the true sex,
and, when the bundle needs the sex, also as `predict.sex=unknown` would give it) is compared with the label;
the absolute residuals per group (`all`, `male`, `female`, `unknown`) are kept, so `medal predict` can
compute the split-conformal interval at any coverage (`medal.predict.conformal`). The same pass gives the
quality fences (`medal.predict.qc`) of the mask share and the committee's agreement.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from medal.bundle.load import Bundle
from medal.data.rsna import read_index
from medal.errors import MedalError
from medal.predict import ensemble, qc
from medal.predict.chain import TTA, ChainModule, ChainOptions, InputImages, collate

log = logging.getLogger("medal.predict")


def validation_inputs(data: dict[str, Any]) -> pd.DataFrame:
    """The input table (`medal.predict.inputs.COLUMNS`) of the validation images of the bundle's split."""
    split = pd.read_csv(data["split_file"], dtype={"id": str, "role": str})
    val_ids = set(split.loc[split["role"] == "val", "id"])
    index = read_index(data["root"], strict=False)
    rows = index[index["id"].isin(val_ids) & index["boneage"].notna()]
    if rows.empty:
        raise MedalError(f"{data['split_file']}: no labelled validation images found under {data['root']}; the "
                         "intervals are calibrated on them")
    return pd.DataFrame({"id": rows["id"].astype(str), "path": rows["path"].astype(str),
                         "male": rows["male"].astype(float), "sex_source": "labels",
                         "reference": rows["boneage"].astype(float)}).reset_index(drop=True)


def calibrate(bundle: Bundle, inputs: pd.DataFrame, device: str, batch_size: int, num_workers: int,
              min_cohort: int) -> dict[str, Any]:
    """Residuals per TTA mode and group, and the quality fences, from the chain run over `inputs`."""
    options = ChainOptions(tta="none", sex="unknown", coverage=0.9, bf16="as_trained", cam=False)
    module = ChainModule(bundle, options, calibrating=True).to(torch.device(device)).eval()
    module.prepare()
    loader = DataLoader(InputImages(inputs, bundle.chain, "unknown"), batch_size=batch_size,
                        num_workers=num_workers, collate_fn=collate)
    measured = [m for batch in tqdm(loader, desc="calibrating", unit="batch") for m in module.measure(batch)]
    live = [m for m in measured if m.sample["status"] == "ok"]
    skipped = {m.sample["id"]: m.sample["status"] for m in measured if m.sample["status"] != "ok"}
    if skipped:
        log.warning("calibration: %d validation image(s) gave no estimate (%s); left out", len(skipped),
                    ", ".join(f"{i}: {s}" for i, s in list(skipped.items())[:3]))
    if not live:
        raise MedalError("calibration: no validation image gave an estimate; the chain cannot be calibrated")
    cohorts = [r.cohort for r in bundle.chain.regressors]
    male = np.array([m.sample["male"] for m in live], dtype=np.float64)
    truth = np.array([m.sample["reference"] for m in live], dtype=np.float64)
    residuals: dict[str, dict[str, list[float]]] = {}
    for mode in TTA:
        preds = {s: np.stack([m.predictions[mode][s] for m in live], axis=1) for s in (True, False)}
        known, _ = ensemble.combine(preds, cohorts, male)
        error = np.abs(known - truth)
        groups = {"all": error, "male": error[male >= 0.5], "female": error[male < 0.5]}
        if bundle.chain.needs_sex:
            averaged, _ = ensemble.combine(preds, cohorts, np.full_like(male, np.nan))
            groups["unknown"] = np.abs(averaged - truth)
        residuals[mode] = {g: sorted(float(v) for v in values if np.isfinite(v)) for g, values in groups.items()}
    measures = {"mask_fraction": [m.mask_fraction for m in live], "agreement": [m.agreement for m in live]}
    return {"split": "val", "images": len(live), "skipped": skipped, "min_cohort": int(min_cohort),
            "residuals": residuals, "qc": {name: [v if np.isfinite(v) else None for v in qc.fences(values)]
                   for name, values in measures.items()},
            "mae": {mode: float(np.mean(residuals[mode]["all"])) for mode in TTA}}
