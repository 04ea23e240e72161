"""The ensembles of a k-fold bundle's folds, for CV+ intervals (`medal.predict.conformal`, source `cv_plus`).

A bundle exported from the K fold runs of a cross-validation holds, for each fold k, the models trained without
fold k (one per cohort and seed that was cross-validated). Fold k's estimate of an image is those models'
ensemble (`medal.predict.ensemble.combine` over them only): out of fold for the images of fold k, which is what
the calibration table keeps for them, and one of the K estimates CV+ needs of every new image.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from medal.predict import ensemble


def out_of_fold(predictions: Mapping[bool, np.ndarray], cohorts: Sequence[str], male: np.ndarray,
                regressor_folds: Sequence[int], case_folds: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(estimate (B,), spread (B,)) of each image by the models of its own fold, which never saw it.

    Args:
        predictions: {True: (R, B) months as male, False: (R, B) as female}, as `ensemble.combine` takes.
        cohorts: (R,) the regressors' cohorts; regressor_folds: (R,) the fold each was trained without.
        male: (B,) 1.0, 0.0 or NaN (averaged over both sexes); case_folds: (B,) each image's fold.

    Examples:
        >>> preds = {s: np.array([[100.0, 110.0, 120.0], [90.0, 95.0, 80.0]]) for s in (True, False)}
        >>> est, _ = out_of_fold(preds, ["all", "all"], np.ones(3), [0, 1], np.array([0, 1, 1]))
        >>> est.tolist()  # image 0 by fold 0's model, images 1 and 2 by fold 1's
        [100.0, 95.0, 80.0]
    """
    folds = np.asarray(regressor_folds)
    case_folds = np.asarray(case_folds)
    male = np.asarray(male, dtype=np.float64)
    estimate, spread = np.full(male.shape, np.nan), np.full(male.shape, np.nan)
    for fold in np.unique(case_folds):
        members, cases = np.flatnonzero(folds == fold), case_folds == fold
        if not members.size:
            continue
        estimate[cases], spread[cases] = ensemble.combine(
            {s: np.asarray(p)[members][:, cases] for s, p in predictions.items()},
            [cohorts[i] for i in members], male[cases])
    return estimate, spread


def fold_estimates(predictions: Mapping[bool, np.ndarray], cohorts: Sequence[str], regressor_folds: Sequence[int],
                   male: float) -> np.ndarray:
    """(K,) months: one image as each fold's models estimate it (fold k at index k).

    Args:
        predictions: {True: (R,) months as male, False: (R,) as female} of the image.

    Examples:
        >>> preds = {s: np.array([100.0, 104.0, 90.0]) for s in (True, False)}
        >>> fold_estimates(preds, ["all", "all", "all"], [0, 0, 1], 1.0).tolist()
        [102.0, 90.0]
    """
    folds = np.asarray(regressor_folds)
    out = np.full(int(folds.max()) + 1, np.nan)
    for fold in range(out.size):
        members = np.flatnonzero(folds == fold)
        if members.size:
            out[fold] = ensemble.combine({s: np.asarray(p)[members][:, None] for s, p in predictions.items()},
                                         [cohorts[i] for i in members], np.array([male]))[0][0]
    return out
