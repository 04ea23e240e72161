"""Bone age metrics in months, per cohort: MAE, RMSE, bias, share within 12 months, bootstrap CI of MAE.

Names follow the run contract `split/metric[_cohort]`: `test/mae`, `test/mae_male`, `test/within12_female`.
"""

from __future__ import annotations

import numpy as np
import torch
from torchmetrics import MeanAbsoluteError, MeanSquaredError, Metric, MetricCollection

COHORTS: tuple[tuple[str, str], ...] = (("all", ""), ("male", "_male"), ("female", "_female"))


class MeanSignedError(Metric):
    """Bias: mean of (predicted - true); positive means the model overestimates bone age."""

    full_state_update = False

    def __init__(self) -> None:
        super().__init__()
        self.add_state("total", default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("count", default=torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, preds: torch.Tensor, target: torch.Tensor) -> None:
        self.total += (preds.double() - target.double()).sum()
        self.count += preds.numel()

    def compute(self) -> torch.Tensor:
        return (self.total / self.count).float()


class WithinTolerance(Metric):
    """Share of predictions within `tolerance` months of the truth (clinically: within one year)."""

    full_state_update = False

    def __init__(self, tolerance: float = 12.0) -> None:
        super().__init__()
        self.tolerance = float(tolerance)
        self.add_state("hits", default=torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")
        self.add_state("count", default=torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, preds: torch.Tensor, target: torch.Tensor) -> None:
        self.hits += ((preds.double() - target.double()).abs() <= self.tolerance).sum()
        self.count += preds.numel()

    def compute(self) -> torch.Tensor:
        return self.hits.float() / self.count


def boneage_metrics(prefix: str = "") -> MetricCollection:
    """The metric set, as a MetricCollection (DDP-synchronised when used inside a LightningModule)."""
    return MetricCollection({"mae": MeanAbsoluteError(), "rmse": MeanSquaredError(squared=False),
                             "bias": MeanSignedError(), "within12": WithinTolerance(12.0)}, prefix=prefix)


def bootstrap_mae_ci(preds: np.ndarray, target: np.ndarray, n_resamples: int = 1000, level: float = 0.95,
                     seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap CI of the MAE (images resampled with replacement)."""
    errors = np.abs(np.asarray(preds, np.float64) - np.asarray(target, np.float64))
    if errors.size == 0:
        return float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    means = errors[rng.integers(0, errors.size, size=(n_resamples, errors.size))].mean(axis=1)
    alpha = (1.0 - level) / 2.0
    return float(np.quantile(means, alpha)), float(np.quantile(means, 1.0 - alpha))


def cohort_metrics(preds: np.ndarray, target: np.ndarray, male: np.ndarray, split: str,
                   n_resamples: int = 1000, seed: int = 0) -> dict[str, float]:
    """Every metric for all / male / female (cohorts with no images are left out) + the CI of overall MAE."""
    preds, target = np.asarray(preds, np.float64), np.asarray(target, np.float64)
    male = np.asarray(male).astype(bool)
    out: dict[str, float] = {}
    for cohort, suffix in COHORTS:
        mask = np.ones_like(male) if cohort == "all" else (male if cohort == "male" else ~male)
        if not mask.any():
            continue
        collection = boneage_metrics()
        collection.update(torch.from_numpy(preds[mask]).float(), torch.from_numpy(target[mask]).float())
        for name, value in collection.compute().items():
            out[f"{split}/{name}{suffix}"] = float(value)
        out[f"{split}/n{suffix}"] = float(mask.sum())
    if preds.size:
        low, high = bootstrap_mae_ci(preds, target, n_resamples=n_resamples, seed=seed)
        out[f"{split}/mae_ci_low"], out[f"{split}/mae_ci_high"] = low, high
    return out
