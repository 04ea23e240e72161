"""Inference of a bone age model over a data loader, and the reference figure of a train-mean predictor."""

from __future__ import annotations

import contextlib
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn
from torch.utils.data import DataLoader
from tqdm.auto import tqdm


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
    return pd.DataFrame(rows, columns=["id", "sex", "true", "predicted", "split"])


def mean_predictor_mae(train_months: np.ndarray, frame: pd.DataFrame, split: str) -> dict[str, float]:
    """MAE of always predicting the training cohort's mean bone age: the floor any model must beat.

    Examples:
        >>> frame = pd.DataFrame({"true": [100.0, 140.0], "sex": ["M", "F"]})
        >>> mean_predictor_mae(np.array([110.0, 130.0]), frame, "test")
        {'test/mae_mean_predictor': 20.0, 'test/mae_mean_predictor_male': 20.0, 'test/mae_mean_predictor_female': 20.0}
    """
    mean = float(np.nanmean(np.asarray(train_months, dtype=np.float64)))
    out = {}
    for suffix, rows in (("", frame), ("_male", frame[frame["sex"] == "M"]), ("_female", frame[frame["sex"] == "F"])):
        if len(rows):
            out[f"{split}/mae_mean_predictor{suffix}"] = float(np.abs(rows["true"].to_numpy() - mean).mean())
    return out
