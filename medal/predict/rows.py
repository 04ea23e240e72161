"""`predictions.csv` of a predict run: appended batch by batch, so a killed run keeps every finished row.

Rows are appended (and fsynced) after their pictures are written, so a row on disk means a finished image.
A run that resumes reads the rows back (a line cut short by the kill is dropped) and predicts only the rest;
at the end the file is rewritten in input order, atomically. Shards of a multirun are merged here too.
"""

from __future__ import annotations

import csv
import io
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pandas as pd

from medal.atomic import atomic_path

PREDICTIONS = "predictions.csv"
COLUMNS = ["id", "sex", "sex_source", "boneage", "low", "high", "spread", "seg_confidence", "mask_fraction",
           "flag", "status", "message", "calibration", "interval_method", "path", "reference", "overlay", "thumb",
           # the clinician's question (medal.predict.chronology): ages in months, never a birth date
           "chronological_age", "age_source", "age_gap", "age_gap_low", "age_gap_high", "sds", "assessment",
           "ood_score"]  # the out-of-distribution score (medal.predict.ood); refused above the bundle's threshold
# calibration: the group the interval was calibrated on (e.g. `female, estimate 96-131 mo`); interval_method: the
# conformal method that made it (`medal.predict.conformal.METHODS`)
#: Every status a row can have; only `ok` rows carry an estimate (`boneage`, `low`, `high`).
STATUSES = [
    "ok",
    "unreadable",  # the file does not decode (the message says why: truncated, no decoder, no pixel data)
    "empty_image",  # one flat grey level
    "not_a_hand_radiograph",  # the DICOM attributes say so (medal.predict.gate: modality, frames, colour, ...)
    "out_of_distribution",  # the bundle's networks see nothing like their calibration images (medal.predict.ood)
    "no_sex",  # a model needs the sex and the input gives none
    "no_hand",  # the committee finds no pixel of hand
    "no_model",  # no regressor of the bundle applies to this sex
    "out_of_range",  # the estimate lies outside the bundle's valid range (medal.predict.valid_range)
]
#: Numeric columns (empty cells read back as NaN).
NUMERIC = ["boneage", "low", "high", "spread", "seg_confidence", "mask_fraction", "reference", "chronological_age",
           "age_gap", "age_gap_low", "age_gap_high", "sds", "ood_score"]


def _cell(value: Any) -> Any:
    if isinstance(value, float):
        return "" if value != value else f"{value:.6f}"  # NaN -> empty cell
    return value


class RowWriter:
    """Appends rows to a CSV (header once), flushed and fsynced per call."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        if not path.is_file() or path.stat().st_size == 0:
            path.write_text(",".join(COLUMNS) + "\n")

    def append(self, rows: Iterable[dict[str, Any]]) -> None:
        buffer = io.StringIO()
        writer = csv.writer(buffer)
        for row in rows:
            writer.writerow([_cell(row.get(c, "")) for c in COLUMNS])
        with self.path.open("a") as fh:
            fh.write(buffer.getvalue())
            fh.flush()
            os.fsync(fh.fileno())


def read_rows(path: Path) -> pd.DataFrame:
    """The rows written so far (a last line cut short by a kill is dropped), one per id (the last written)."""
    if not path.is_file():
        return pd.DataFrame(columns=COLUMNS)
    text = path.read_text()
    if text and not text.endswith("\n"):
        text = text[: text.rfind("\n") + 1]
    if not text.strip():
        return pd.DataFrame(columns=COLUMNS)
    frame = pd.read_csv(io.StringIO(text), dtype={c: str for c in COLUMNS if c not in NUMERIC},
                        keep_default_na=False, na_values={c: [""] for c in NUMERIC})
    return frame.drop_duplicates("id", keep="last").reset_index(drop=True)


def write_ordered(frame: pd.DataFrame, order: list[str], path: Path) -> pd.DataFrame:
    """Rewrite `path` with `frame`'s rows in `order` (ids), atomically; returns the ordered frame."""
    rank = {i: k for k, i in enumerate(order)}
    ordered = frame.assign(_rank=frame["id"].map(rank)).sort_values("_rank").drop(columns="_rank")
    with atomic_path(path) as tmp:
        ordered[COLUMNS].to_csv(tmp, index=False, float_format="%.6f")
    return ordered.reset_index(drop=True)
