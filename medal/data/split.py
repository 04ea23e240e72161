"""Who may see which labelled image: the data set's one test holdout, and each run's seeded split.

Two records, two scopes:

- **The test holdout** (`<data.work_dir>/test_holdout.json`) belongs to the data set. With a labelled official
  test split (the official RSNA layout, phantoms) it *is* that split; with the Kaggle layout (test images without
  labels) `data.holdout.fraction` of the labelled images is drawn once, stratified by age and sex from its own
  seed, and kept. Every bone age run tests on it whatever its split seed, and the gold-standard request and the
  enhancer's training pairs leave it out (`held_out_ids`), so nothing a person made or a GAN learnt from touches
  a test image. It is written once; settings or a data set that no longer match it are refused in one line.
- **The run's split** (`<output_dir>/split.csv`, columns `id, role`) assigns the rest, stratified by bone-age
  bin and sex from `data.split.seed`: `train`, `val` (checkpoint selection, early stopping, Optuna),
  `calibration` (carved first and seen by nothing that trains or selects: `medal export` calibrates the
  bundle's conformal intervals on it) and `test` (the holdout). The reference code redrew its validation split
  at every fine-tuning stage, leaking validation images into training; here the split is computed once and read
  back by any later stage or resumed run.
- **k-fold cross-validation** (`cv.folds=K`, `cv.fold=i`; `CVOptions`): the images the split gives `train` and
  `val` (the pool minus the calibration role) are cut into K folds, stratified by the same age-quantile x sex
  strata, from `cv.seed` alone (`stratified_folds`), so every fold run, cohort and seed of one data set and
  `data.split` shares the assignment; `split.csv` records it in a `fold` column. Run i gives fold i the role
  `oof` (out-of-fold: predicted and scored, never trained on or selected with) and carves its inner `val`
  (`cv.inner_val` of the training folds, stratified) from the other folds, the rest trains. The calibration
  role and the test holdout are the same images with or without folds.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from medal.atomic import atomic_path, write_json
from medal.errors import MedalError

log = logging.getLogger("medal.data")

SPLIT_FILE = "split.csv"
HOLDOUT_FILE = "test_holdout.json"
#: Every role `split.csv` may hold: what trains, what selects, what calibrates, what tests, and (k-fold runs)
#: the fold a run holds out.
ROLES = ("train", "val", "calibration", "test", "oof")
#: The column of `split.csv` that holds each image's fold (k-fold runs; empty for calibration and test images).
FOLD_COLUMN = "fold"


@dataclass(frozen=True)
class SplitOptions:
    """`data.split`: each run's fractions of the labelled pool (the images outside the test holdout), seed, strata."""

    val_fraction: float = 0.1
    calibration: float = 0.1  # carved before training; `medal export` calibrates the intervals on it
    seed: int = 0
    bins: int = 10

    def __post_init__(self) -> None:
        for name in ("val_fraction", "calibration"):
            value = getattr(self, name)
            if not 0.0 <= value < 1.0:
                raise MedalError(f"data.split.{name}={value}: must be in [0, 1)")
        if self.val_fraction + self.calibration >= 1.0:
            raise MedalError(f"data.split.val_fraction={self.val_fraction} + data.split.calibration="
                             f"{self.calibration}: must leave images to train on (sum < 1)")
        if self.bins < 1:
            raise MedalError(f"data.split.bins={self.bins}: must be >= 1")


@dataclass(frozen=True)
class HoldoutOptions:
    """`data.holdout`: the data set's test holdout when it has no labelled official test split (Kaggle layout)."""

    fraction: float = 0.1
    seed: int = 0
    bins: int = 10

    def __post_init__(self) -> None:
        if not 0.0 < self.fraction < 1.0:
            raise MedalError(f"data.holdout.fraction={self.fraction}: must be in (0, 1)")
        if self.bins < 1:
            raise MedalError(f"data.holdout.bins={self.bins}: must be >= 1")


