"""What `medal predict input=...` reads: a folder of images, a CSV (`id,path,male`), or an RSNA-layout data set.

Every source becomes one table: `id, path, male` (1.0, 0.0 or NaN when unknown), `sex_source` (where the sex
came from: `csv`, `labels`, later `dicom` for a header's PatientSex) and `reference` (a known bone age in
months, NaN where there is none: the RSNA layout's labels or a CSV's `boneage` column, used only to report the
error and the coverage of the intervals), and `chronological_age` (months, NaN where the input gives none: a
CSV's `chronological_age` column; a DICOM header's age is read later, with the pixels). Shards split the table by a hash of the id, so the same image always
lands in the same shard, whatever else the input holds.
"""

from __future__ import annotations

import hashlib
import logging
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd

from medal.data.dicom import is_dicom
from medal.data.images import IMAGE_SUFFIXES
from medal.data.rsna import LABEL_FILES, parse_male, read_index
from medal.errors import MedalError

log = logging.getLogger("medal.predict")

COLUMNS = ["id", "path", "male", "sex_source", "reference", "chronological_age"]


def shard_of(image_id: str, num_shards: int) -> int:
    """The shard (0..num_shards-1) an image belongs to: a stable hash of its id, not its position.

    Examples:
        >>> [shard_of(i, 3) for i in ("1377", "1378", "hand_07")]
        [2, 2, 1]
        >>> shard_of("1377", 1)
        0
    """
    if num_shards < 1:
        raise MedalError(f"predict.num_shards={num_shards}: must be >= 1")
    return int(hashlib.sha1(str(image_id).encode()).hexdigest(), 16) % num_shards


def is_rsna_layout(root: Path) -> bool:
    """A folder with an RSNA training labels file at its root or one folder down."""
    names = LABEL_FILES["train"]
    return any((root / n).is_file() or any(root.glob(f"*/{n}")) for n in names)


def _from_rsna(root: Path) -> pd.DataFrame:
    index = read_index(root, strict=False)
    return pd.DataFrame({"id": index["id"].astype(str), "path": index["path"].astype(str),
                         "male": index["male"].map(lambda m: np.nan if pd.isna(m) else float(bool(m))),
                         "sex_source": "labels", "reference": index["boneage"].astype(float),
                         "chronological_age": np.nan})


def _from_folder(root: Path) -> pd.DataFrame:
    files, ignored = [], []
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        if any(part.startswith(".") for part in path.relative_to(root).parts):
            continue  # hidden files and medal's own records
        (files if path.suffix.lower() in IMAGE_SUFFIXES or is_dicom(path) else ignored).append(path)
    if ignored:
        log.info("%s: ignored %d file(s) that are neither images nor DICOM (e.g. %s)", root, len(ignored),
                 ignored[0].name)
    stems = [p.relative_to(root).with_suffix("").as_posix() for p in files]
    repeated = {s for s, count in Counter(stems).items() if count > 1}  # one pass: an archive has 10^5 files
    ids = [p.relative_to(root).as_posix() if s in repeated else s for p, s in zip(files, stems, strict=True)]
    return pd.DataFrame({"id": ids, "path": [str(p) for p in files], "male": np.nan, "sex_source": "",
                         "reference": np.nan, "chronological_age": np.nan})


def _months(path: Path, table: pd.DataFrame, columns: dict[str, str], name: str) -> np.ndarray:
    """A CSV's column of ages in months as floats (NaN where blank or absent); a non-number is one line."""
    if name not in columns:
        return np.full(len(table), np.nan)
    raw = table[columns[name]].astype(str).str.strip()
    values = pd.to_numeric(raw, errors="coerce")
    bad = values.isna() & raw.ne("")
    if bad.any():
        line = int(np.flatnonzero(bad.to_numpy())[0]) + 2
        raise MedalError(f"input={path}:{line}: {name}={raw[bad].iloc[0]!r} is not a number of months; fix or "
                         "blank it")
    if (values < 0).any():
        raise MedalError(f"input={path}: {name} has a negative age; ages are months since birth")
    return values.astype(float).to_numpy()


def _from_csv(path: Path) -> pd.DataFrame:
    try:
        table = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, UnicodeDecodeError) as err:
        raise MedalError(f"input={path}: not a readable CSV ({err}); give columns id,path[,male][,boneage]"
                         "[,chronological_age]") from None
    columns = {c.strip().lower(): c for c in table.columns}
    missing = [c for c in ("id", "path") if c not in columns]
    if missing:
        raise MedalError(f"input={path}: no {' or '.join(missing)} column; give columns id,path[,male][,boneage]")
    paths = [Path(p).expanduser() for p in table[columns["path"]]]
    paths = [p if p.is_absolute() else path.parent / p for p in paths]
    male = [np.nan] * len(table)
    if "male" in columns:
        parsed = [parse_male(v) if str(v).strip() else None for v in table[columns["male"]]]
        for line, (raw, value) in enumerate(zip(table[columns["male"]], parsed, strict=True), start=2):
            if value is None and str(raw).strip():
                log.warning("%s:%d: male=%r is not a sex (True/False, 1/0, M/F); taken as unknown", path, line, raw)
        male = [np.nan if v is None else float(v) for v in parsed]
    reference, age = (_months(path, table, columns, name) for name in ("boneage", "chronological_age"))
    frame = pd.DataFrame({"id": table[columns["id"]].astype(str), "path": [str(p) for p in paths], "male": male,
                          "sex_source": ["csv" if np.isfinite(m) else "" for m in male],
                          "reference": reference, "chronological_age": age})
    duplicated = frame["id"][frame["id"].duplicated()]
    if len(duplicated):
        raise MedalError(f"input={path}: id {duplicated.iloc[0]} appears more than once; ids name the outputs")
    return frame


def read_inputs(source: str | Path) -> pd.DataFrame:
    """The input table (`COLUMNS`) of a folder of images, a CSV file or an RSNA-layout data set."""
    path = Path(str(source)).expanduser().resolve()
    if path.is_file():
        if path.suffix.lower() != ".csv":
            raise MedalError(f"input={path}: a file must be a CSV with columns id,path[,male]; give a folder "
                             "to predict every image in it")
        frame = _from_csv(path)
    elif path.is_dir():
        frame = _from_rsna(path) if is_rsna_layout(path) else _from_folder(path)
    else:
        raise MedalError(f"input={path}: no such file or folder")
    if frame.empty:
        raise MedalError(f"input={path}: no images found (PNG, JPEG or DICOM)")
    return frame[COLUMNS].reset_index(drop=True)
