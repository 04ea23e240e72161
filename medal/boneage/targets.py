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
    """`scaled = (months - shift) / scale`; zscore uses the training cohort, `divide` the reference's /240."""

    shift: float = 0.0
    scale: float = 240.0

    @classmethod
    def fit(cls, kind: str, train_months: Sequence[float] | np.ndarray, divisor: float = 240.0) -> TargetScaler:
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