@dataclass(frozen=True)
class CVOptions:
    """`cv`: k-fold cross-validation over the split's `train` and `val` images (conf/boneage.yaml holds the values).

    `folds` null is no cross-validation. Otherwise one run trains fold `fold`'s model: the other folds train
    (less `inner_val` of them, which select its checkpoint), fold `fold` is predicted out of fold.
    """

    folds: int | None = None
    fold: int | None = None
    seed: int = 0  # the fold draw's own seed: the same folds for every training seed, cohort and fine-tune mode
    inner_val: float = 0.1  # share of the training folds that selects the checkpoint; 0: none, the last epoch's

    def __post_init__(self) -> None:
        if self.folds is None:
            if self.fold is not None:
                raise MedalError(f"cv.fold={self.fold}: set cv.folds=K too (e.g. cv.folds=5), or drop cv.fold")
            return
        if int(self.folds) < 2:
            raise MedalError(f"cv.folds={self.folds}: must be >= 2 (or null for no cross-validation)")
        if self.fold is None:
            raise MedalError(f"cv.folds={self.folds}: a run trains one fold; set cv.fold=i (0..{self.folds - 1}), or "
                             f"run them all: medal boneage -m cv.folds={self.folds} 'cv.fold=range({self.folds})'")
        if not 0 <= int(self.fold) < int(self.folds):
            raise MedalError(f"cv.fold={self.fold}: must be one of 0..{int(self.folds) - 1} (cv.folds={self.folds})")
        if not 0.0 <= self.inner_val < 1.0:
            raise MedalError(f"cv.inner_val={self.inner_val}: must be in [0, 1) (0: no checkpoint selection)")

    @property
    def enabled(self) -> bool:
        return self.folds is not None


def _largest_remainder(quotas: np.ndarray, total: int, rng: np.random.Generator) -> np.ndarray:
    """Integer shares of `total` close to `quotas` (floors, then +1 to the largest remainders, ties at random)."""
    takes = np.floor(quotas).astype(int)
    remainders = quotas - takes + rng.random(len(quotas)) * 1e-9
    takes[np.argsort(-remainders)[: max(0, total - int(takes.sum()))]] += 1
    return takes


def _strata(frame: pd.DataFrame, bins: int) -> tuple[np.ndarray, np.ndarray]:
    """(order, strata): the rows sorted by id, and each sorted row's stratum (age quantile bin x sex)."""
    order = np.argsort(frame["id"].astype(str).to_numpy(), kind="stable")
    ages = frame["boneage"].to_numpy(dtype=float)[order]
    males = frame["male"].to_numpy(dtype=bool)[order]
    edges = np.unique(np.quantile(ages, np.linspace(0, 1, bins + 1)[1:-1]))
    return order, np.digitize(ages, edges) * 2 + males


def stratified_folds(frame: pd.DataFrame, folds: int, seed: int, bins: int) -> np.ndarray:
    """The fold (0..folds-1) of every `frame` row: scikit-learn's `StratifiedKFold` over the (age quantile bin, sex)
    strata of `stratified_holdout`, shuffled from `seed`. Rows are ordered by id first, so the folds depend on the
    ids and labels only. A stratum smaller than `folds` spreads over as many folds as it has images.

    Examples:
        >>> frame = pd.DataFrame({"id": [f"{i:02d}" for i in range(40)], "boneage": np.arange(40.0) * 5,
        ...                       "male": np.arange(40) % 2 == 0})
        >>> fold = stratified_folds(frame, 4, seed=0, bins=5)
        >>> np.bincount(fold).tolist(), np.bincount(fold[frame["male"].to_numpy()]).tolist()
        ([10, 10, 10, 10], [5, 5, 5, 5])
    """
    import warnings

    from sklearn.model_selection import StratifiedKFold

    if len(frame) < folds:
        raise MedalError(f"cv.folds={folds}: only {len(frame)} images to fold (train + val of the split); use fewer "
                         "folds or more images")
    order, strata = _strata(frame, bins)
    splitter = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    assigned = np.empty(len(frame), dtype=int)
    with warnings.catch_warnings():  # strata smaller than `folds` are expected with few images: spread, not an error
        warnings.filterwarnings("ignore", message="The least populated class", category=UserWarning)
        for fold, (_, held) in enumerate(splitter.split(np.zeros(len(frame)), strata)):
            assigned[order[held]] = fold
    return assigned


def stratified_holdout(frame: pd.DataFrame, fraction: float, seed: int, bins: int) -> np.ndarray:
    """Boolean mask over `frame` rows: `fraction` of each (age quantile bin, sex) stratum, seeded.

    Rows are ordered by id first, so the result depends on the ids and labels only, not on row order.
    """
    if fraction == 0 or len(frame) == 0:
        return np.zeros(len(frame), dtype=bool)
    order, strata = _strata(frame, bins)
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



def _official_test(index: pd.DataFrame) -> pd.Series:
    """Rows of the data set's own `test` split (labelled or not)."""
    return index["split"] == "test"


def _holdout_record(index: pd.DataFrame, options: HoldoutOptions) -> dict:
    """What the holdout of `index` is under `options`: the labelled official test split, else a stratified draw."""
    labelled = index[index["boneage"].notna()]
    official = labelled[_official_test(labelled)]
    if len(official):
        return {"schema": 1, "source": "official test split", "ids": sorted(official["id"].astype(str))}
    pool = labelled[~_official_test(labelled)]
    held = stratified_holdout(pool, options.fraction, options.seed, options.bins)
    return {"schema": 1, "source": "drawn", "fraction": options.fraction, "seed": options.seed,
            "bins": options.bins, "ids": sorted(pool.loc[held, "id"].astype(str))}


