"""A bone age run's `predictions.csv` (one row per val and test image) and the per-image errors its MAEs average.

Defined once here, without torch, so `medal table` can pair two runs per test image (medal.stats.paired_images)
from the files their runs left: `<split>/mae[_male|_female]` is the mean of `|predicted - true|` over the rows of
that split (and sex), so the per-image absolute errors are the values a paired bootstrap resamples.
"""

from __future__ import annotations

import re
from pathlib import Path

import pandas as pd

from medal.errors import MedalError

PREDICTIONS_FILE = "predictions.csv"
COLUMNS = ["id", "sex", "true", "predicted", "split"]
#: Metric-name suffix and the `sex` value of its rows (None = every row).
COHORT_ROWS = (("", None), ("_male", "M"), ("_female", "F"))
_MAE = re.compile(r"^(?P<split>[a-z]+)/mae(?P<cohort>_male|_female)?$")


def read_predictions(path: str | Path) -> pd.DataFrame:
    """A run's predictions.csv, ids as strings; a file without the columns is one line naming it."""
    frame = pd.read_csv(path, dtype={"id": str})
    missing = [c for c in COLUMNS if c not in frame.columns]
    if missing:
        raise MedalError(f"{path}: no column {missing[0]!r} (expected {', '.join(COLUMNS)}); is it a bone age "
                         "run's predictions.csv?")
    return frame


def image_errors(frame: pd.DataFrame, metric: str) -> pd.Series | None:
    """Per-image absolute errors (months, indexed by id, sorted) whose mean is `metric`; None when `metric` is no
    such mean (`test/rmse`, `test/mae_floor`, ...).

    Examples:
        >>> f = pd.DataFrame({"id": ["b", "a", "c"], "sex": ["M", "F", "M"], "true": [100.0, 120.0, 90.0],
        ...                   "predicted": [103.0, 118.0, 90.5], "split": ["test", "test", "val"]})
        >>> image_errors(f, "test/mae").to_dict(), image_errors(f, "test/mae_male").to_dict()
        ({'a': 2.0, 'b': 3.0}, {'b': 3.0})
        >>> image_errors(f, "test/rmse") is None
        True
    """
    match = _MAE.match(metric)
    if match is None:
        return None
    sex = dict(COHORT_ROWS)[match["cohort"] or ""]
    rows = frame[frame["split"] == match["split"]]
    if sex is not None:
        rows = rows[rows["sex"] == sex]
    errors = (rows["predicted"].astype(float) - rows["true"].astype(float)).abs()
    return pd.Series(errors.to_numpy(), index=rows["id"].astype(str).to_numpy()).sort_index()
