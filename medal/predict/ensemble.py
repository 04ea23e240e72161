"""Combine the regressors of a bundle into one estimate per image.

A regressor applies to an image when its cohort is `all` or the image's sex. The estimate is the mean of the
applicable regressors (each already averaged over test-time augmentation), the spread their standard
deviation (NaN with one model). When the sex is unknown and the bundle needs it (`predict.sex=unknown`), the
estimate is the mean of the estimate as a boy and as a girl, and the spread covers both.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np


def applicable(cohorts: Sequence[str], male: bool) -> list[int]:
    """Indices of the regressors that apply to an image of this sex.

    Examples:
        >>> applicable(["all", "male", "female"], male=True)
        [0, 1]
    """
    return [i for i, c in enumerate(cohorts) if c == "all" or (c == "male") == male]


def combine(predictions: Mapping[bool, np.ndarray], cohorts: Sequence[str], male: np.ndarray) -> tuple[np.ndarray,
                                                                                                     np.ndarray]:
    """(estimate (B,), spread (B,)) from each regressor's predictions as male and as female.

    Args:
        predictions: {True: (R, B) months with the male input, False: (R, B) with the female input}; a
            regressor without sex input gives the same row in both.
        cohorts: (R,) the regressors' cohorts.
        male: (B,) 1.0 male, 0.0 female, NaN unknown (averaged over both).

    Examples:
        >>> preds = {True: np.array([[100.0, 100.0], [110.0, 110.0]]), False: np.array([[90.0, 90.0], [0.0, 0.0]])}
        >>> est, spread = combine(preds, ["all", "male"], np.array([1.0, np.nan]))
        >>> est.tolist(), spread.round(2).tolist()  # unknown: mean(105 as a boy, 90 as a girl); sd of 100, 110, 90
        ([105.0, 97.5], [5.0, 8.16])
    """
    male = np.asarray(male, dtype=np.float64)
    estimate = np.full(male.shape, np.nan)
    spread = np.full(male.shape, np.nan)
    for j, m in enumerate(male):
        sexes = [True, False] if np.isnan(m) else [bool(m >= 0.5)]
        groups = [applicable(cohorts, s) for s in sexes]
        if not all(groups):  # no model for this sex (e.g. a male-only bundle and a girl)
            continue
        per_sex = [np.mean([predictions[s][i, j] for i in g]) for s, g in zip(sexes, groups, strict=True)]
        values = [predictions[s][i, j] for s, g in zip(sexes, groups, strict=True) for i in g]
        estimate[j] = float(np.mean(per_sex))
        spread[j] = float(np.std(values)) if len(values) > 1 else np.nan
    return estimate, spread
