"""Read the RSNA Pediatric Bone Age data in its official or Kaggle-mirror layout into one index table.

Official: `train.csv` or `boneage-training-dataset.csv` (`id, boneage, male`) + `boneage-training-dataset/`;
`Validation Dataset.csv` (`Image ID, male, Bone Age (months)`) + `boneage-validation-dataset-{1,2}/`;
`Bone age ground truth.xlsx` (`Case ID, Sex, Ground truth bone age (months)`) + `Test Set Images/`.
Kaggle mirror: image folders doubled (`boneage-training-dataset/boneage-training-dataset/`) and
`boneage-test-dataset.csv` with `Case ID, Sex` only (a test split without labels).
Files may sit at the root or one folder below it (the official archives unpack into `Bone Age ... Set/`).
Column headers are matched loosely (case, spaces and punctuation ignored).
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from medal.data.checks import SPLITS, Problem, age_problem, row_problems
from medal.errors import MedalError

log = logging.getLogger("medal.data")

LABEL_FILES: dict[str, tuple[str, ...]] = {
    "train": ("train.csv", "boneage-training-dataset.csv"),
    "val": ("Validation Dataset.csv",),
    "test": ("Bone age ground truth.xlsx", "Bone age ground truth.csv", "boneage-test-dataset.csv"),
}
IMAGE_DIRS: dict[str, tuple[str, ...]] = {
    "train": ("boneage-training-dataset",),
    "val": ("boneage-validation-dataset-1", "boneage-validation-dataset-2"),
    "test": ("Test Set Images", "boneage-test-dataset"),
}
_ID_COLUMNS = {"id", "imageid", "caseid"}
_SEX_COLUMNS = {"male", "ismale", "sex", "sexmf", "gender"}
_MALE_VALUES = {"true", "t", "1", "1.0", "m", "male", "yes"}
_FEMALE_VALUES = {"false", "f", "0", "0.0", "female", "no"}
INDEX_COLUMNS = ["id", "split", "path", "boneage", "male"]


@dataclass
class Scan:
    """Everything read from a data set root: parsed label rows and every problem found on the way."""

    root: Path
    labels: pd.DataFrame
    problems: list[Problem] = field(default_factory=list)
    label_files: dict[str, Path] = field(default_factory=dict)


def _find(root: Path, name: str, want_dir: bool) -> Path | None:
    """`root/name` or `root/*/name`; a folder doubled by the Kaggle mirror is descended into."""
    for candidate in [root / name, *sorted(root.glob(f"*/{name}"))]:
        if want_dir and candidate.is_dir():
            while (candidate / candidate.name).is_dir():
                candidate = candidate / candidate.name
            return candidate
        if not want_dir and candidate.is_file():
            return candidate
    return None


def _norm(header: str) -> str:
    return re.sub(r"[^a-z0-9]", "", str(header).lower())


def _column(table: pd.DataFrame, wanted: set[str] | str) -> str | None:
    for col in table.columns:
        key = _norm(col)
        if (isinstance(wanted, set) and key in wanted) or (isinstance(wanted, str) and wanted in key):
            return col
    return None


def parse_male(value: object) -> bool | None:
    """True/False, 'True'/'False', 1/0, 'M'/'F', 'male'/'female' -> bool; anything else -> None."""
    if isinstance(value, bool | np.bool_):
        return bool(value)
    text = str(value).strip().lower()
    if text in _MALE_VALUES:
        return True
    if text in _FEMALE_VALUES:
        return False
    return None


def _id_text(value: object) -> str:
    """Ids are integer strings; Excel hands them back as 1234.0."""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value).strip()


def _read_table(path: Path) -> pd.DataFrame:
    try:
        if path.suffix.lower() in {".xlsx", ".xls"}:
            return pd.read_excel(path, dtype=object)
        return pd.read_csv(path, dtype=str, keep_default_na=False)
    except Exception as err:  # noqa: BLE001 - pandas/openpyxl raise many types; all mean "unreadable"
        raise MedalError(f"{path}: unreadable labels file ({type(err).__name__}: {err}); re-export it") from None


def _images_in(dirs: list[Path]) -> dict[str, Path]:
    found: dict[str, Path] = {}
    for folder in dirs:
        for png in sorted(folder.glob("*.png")):
            if not png.name.startswith("."):  # macOS `._1377.png` resource forks are not images
                found.setdefault(png.stem, png.resolve())
    return found


def _scan_split(root: Path, split: str, problems: list[Problem]) -> tuple[pd.DataFrame | None, Path | None]:
    labels_path = next((p for name in LABEL_FILES[split] if (p := _find(root, name, want_dir=False))), None)
    dirs = [d for name in IMAGE_DIRS[split] if (d := _find(root, name, want_dir=True))]
    if labels_path is None:
        if dirs:
            problems.append(Problem(
                source=str(dirs[0]),
                message=f"labels file missing for the {split} images: expected {' or '.join(LABEL_FILES[split])} "
                        f"under {root}"))
        return None, None
    table = _read_table(labels_path)
    id_col, sex_col, age_col = _column(table, _ID_COLUMNS), _column(table, _SEX_COLUMNS), _column(table, "boneage")
    if id_col is None or sex_col is None:
        problems.append(Problem(source=str(labels_path), message=f"no id or sex column in {list(table.columns)}; "
                                "expected e.g. id,boneage,male"))
        return None, labels_path
    if split != "test" and age_col is None:
        problems.append(Problem(source=str(labels_path), message=f"no bone age column in {list(table.columns)}"))
        return None, labels_path
    if not dirs:
        problems.append(Problem(source=str(labels_path), message=f"image folder missing: expected "
                                f"{' and '.join(IMAGE_DIRS[split])} next to it"))
    images = _images_in(dirs)
    ids = [_id_text(v) for v in table[id_col]]
    rows = pd.DataFrame({
        "id": ids,
        "split": split,
        "path": [str(images[i]) if i in images else "" for i in ids],
        "boneage_raw": table[age_col].tolist() if age_col else [np.nan] * len(table),
        "male_raw": table[sex_col].tolist(),
        "male": [parse_male(v) for v in table[sex_col]],
        "source": str(labels_path),
        "line": np.arange(len(table)) + 2,  # header is line 1 (and row 1 in Excel)
        "labelled": age_col is not None,
        "image_dirs": ", ".join(str(d) for d in dirs) or "(no image folder)",
    })
    listed = set(ids)
    problems.extend(Problem(source=str(path), message=f"image has no row in {labels_path.name}")
                    for stem, path in images.items() if stem not in listed)
    return rows, labels_path


def scan(root: str | Path) -> Scan:
    """Read every split's labels and image folders under `root`, collecting (not raising) data problems."""
    root = Path(root).expanduser().resolve()
    if not root.is_dir():
        raise MedalError(f"data.root={root}: folder not found; generate phantoms (`medal phantoms`) or point "
                         "data.root at the RSNA data")
    problems: list[Problem] = []
    frames, label_files = [], {}
    for split in SPLITS:
        rows, labels_path = _scan_split(root, split, problems)
        if labels_path is not None:
            label_files[split] = labels_path
        if rows is not None:
            frames.append(rows)
    if "train" not in label_files:
        raise MedalError(f"{root}: no RSNA training labels found (expected {' or '.join(LABEL_FILES['train'])} "
                         "and boneage-training-dataset/); set data.root to the data set folder")
    labels = pd.concat(frames, ignore_index=True)
    problems = row_problems(labels) + problems
    return Scan(root=root, labels=labels, problems=problems, label_files=label_files)


