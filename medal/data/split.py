"""A seeded train/val(/test) split stratified by bone-age bin and sex, drawn once per run and saved.

The reference code redrew its validation split at every fine-tuning stage, leaking validation images
into training; here the split is computed once, written to `<output_dir>/split.csv`, and read back by
any later stage or resumed run.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from medal.atomic import atomic_path
from medal.errors import MedalError

log = logging.getLogger("medal.data")

SPLIT_FILE = "split.csv"


@dataclass(frozen=True)
class SplitOptions:
    """`data.split`: held-out fractions of the labelled pool, the seed and the number of age strata."""

    val_fraction: float = 0.1
    test_fraction: float = 0.1  # used only when the data set has no labelled official test split
    seed: int = 0
    bins: int = 10

    def __post_init__(self) -> None:
        for name in ("val_fraction", "test_fraction"):
            value = getattr(self, name)
            if not 0.0 <= value < 1.0:
                raise MedalError(f"data.split.{name}={value}: must be in [0, 1)")
        if self.bins < 1:
            raise MedalError(f"data.split.bins={self.bins}: must be >= 1")


def _largest_remainder(quotas: np.ndarray, total: int, rng: np.random.Generator) -> np.ndarray:
    """Integer shares of `total` close to `quotas` (floors, then +1 to the largest remainders, ties at random)."""
    takes = np.floor(quotas).astype(int)
    remainders = quotas - takes + rng.random(len(quotas)) * 1e-9
    takes[np.argsort(-remainders)[: max(0, total - int(takes.sum()))]] += 1
    return takes


def stratified_holdout(frame: pd.DataFrame, fraction: float, seed: int, bins: int) -> np.ndarray:
    """Boolean mask over `frame` rows: `fraction` of each (age quantile bin, sex) stratum, seeded.

    Rows are ordered by id first, so the result depends on the ids and labels only, not on row order.
    """
    if fraction == 0 or len(frame) == 0:
        return np.zeros(len(frame), dtype=bool)
    order = np.argsort(frame["id"].astype(str).to_numpy(), kind="stable")
    ages = frame["boneage"].to_numpy(dtype=float)[order]
    males = frame["male"].to_numpy(dtype=bool)[order]
    edges = np.unique(np.quantile(ages, np.linspace(0, 1, bins + 1)[1:-1]))
    strata = np.digitize(ages, edges) * 2 + males
    rng = np.random.default_rng(seed)
    labels, sizes = np.unique(strata, return_counts=True)
    takes = _largest_remainder(fraction * sizes, round(fraction * len(frame)), rng)
    chosen_sorted = np.zeros(len(frame), dtype=bool)
    for stratum, take in zip(labels, takes, strict=True):
        members = np.flatnonzero(strata == stratum)
        chosen_sorted[rng.permutation(members)[:take]] = True
    chosen = np.zeros(len(frame), dtype=bool)
    chosen[order] = chosen_sorted
    return chosen


def assign_splits(index: pd.DataFrame, options: SplitOptions) -> pd.Series:
    """Role of every labelled image: 'train', 'val' or 'test' (Series indexed like `index`).

    The official test split is the test set when it has labels; otherwise `test_fraction` of the
    labelled pool is held out. Training and official validation images form the pool from which
    `val_fraction` is drawn. Unlabelled images (e.g. Kaggle's test CSV) get no role.
    """
    labelled = index[index["boneage"].notna()]
    official_test = labelled["split"] == "test"
    pool = labelled[~official_test]
    roles = pd.Series("train", index=pool.index, dtype=object)
    if official_test.any():
        test_roles = pd.Series("test", index=labelled.index[official_test.to_numpy()], dtype=object)
    else:
        held = stratified_holdout(pool, options.test_fraction, options.seed + 1, options.bins)
        test_roles = pd.Series("test", index=pool.index[held], dtype=object)
        roles = roles.drop(test_roles.index)
        log.info("no labelled official test split: held out %d images as test", len(test_roles))
    rest = pool.loc[roles.index]
    val = stratified_holdout(rest, options.val_fraction, options.seed, options.bins)
    roles[rest.index[val]] = "val"
    return pd.concat([roles, test_roles]).loc[labelled.index]


def load_or_make_split(index: pd.DataFrame, options: SplitOptions, output_dir: str | Path | None) -> pd.Series:
    """Roles of `index` rows, read from `<output_dir>/split.csv` when it exists (resume), else drawn and saved."""
    path = Path(output_dir) / SPLIT_FILE if output_dir else None
    if path is not None and path.is_file():
        saved = pd.read_csv(path, dtype={"id": str, "role": str})
        roles = dict(zip(saved["id"], saved["role"], strict=True))
        missing = set(index["id"]) - roles.keys()
        labelled_missing = missing & set(index.loc[index["boneage"].notna(), "id"])
        if labelled_missing:
            raise MedalError(f"{path}: {len(labelled_missing)} labelled images are not in the saved split "
                             f"(e.g. {sorted(labelled_missing)[0]}); delete it to draw a new split")
        known = index["id"].isin(roles.keys())
        return pd.Series([roles[i] for i in index.loc[known, "id"]], index=index.index[known], dtype=object)
    roles = assign_splits(index, options)
    if path is not None:
        with atomic_path(path) as tmp:
            pd.DataFrame({"id": index.loc[roles.index, "id"], "role": roles.to_numpy()}).to_csv(tmp, index=False)
    return roles
