"""Target scaling: the network learns a scaled bone age; predictions and metrics are always in months."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from medal.errors import MedalError

SCALINGS = ("zscore", "divide")


@dataclass(frozen=True)
class TargetScaler:
    """`scaled = (months - shift) / scale`; zscore uses the training cohort, `divide` the reference's /240.

    Examples:
        >>> scaler = TargetScaler.fit("zscore", [60.0, 120.0, 180.0], divisor=240.0)
        >>> round(scaler.shift, 3), round(scaler.scale, 3)
        (120.0, 48.99)
        >>> scaler.to_months(scaler.scale_targets(torch.tensor([90.0])))
        tensor([90.])
        >>> TargetScaler.fit("divide", [60.0, 120.0], divisor=240.0)
        TargetScaler(shift=0.0, scale=240.0)
    """

    shift: float
    scale: float

    @classmethod
    def fit(cls, kind: str, train_months: Sequence[float] | np.ndarray, divisor: float) -> TargetScaler:
        """`target.scaling` (`zscore` or `divide`) fitted on the training cohort's ages in months."""
        if kind == "divide":
            return cls(0.0, float(divisor))
        if kind != "zscore":
            raise MedalError(f"target.scaling={kind!r}: choose one of {', '.join(SCALINGS)}")
        months = np.asarray(train_months, dtype=np.float64)
        months = months[np.isfinite(months)]
        if months.size < 2:
            raise MedalError("target.scaling=zscore needs at least two labelled training images")
        return cls(float(months.mean()), float(months.std()) or 1.0)

    def scale_targets(self, months: torch.Tensor) -> torch.Tensor:
        return (months - self.shift) / self.scale

    def to_months(self, scaled: torch.Tensor) -> torch.Tensor:
        return scaled * self.scale + self.shift