def to_index(labels: pd.DataFrame, drop_ids: set[str] | None = None) -> pd.DataFrame:
    """The contract table (id, split, path, boneage, male) from parsed rows, minus `drop_ids` and bad rows."""
    keep = labels.drop_duplicates("id")
    keep = keep[keep["path"].astype(bool) & keep["male"].notna() & ~keep["id"].isin(drop_ids or set())]
    ages = [float(a) if lab and age_problem(a) is None else np.nan
            for a, lab in zip(keep["boneage_raw"], keep["labelled"], strict=True)]
    index = pd.DataFrame({
        "id": keep["id"].astype(str).to_numpy(),
        "split": keep["split"].to_numpy(),
        "path": keep["path"].to_numpy(),
        "boneage": np.asarray(ages, dtype=np.float64),
        "male": keep["male"].astype(bool).to_numpy(),
    })
    labelled = keep["labelled"].to_numpy()
    return index[~(labelled & index["boneage"].isna().to_numpy())].reset_index(drop=True)


def strict_error(root: Path, problems: list[Problem]) -> MedalError:
    """The one-line refusal of a data set with problems."""
    more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
    return MedalError(f"{problems[0]}{more}; run `medal check-data data.root={root}` to list every problem, "
                      "or set data.strict=false to skip bad rows")


def warn_skipped(problems: list[Problem]) -> None:
    """The one warning that lists every skipped row (data.strict=false)."""
    if problems:
        log.warning("data.strict=false: skipping %d problem(s):\n  %s", len(problems),
                    "\n  ".join(str(p) for p in problems))


def read_index(root: str | Path, strict: bool = True) -> pd.DataFrame:
    """One row per usable image: id (str), split (train|val|test), path, boneage (months; NaN = unlabelled), male.

    strict=True raises MedalError on any problem; strict=False logs one warning listing them and drops
    the rows they name.
    """
    result = scan(root)
    if result.problems:
        if strict:
            raise strict_error(result.root, result.problems)
        warn_skipped(result.problems)
    bad = {p.id for p in result.problems if p.id is not None}
    return to_index(result.labels, drop_ids=bad)
