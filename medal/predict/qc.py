"""Quality flags: is an image's mask plausible, judged against what the bundle saw on its calibration images?

Two measures of the segmentation: the mask's share of the radiograph (`mask_fraction`) and the committee's
agreement (mean pairwise Dice of the members' masks at working resolution; NaN for a single network). Each gets
Tukey's far-out fences from the calibration images, [Q1 - 3 IQR, Q3 + 3 IQR], wide enough that an image of
the training distribution is rarely flagged, narrow enough that an empty corner, a foot or a chest is.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np

FENCE_IQR = 3.0
MIN_IMAGES = 20  # fewer calibration images give quartiles too rough to flag anything by


def fences(values: Sequence[float] | np.ndarray, k: float = FENCE_IQR, min_images: int = MIN_IMAGES) -> tuple[float,
                                                                                                              float]:
    """Tukey fences (Q1 - k IQR, Q3 + k IQR) of the finite values; (-inf, inf) with fewer than `min_images`.

    Examples:
        >>> fences([1.0, 2.0, 3.0, 4.0, 5.0], min_images=5)
        (-4.0, 10.0)
        >>> fences([1.0, 2.0, 3.0])  # too few to judge by
        (-inf, inf)
    """
    x = np.asarray(values, dtype=np.float64)
    x = x[np.isfinite(x)]
    if x.size < min_images:
        return -math.inf, math.inf
    q1, q3 = np.percentile(x, [25, 75])
    return float(q1 - k * (q3 - q1)), float(q3 + k * (q3 - q1))


def flags(measures: Mapping[str, float], ranges: Mapping[str, Sequence[float]]) -> str:
    """`;`-joined names of the measures outside their range (`<name>_low` / `<name>_high`); '' when none.

    Examples:
        >>> flags({"mask_fraction": 0.01, "agreement": 0.97}, {"mask_fraction": (0.1, 0.5), "agreement": (0.9, 1.1)})
        'mask_fraction_low'
        >>> flags({"agreement": float("nan")}, {"agreement": (0.9, 1.0)})
        ''
    """
    out = []
    for name, value in measures.items():
        if name not in ranges or not math.isfinite(value):
            continue
        low, high = (-math.inf if v is None else v for v in ranges[name])  # None: no fence (JSON has no inf)
        if value < low:
            out.append(f"{name}_low")
        elif value > high:
            out.append(f"{name}_high")
    return ";".join(out)


def pairwise_dice(masks: np.ndarray) -> float:
    """Mean Dice over every pair of the members' binary masks (M, H, W): the committee's agreement on one image.

    NaN for a single mask (nothing to agree with); two empty masks agree perfectly.

    Examples:
        >>> a = np.zeros((4, 4), bool); a[:2] = True
        >>> b = np.zeros((4, 4), bool); b[:1] = True
        >>> round(pairwise_dice(np.stack([a, a, b])), 4)  # pairs: 1.0, 2/3, 2/3
        0.7778
        >>> pairwise_dice(a[None])
        nan
    """
    m = np.asarray(masks, dtype=bool).reshape(len(masks), -1)
    if len(m) < 2:
        return math.nan
    scores = []
    for i in range(len(m)):
        for j in range(i + 1, len(m)):
            total = int(m[i].sum() + m[j].sum())
            scores.append(1.0 if total == 0 else 2.0 * int((m[i] & m[j]).sum()) / total)
    return float(np.mean(scores))
