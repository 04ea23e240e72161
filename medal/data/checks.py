"""Problems found in a data set, each reportable as one line naming the file, the row and the fix.

The layout reader collects problems instead of stopping at the first one, so `medal check-data` can
list all of them and `data.strict=false` can drop exactly the rows they name.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import pandas as pd

from medal.data import images as image_io
from medal.data.parallel import parallel_map
from medal.data.pngcheck import png_problem
from medal.errors import MedalError

AGE_RANGE = (0.0, 240.0)  # months: RSNA ages are 1-228; anything outside 0-20 years is a typo
SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a data set; `str()` is the one-line report."""

    source: str  # file the problem is in (labels file or image)
    message: str
    line: int | None = None  # line of the labels file (header = line 1), when the problem has one
    id: str | None = None  # image id of the row to drop, when the problem is tied to one

    def __str__(self) -> str:
        where = self.source if self.line is None else f"{self.source}:{self.line}"
        return f"{where}: {self.message}"


def age_problem(value: object) -> str | None:
    """Why `value` is not a usable bone age in months, or None when it is."""
    try:
        age = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return f"bone age {value!r} is not a number"
    if math.isnan(age):
        return "bone age is missing"
    lo, hi = AGE_RANGE
    if not lo <= age <= hi:
        return f"bone age {age:g} months is outside {lo:g}-{hi:g}"
    return None


def row_problems(labels: pd.DataFrame) -> list[Problem]:
    """Row-level problems of parsed labels (see `rsna.scan`): ages, sexes, duplicates, missing images.

    `labels` has columns id, split, path, boneage_raw, male (bool or None), male_raw, source, line, labelled,
    image_dirs.
    """
    problems: list[Problem] = []
    first_seen: dict[str, str] = {}
    for row in labels.itertuples(index=False):
        where = dict(source=row.source, line=row.line, id=row.id)
        if row.id in first_seen:
            problems.append(Problem(message=f"duplicate id {row.id} (first at {first_seen[row.id]})", **where))
            continue
        first_seen[row.id] = f"{row.source}:{row.line}"
        if row.labelled and (why := age_problem(row.boneage_raw)):
            problems.append(Problem(message=f"id {row.id}: {why}", **where))
        if pd.isna(row.male):
            problems.append(Problem(message=f"id {row.id}: unknown sex {row.male_raw!r} (use M/F, True/False, 1/0)",
                                    **where))
        if not row.path:
            problems.append(Problem(message=f"id {row.id}: image {row.id}.png not found in {row.image_dirs}",
                                    **where))
    return problems


def damaged_images(ids: Sequence[str], paths: Sequence[str], workers: int) -> list[Problem]:
    """The cheap check of every image (`pngcheck`: chunk CRCs and IEND, no decode); one Problem per bad file."""
    return _problems(_png_error, ids, paths, workers, "checking PNG chunks")


def unreadable_images(ids: Sequence[str], paths: Sequence[str], workers: int) -> list[Problem]:
    """Decode every image (in `workers` processes, with a progress bar); one Problem per bad file."""
    return _problems(_decode_error, ids, paths, workers, "decoding images")


def _problems(check: Callable[[str], str | None], ids: Sequence[str], paths: Sequence[str], workers: int,
              desc: str) -> list[Problem]:
    errors = parallel_map(check, list(paths), workers=workers, desc=desc)
    return [Problem(source=path, message=err, id=id_) for id_, path, err in zip(ids, paths, errors, strict=True)
            if err is not None]


def _png_error(path: str) -> str | None:
    why = png_problem(path)
    return None if why is None else f"damaged PNG: {why}; re-export it or remove it"


def _decode_error(path: str) -> str | None:
    try:
        image_io.read_image(path)
    except MedalError as err:
        return str(err).removeprefix(f"{path}: ")
    return None


def summarize(index: pd.DataFrame) -> pd.DataFrame:
    """Per split: images, male, female, age min/mean/max (NaN where a split has no labels)."""
    rows = []
    for split in SPLITS:
        part = index[index["split"] == split]
        if part.empty:
            continue
        ages = part["boneage"].astype(float)
        rows.append({"split": split, "images": len(part), "male": int(part["male"].sum()),
                     "female": int((~part["male"].astype(bool)).sum()),
                     "age_min": ages.min(), "age_mean": ages.mean(), "age_max": ages.max()})
    return pd.DataFrame(rows, columns=["split", "images", "male", "female", "age_min", "age_mean", "age_max"])
