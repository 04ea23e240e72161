"""The ages a bundle may report: its training labels' range plus a margin, and intervals cut to it.

A regressor extrapolates linearly past the ages it saw: a colour test pattern got -256 months, a CT slice +624,
an adult hand with fused growth plates gets more than the oldest child it learnt from. None of those is a bone
age, so an estimate outside [labels' minimum - margin, labels' maximum + margin] (never below 0) is not `ok`:
it gets status `out_of_range` and a reason, and no estimate. Inside it, the conformal interval
[estimate - radius, estimate + radius] is cut at both ends to the range, so `low <= estimate <= high` always
holds and no interval reaches an age the bundle cannot report. An infinite radius (too few calibration images)
becomes the whole range.

`medal export` records the range in the bundle (`gate.json`, `medal.predict.ood.write_gate`). A bundle exported
before that has none; it gets `DEFAULT`, 0 to 240 months: the Greulich-Pyle atlas's standards end at 19 years
(228 months), plus the same 12-month margin.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import pandas as pd

from medal.data.rsna import read_index
from medal.errors import MedalError


@dataclass(frozen=True)
class ValidRange:
    """[low, high] months; `labels` the training labels' (min, max) it came from, `margin` the months added."""

    low: float
    high: float
    labels: tuple[float, float] | None
    margin: float
    source: str  # "training labels" or "default (bundle without a recorded range)"

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ValidRange:
        labels = data["labels"]
        return cls(float(data["low"]), float(data["high"]), None if labels is None else (labels[0], labels[1]),
                   float(data["margin"]), str(data["source"]))


DEFAULT = ValidRange(0.0, 240.0, None, 12.0, "default (bundle without a recorded range)")


def from_labels(labels: pd.Series | list[float], margin: float) -> ValidRange:
    """The range of the training labels widened by `margin` months (never below 0).

    Examples:
        >>> from_labels([1.0, 120.0, 228.0], 12.0)
        ValidRange(low=0.0, high=240.0, labels=(1.0, 228.0), margin=12.0, source='training labels')
    """
    values = pd.Series(labels, dtype=float).dropna()
    if values.empty:
        raise MedalError("the valid age range needs training labels; none found")
    if margin < 0:
        raise MedalError(f"export.gate.range_margin={margin}: must be >= 0 months")
    lo, hi = float(values.min()), float(values.max())
    return ValidRange(max(0.0, lo - margin), hi + margin, (lo, hi), float(margin), "training labels")


def training_labels(data: dict[str, Any]) -> pd.Series:
    """Bone ages (months) of the images the bundle's split gave the `train` role."""
    split = pd.read_csv(data["split_file"], dtype={"id": str, "role": str})
    train_ids = set(split.loc[split["role"] == "train", "id"])
    index = read_index(data["root"], strict=False)
    return index.loc[index["id"].isin(train_ids), "boneage"].astype(float)


def cut(estimate: float, radius: float, valid: ValidRange) -> tuple[str, str, float, float]:
    """`cut_bounds` of the interval estimate -+ radius."""
    return cut_bounds(estimate, estimate - radius, estimate + radius, valid)


def cut_bounds(estimate: float, low: float, high: float, valid: ValidRange) -> tuple[str, str, float, float]:
    """(status, reason, low, high) of an estimate with its conformal interval [low, high] (estimate -+ radius, or
    CV+'s, which need not be centred): `ok` with the interval cut to the range, or `out_of_range` (NaN interval)
    when the estimate itself lies outside it.

    Examples:
        >>> rng = ValidRange(0.0, 240.0, (1.0, 228.0), 12.0, "training labels")
        >>> cut(100.0, 15.0, rng)[0::2] + (cut(100.0, 15.0, rng)[3],)
        ('ok', 85.0, 115.0)
        >>> cut(5.0, 15.0, rng)[2:], cut(235.0, 15.0, rng)[2:]  # cut at the range, still around the estimate
        ((0.0, 20.0), (220.0, 240.0))
        >>> cut(-256.0, 15.0, rng)[:2]
        ('out_of_range', 'the estimate -256.0 months lies below the valid range 0.0-240.0 months (training labels 1.0-228.0 + 12.0)')
        >>> cut(100.0, float("inf"), rng)[2:]
        (0.0, 240.0)
    """
    if not math.isfinite(estimate) or not valid.low <= estimate <= valid.high:
        side = "below" if estimate < valid.low else "above"
        origin = (f"training labels {valid.labels[0]:.1f}-{valid.labels[1]:.1f} + {valid.margin:.1f}"
                  if valid.labels is not None else valid.source)
        reason = (f"the estimate {estimate:.1f} months lies {side} the valid range {valid.low:.1f}-{valid.high:.1f} "
                  f"months ({origin})")
        return "out_of_range", reason, math.nan, math.nan
    return "ok", "", max(valid.low, low), min(valid.high, high)