def fixed_holdout(index: pd.DataFrame, work_dir: str | Path, options: HoldoutOptions) -> list[str]:
    """The labelled ids of the data set's test holdout, read from `<work_dir>/test_holdout.json` or made and saved.

    Written once (atomically; a second writer writes the same), then only read: a record whose source or draw
    settings differ from today's, or whose images the data set no longer has, is refused in one line rather than
    redrawn, because runs, gold standards and enhancers made since rely on it.
    """
    path = Path(work_dir) / HOLDOUT_FILE
    wanted = _holdout_record(index, options)
    if not path.is_file():
        write_json(path, wanted, indent=1)
        log.info("test holdout of the data set: %d images (%s), recorded in %s", len(wanted["ids"]),
                 wanted["source"], path)
        return list(wanted["ids"])
    try:
        saved = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise MedalError(f"{path}: not valid JSON ({err}); delete it only together with every run, gold request "
                         "and enhancer made on this data set since, then rerun") from None
    fix = (f"the test holdout is fixed once per data set: delete {path} only together with every run, gold request "
           "and enhancer made on this data set since (they saw the old holdout)")
    if saved.get("source") != wanted["source"]:
        raise MedalError(f"{path}: holds a test holdout from the {saved.get('source')}, but the data set now has "
                         f"{'a labelled official test split' if wanted['source'] != 'drawn' else 'none'}; {fix}")
    if wanted["source"] == "drawn":
        for key in ("fraction", "seed", "bins"):
            if saved.get(key) != wanted[key]:
                raise MedalError(f"{path}: drawn with data.holdout.{key}={saved.get(key)}, not {wanted[key]}; set "
                                 f"it back, or {fix}")
        gone = set(saved["ids"]) - set(index.loc[index["boneage"].notna(), "id"].astype(str))
        if gone:
            raise MedalError(f"{path}: {len(gone)} held-out images are no longer labelled images of the data set "
                             f"(e.g. {sorted(gone)[0]}); restore them, or {fix}")
    elif saved["ids"] != wanted["ids"]:
        raise MedalError(f"{path}: the official test split changed since it was recorded ({len(saved['ids'])} "
                         f"images then, {len(wanted['ids'])} now); restore it, or {fix}")
    return list(saved["ids"])


def held_out_ids(index: pd.DataFrame, work_dir: str | Path, options: HoldoutOptions) -> set[str]:
    """Every id nothing may learn from: the test holdout and the data set's own `test` split (labelled or not).

    The gold-standard request and the enhancer's training pairs leave these out.
    """
    return set(fixed_holdout(index, work_dir, options)) | set(index.loc[_official_test(index), "id"].astype(str))


def assign_splits(index: pd.DataFrame, options: SplitOptions, holdout: Collection[str]) -> pd.Series:
    """Role of every labelled image: 'train', 'val', 'calibration' or 'test' (Series indexed like `index`).

    The `holdout` ids (`fixed_holdout`) are the test set, the same for every seed. From the rest (the pool),
    `calibration` is carved first, then `val_fraction` of the pool (so a calibration split does not shrink val),
    each stratified by age bin and sex. Unlabelled images (e.g. Kaggle's test CSV) get no role.
    """
    labelled = index[index["boneage"].notna()]
    held = labelled["id"].astype(str).isin(set(holdout)).to_numpy()
    pool = labelled[~held]
    roles = pd.Series("train", index=pool.index, dtype=object)
    calibration = stratified_holdout(pool, options.calibration, options.seed + 2, options.bins)
    roles[pool.index[calibration]] = "calibration"
    rest = pool[~calibration]
    val = stratified_holdout(rest, options.val_fraction / (1.0 - options.calibration), options.seed, options.bins)
    roles[rest.index[val]] = "val"
    test_roles = pd.Series("test", index=labelled.index[held], dtype=object)
    return pd.concat([roles, test_roles]).loc[labelled.index]


