"""The one transform of a gold standard: a segmented RoI adjusted by a person's slider settings.

The paper's authors made the enhancer's gold standards by adjusting contrast, brightness and sharpness of segmented
hands by hand. `medal annotate annotate.mode=gold` shows sliders for exactly the parameters of `GoldSettings`; the
page's preview is rendered by `adjust` on the server, and the accepted gold standard is written from the same call,
so "saved gold == RoI transformed by the recorded sliders" holds by construction (the CSV of settings reproduces the
set: `reproduce`). Order: window (level/width) -> gamma -> optional CLAHE -> unsharp mask.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields

import numpy as np
from skimage.exposure import equalize_adapthist
from skimage.filters import unsharp_mask

from medal.errors import MedalError

#: The unsharp mask's Gaussian sigma in pixels of the RoI (its detail scale: phalanx edges, growth plates).
SHARP_SIGMA = 2.0
#: Each slider's range (min, max, step): the page builds its sliders from this, the server refuses values outside.
RANGES: dict[str, tuple[float, float, float]] = {
    "level": (0.0, 1.0, 0.005), "width": (0.05, 1.5, 0.005), "gamma": (0.3, 3.0, 0.01),
    "sharpness": (0.0, 3.0, 0.05), "clahe": (0.0, 0.05, 0.001),
}


@dataclass(frozen=True)
class GoldSettings:
    """Slider values: window `level` (centre) and `width` in the RoI's [0, 1] range, `gamma` (> 1 darkens the mid
    tones), unsharp-mask `sharpness` (amount; 0 = off) and CLAHE clip limit `clahe` (0 = off)."""

    level: float = 0.5
    width: float = 1.0
    gamma: float = 1.0
    sharpness: float = 0.0
    clahe: float = 0.0

    @classmethod
    def checked(cls, values: dict[str, object]) -> GoldSettings:
        """Settings from a page's or CSV row's values: every slider present, a number, inside `RANGES`."""
        names = [f.name for f in fields(cls)]
        unknown = sorted(set(values) - set(names))
        if unknown:
            raise MedalError(f"gold settings: unknown slider {unknown[0]!r}; the sliders are {', '.join(names)}")
        out: dict[str, float] = {}
        for name in names:
            if name not in values:
                raise MedalError(f"gold settings: slider {name!r} missing")
            try:
                value = float(values[name])  # type: ignore[arg-type]
            except (TypeError, ValueError):
                raise MedalError(f"gold settings: {name}={values[name]!r} is not a number") from None
            low, high, _ = RANGES[name]
            if not low <= value <= high:
                raise MedalError(f"gold settings: {name}={value} is outside [{low}, {high}]")
            out[name] = value
        return cls(**out)

    def as_dict(self) -> dict[str, float]:
        return asdict(self)


def adjust(roi: np.ndarray, settings: GoldSettings) -> np.ndarray:
    """The RoI (H, W) float in [0, 1] adjusted by `settings`: (H, W) float32 in [0, 1].

    Examples:
        >>> roi = np.linspace(0, 1, 16, dtype=np.float32).reshape(4, 4)
        >>> bool(np.allclose(adjust(roi, GoldSettings()), roi))  # the defaults leave the RoI as it is
        True
        >>> out = adjust(roi, GoldSettings(level=0.25, width=0.5))  # window [0, 0.5] stretched to [0, 1]
        >>> float(out[0, 0]), float(out[0, 2]), float(out[2, 0])
        (0.0, 0.2666666805744171, 1.0)
    """
    low = settings.level - settings.width / 2.0
    x = np.clip((np.asarray(roi, dtype=np.float64) - low) / settings.width, 0.0, 1.0)
    if settings.gamma != 1.0:
        x = x ** settings.gamma
    if settings.clahe > 0:
        x = equalize_adapthist(x, clip_limit=settings.clahe)
    if settings.sharpness > 0:
        x = unsharp_mask(x, radius=SHARP_SIGMA, amount=settings.sharpness)  # x + amount (x - blur), clipped to [0, 1]
    return x.astype(np.float32)


def suggest(roi: np.ndarray) -> GoldSettings:
    """A starting point: the window spans the hand's 1st to 99th percentile (the black border outside the hand
    mask ignored), a little sharpening, no gamma or CLAHE.

    Examples:
        >>> roi = np.zeros((10, 10), np.float32); roi[2:8, 2:8] = np.linspace(0.2, 0.6, 36).reshape(6, 6)
        >>> s = suggest(roi)
        >>> round(s.level, 3), round(s.width, 3), s.sharpness
        (0.4, 0.392, 0.5)
    """
    hand = roi[roi > 0]
    if hand.size == 0:
        return GoldSettings()
    lo, hi = np.percentile(hand, [1, 99])
    level_range, width_range = RANGES["level"], RANGES["width"]
    width = float(np.clip(hi - lo, width_range[0], width_range[1]))
    level = float(np.clip((lo + hi) / 2.0, level_range[0], level_range[1]))
    return GoldSettings(level=round(level, 3), width=round(width, 3), sharpness=0.5)
