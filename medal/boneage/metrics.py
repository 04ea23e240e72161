"""Bone age metrics in months, per cohort: MAE, RMSE, bias, share within 12 months, bootstrap CI of MAE.

Names follow the run contract `split/metric[_cohort]`: `test/mae`, `test/mae_male`, `test/within12_female`.
"""

from __future__ import annotations

import numpy as np
import torch
from torchmetrics import MeanAbsoluteError, MeanSquaredError, Metric, MetricCollection

COHORTS: tuple[tuple[str, str], ...] = (("all", ""), ("male", "_male"), ("female", "_female"))


class MeanSignedError(Metric):
    """Bias: mean of (predicted - true); positive means the model overestimates bone age.

    Examples:
        >>> bias = MeanSignedError()
        >>> bias.update(torch.tensor([130.0, 100.0]), torch.tensor([120.0, 104.0]))
        >>> bias.compute()
        tensor(3.)
    """

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
    """Share of predictions within `tolerance` months of the truth (clinically: within one year).

    Examples:
        >>> within = WithinTolerance(12.0)
        >>> within.update(torch.tensor([130.0, 100.0, 60.0]), torch.tensor([120.0, 112.0, 90.0]))
        >>> round(float(within.compute()), 4)
        0.6667
    """

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
    """Percentile bootstrap CI of the MAE (images resampled with replacement); NaNs for no images.

    Args:
        preds, target: months, shape (N,).

    Examples:
        >>> low, high = bootstrap_mae_ci(np.array([10.0, 20.0, 30.0, 40.0]), np.array([12.0, 15.0, 30.0, 49.0]))
        >>> bool(low <= 4.0 <= high)  # the MAE (2 + 5 + 0 + 9) / 4 lies inside
        True
        >>> bootstrap_mae_ci(np.array([]), np.array([]))
        (nan, nan)
    """
    errors = np.abs(np.asarray(preds, np.float64) - np.asarray(target, np.float64))
    if errors.size == 0:
        return float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    means = errors[rng.integers(0, errors.size, size=(n_resamples, errors.size))].mean(axis=1)
    alpha = (1.0 - level) / 2.0
    return float(np.quantile(means, alpha)), float(np.quantile(means, 1.0 - alpha))


def cohort_metrics(preds: np.ndarray, target: np.ndarray, male: np.ndarray, split: str,
                   n_resamples: int = 1000, seed: int = 0) -> dict[str, float]:
    """Every metric for all / male / female (cohorts with no images are left out) + the CI of overall MAE.

    Args:
        preds, target: months, shape (N,); male: bool (N,); split: the name prefix (`test`, `val`).

    Examples:
        >>> m = cohort_metrics(np.array([100.0, 130.0, 90.0]), np.array([110.0, 120.0, 90.0]),
        ...                    np.array([True, True, False]), "test", n_resamples=50)
        >>> m["test/mae"], m["test/mae_male"], m["test/mae_female"], m["test/n_male"]
        (6.666666507720947, 10.0, 0.0, 2.0)
        >>> m["test/bias_male"], m["test/within12"]
        (0.0, 1.0)
    """
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
