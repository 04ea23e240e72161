"""Split-conformal intervals for bone age estimates (absolute residuals on a held-out calibration split).

For n calibration images with absolute residuals r_1..r_n (|estimate - truth|, computed by the very chain
that predicts), the interval of a new estimate y is [y - q, y + q] with q the k-th smallest residual,
k = ceil((n + 1) * coverage). If the new image is exchangeable with the calibration images (same
distribution, e.g. an unseen image of the same data set), P(truth in interval) >= coverage, and
<= coverage + 1 / (n + 1) when residuals have no ties (Vovk et al. 2005; Lei et al. 2018). This finite-sample
rank (the "+1") is what makes the guarantee exact; the plain empirical quantile under-covers for small n.
When k > n (fewer than coverage / (1 - coverage) images) no finite radius has the guarantee: the interval is
infinite and says so.

Per cohort (sex) where a cohort has at least `min_cohort` calibration images, its own residuals; otherwise the
pooled ones (a conditional guarantee per cohort needs enough images in it). An estimate for an unknown sex
(the mean of the estimates as a boy and as a girl) has errors of its own: it is calibrated on the residuals of
that same averaged estimate over every calibration image (`unknown`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np

from medal.errors import MedalError


def conformal_radius(residuals: Sequence[float] | np.ndarray, coverage: float) -> float:
    """Half-width q of the split-conformal interval at `coverage` from absolute calibration residuals.

    Args:
        residuals: (n,) absolute residuals |estimate - truth| (months) of the calibration images.
        coverage: nominal coverage in (0, 1).

    Returns:
        The ceil((n + 1) * coverage)-th smallest residual, or `inf` when that rank exceeds n.

    Raises:
        MedalError: coverage outside (0, 1), or a negative or non-finite residual.

    Examples:
        >>> conformal_radius([1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0], 0.9)  # k = ceil(10 * 0.9) = 9
        9.0
        >>> conformal_radius(np.arange(1.0, 20.0), 0.9)  # n = 19: k = 18
        18.0
        >>> conformal_radius([1.0, 2.0, 3.0], 0.9)  # too few images for 90%
        inf
    """
    if not 0.0 < coverage < 1.0:
        raise MedalError(f"predict.coverage={coverage}: must be in (0, 1), e.g. 0.9")
    values = np.sort(np.asarray(residuals, dtype=np.float64))
    if values.size and (not np.all(np.isfinite(values)) or values[0] < 0):
        raise MedalError("conformal residuals must be finite absolute errors (>= 0)")
    k = math.ceil((values.size + 1) * coverage - 1e-9)  # guard against 0.9 * 10 = 9.000000000000002
    return float(values[k - 1]) if 1 <= k <= values.size else math.inf


def cohort_residuals(groups: Mapping[str, Sequence[float]], group: str, min_cohort: int) -> tuple[str, list[float]]:
    """(group actually used, its residuals): `group`'s own when it has `min_cohort` images, else `all`'s.

    Examples:
        >>> groups = {"all": [1.0] * 30, "male": [2.0] * 25, "female": [3.0] * 5, "unknown": [4.0] * 30}
        >>> [cohort_residuals(groups, g, 20)[0] for g in ("male", "female", "all", "unknown")]
        ['male', 'all', 'all', 'unknown']
    """
    own = groups.get(group, [])
    if group == "unknown" and own:  # the averaged estimate has its own errors, on every calibration image
        return group, list(own)
    if group != "all" and len(own) >= min_cohort:
        return group, list(own)
    if "all" not in groups:
        raise MedalError(f"calibration has no pooled residuals (groups: {', '.join(groups)}); re-export the bundle")
    return "all", list(groups["all"])


def empirical_coverage(estimate: np.ndarray, low: np.ndarray, high: np.ndarray, truth: np.ndarray) -> float:
    """Share of images whose truth lies in [low, high] (NaN rows ignored).

    Examples:
        >>> empirical_coverage(np.zeros(4), np.array([-1, -1, -1, -1.0]), np.array([1, 1, 1, 1.0]),
        ...                    np.array([0.5, -2.0, 0.0, np.nan]))
        0.6666666666666666
    """
    truth = np.asarray(truth, dtype=np.float64)
    keep = np.isfinite(truth) & np.isfinite(np.asarray(estimate, dtype=np.float64))
    if not keep.any():
        return float("nan")
    inside = (np.asarray(low)[keep] <= truth[keep]) & (truth[keep] <= np.asarray(high)[keep])
    return float(inside.mean())