def fold_roles(index: pd.DataFrame, roles: pd.Series, options: SplitOptions,
               cv: CVOptions) -> tuple[pd.Series, pd.Series]:
    """(roles, folds) of a k-fold run: `roles` (from `assign_splits`) with the fold `cv.fold` as `oof` and its inner
    `val` carved from the other folds; `folds` the fold of each image the split gave `train` or `val` (Series
    indexed like `roles`, -1 for calibration and test images, which no fold touches).

    The folds come from `cv.seed` and the split alone (`stratified_folds`), the inner validation split from
    `data.split.seed`, `cv.seed` and the fold, each stratified by age bin and sex.
    """
    pool_index = roles.index[roles.isin(("train", "val"))]
    pool = index.loc[pool_index]
    fold = stratified_folds(pool, int(cv.folds), int(cv.seed), options.bins)
    folds = pd.Series(-1, index=roles.index, dtype=int)
    folds[pool_index] = fold
    roles = roles.copy()
    held = fold == int(cv.fold)
    roles[pool_index[held]] = "oof"
    rest = pool[~held]
    inner_seed = int(np.random.SeedSequence([options.seed, int(cv.seed), int(cv.fold)]).generate_state(1)[0])
    inner = stratified_holdout(rest, cv.inner_val, inner_seed, options.bins)
    roles[rest.index] = "train"
    roles[rest.index[inner]] = "val"
    return roles, folds


def read_split(path: str | Path) -> pd.Series:
    """`split.csv` as a Series of roles indexed by id; one line when it is missing or holds an unknown role."""
    path = Path(path)
    if not path.is_file():
        raise MedalError(f"{path}: missing; a bone age run writes its split there")
    saved = pd.read_csv(path, dtype={"id": str, "role": str})
    unknown = sorted(set(saved["role"]) - set(ROLES))
    if unknown:
        raise MedalError(f"{path}: role {unknown[0]!r} is not one of {', '.join(ROLES)}; delete it to draw a new split")
    return pd.Series(saved["role"].to_numpy(), index=saved["id"].to_numpy(), dtype=object)


def read_folds(path: str | Path) -> pd.Series | None:
    """The fold of each image of a k-fold run's `split.csv` (indexed by id, only the folded images), or None for a
    split without folds."""
    saved = pd.read_csv(path, dtype={"id": str, "role": str})
    if FOLD_COLUMN not in saved.columns:
        return None
    folded = saved[saved[FOLD_COLUMN].notna()]
    return pd.Series(folded[FOLD_COLUMN].astype(int).to_numpy(), index=folded["id"].to_numpy(), dtype=int)


def load_or_make_split(index: pd.DataFrame, options: SplitOptions, output_dir: str | Path | None,
                       holdout: Collection[str], cv: CVOptions | None = None) -> pd.Series:
    """Roles of `index` rows, read from `<output_dir>/split.csv` when it exists (resume), else drawn and saved.

    A saved split whose test set is not the data set's `holdout` (drawn per run by medal before the holdout was
    fixed per data set) is refused: its test images may have been gold standards or GAN pairs. With `cv` (k-fold),
    the roles are `fold_roles`' and split.csv has a `fold` column.
    """
    cv = cv or CVOptions()
    path = Path(output_dir) / SPLIT_FILE if output_dir else None
    if path is not None and path.is_file():
        saved = read_split(path)
        roles = dict(saved.items())
        missing = set(index["id"]) - roles.keys()
        labelled_missing = missing & set(index.loc[index["boneage"].notna(), "id"])
        if labelled_missing:
            raise MedalError(f"{path}: {len(labelled_missing)} labelled images are not in the saved split "
                             f"(e.g. {sorted(labelled_missing)[0]}); delete it to draw a new split")
        tested = set(saved.index[saved == "test"])
        if tested != set(holdout):
            raise MedalError(f"{path}: its test images are not the data set's test holdout ({len(tested ^ set(holdout))} "
                             "differ; a split drawn before medal fixed one holdout per data set); delete it to draw "
                             "a new split (a run in a new folder)")
        if cv.enabled and read_folds(path) is None:
            raise MedalError(f"{path}: drawn without cross-validation folds, but this run has cv.folds={cv.folds}; run "
                             "it in a new folder")
        known = index["id"].isin(roles.keys())
        return pd.Series([roles[i] for i in index.loc[known, "id"]], index=index.index[known], dtype=object)
    roles = assign_splits(index, options, holdout)
    table = pd.DataFrame({"id": index.loc[roles.index, "id"], "role": roles.to_numpy()})
    if cv.enabled:
        roles, folds = fold_roles(index, roles, options, cv)
        table["role"] = roles.to_numpy()
        table[FOLD_COLUMN] = pd.array([int(f) if f >= 0 else None for f in folds.to_numpy()], dtype="Int64")
    counts = roles.value_counts()
    log.info("split: %s", ", ".join(f"{role} {int(counts.get(role, 0))}" for role in ROLES
                                    if role != "oof" or cv.enabled))
    if path is not None:
        with atomic_path(path) as tmp:
            table.to_csv(tmp, index=False)
    return roles
