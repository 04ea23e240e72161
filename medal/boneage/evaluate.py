"""Inference of a bone age model over a data loader, and the two reference figures every MAE sits between:
the train-mean predictor (what a model must beat) and, on phantoms, the noise floor (what no model can beat)."""

from __future__ import annotations

import contextlib
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from medal.boneage.predictions import COHORT_ROWS, COLUMNS
from medal.errors import MedalError


def autocast_for(device: torch.device, bf16: bool) -> contextlib.AbstractContextManager:
    """bf16 autocast on CPUs and GPUs that support it; a no-op otherwise."""
    if not bf16:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16)


def predict_frame(module: nn.Module, loader: DataLoader, split: str, bf16: bool = True,
                  progress: bool = True) -> pd.DataFrame:
    """`id, sex, true, predicted, split` for every image of `loader` (module returns months).

    The module's train/eval mode is restored afterwards.
    """
    device = next(module.parameters()).device
    was_training = module.training
    module.eval()
    rows: list[dict[str, Any]] = []
    try:
        with torch.inference_mode(), autocast_for(device, bf16):
            for batch in tqdm(loader, desc=f"predict {split}", disable=not progress, leave=False):
                months = module(batch["image"].to(device), batch["male"].to(device)).float().cpu().numpy()
                for i, male, true, pred in zip(batch["id"], batch["male"].tolist(), batch["boneage"].tolist(),
                                               months.tolist(), strict=True):
                    rows.append({"id": str(i), "sex": "M" if male >= 0.5 else "F", "true": float(true),
                                 "predicted": float(pred), "split": split})
    finally:
        module.train(was_training)
    return pd.DataFrame(rows, columns=COLUMNS)


def mean_predictor_mae(train_months: np.ndarray, frame: pd.DataFrame, split: str) -> dict[str, float]:
    """MAE of always predicting the training cohort's mean bone age: the floor any model must beat.

    Examples:
        >>> frame = pd.DataFrame({"true": [100.0, 140.0], "sex": ["M", "F"]})
        >>> mean_predictor_mae(np.array([110.0, 130.0]), frame, "test")
        {'test/mae_mean_predictor': 20.0, 'test/mae_mean_predictor_male': 20.0, 'test/mae_mean_predictor_female': 20.0}
    """
    mean = float(np.nanmean(np.asarray(train_months, dtype=np.float64)))
    out = {}
    for suffix, sex in COHORT_ROWS:
        rows = frame if sex is None else frame[frame["sex"] == sex]
        if len(rows):
            out[f"{split}/mae_mean_predictor{suffix}"] = float(np.abs(rows["true"].to_numpy() - mean).mean())
    return out


def floor_mae(floor: pd.Series, frame: pd.DataFrame, split: str) -> dict[str, float]:
    """MAE of the phantom set's floor predictor on the images of `frame`, by sex: `<split>/mae_floor[_sex]`.

    `floor` holds each image's prediction of the best reader of its anatomy (`phantoms.csv`'s
    `floor_prediction`, indexed by id; `medal.data.phantom.floor`). An image it lacks means the sidecar
    belongs to another data set, which is an error, not a smaller floor.

    Examples:
        >>> frame = pd.DataFrame({"id": ["a", "b", "c"], "true": [100.0, 140.0, 60.0], "sex": ["M", "F", "F"]})
        >>> floor_mae(pd.Series({"a": 103.0, "b": 139.0, "c": 60.0}), frame, "test")
        {'test/mae_floor': 1.3333333333333333, 'test/mae_floor_male': 3.0, 'test/mae_floor_female': 0.5}
    """
    missing = frame.loc[~frame["id"].isin(floor.index), "id"]
    if len(missing):
        raise MedalError(f"phantoms.csv has no floor prediction for image {missing.iloc[0]} ({len(missing)} "
                         "missing): the sidecar is not this data set's; regenerate it with `medal phantoms`")
    out = {}
    for suffix, sex in COHORT_ROWS:
        rows = frame if sex is None else frame[frame["sex"] == sex]
        if len(rows):
            errors = np.abs(floor.loc[rows["id"]].to_numpy(np.float64) - rows["true"].to_numpy(np.float64))
            out[f"{split}/mae_floor{suffix}"] = float(errors.mean())
    return out
