"""Paired differences between the cells of a table (`medal table table.reference=ROW` or `table.all_pairs=true`).

Two cells are compared on the runs they share a unit with: the config keys of `pair_by` (`seed`, and `cv.fold`
for the folds of a k-fold cross-validation) name a run's unit, and a unit's run in one cell is paired with the
same unit's run in the other. Where every paired run left its `predictions.csv` (a run folder, not W&B) and they
all scored the same images for the cell's metric (a mean of per-image errors, `test/mae[_sex]`), the comparison
pairs per image too (`medal.stats.paired_images`); otherwise per unit only (`medal.stats.paired_units`), and
the comparison says why. The statistics are `medal.stats`', the ones the active-learning benchmark uses.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from medal.boneage.predictions import PREDICTIONS_FILE, image_errors, read_predictions
from medal.stats import Difference, holm, paired_images, paired_units
from medal.tables.folder_runs import RunResult

#: The config keys that pair runs across cells: seeds, and the folds of a cross-validation.
PAIR_BY: tuple[str, ...] = ("seed", "cv.fold")
CellKey = tuple[Any, tuple[Any, ...]]  # (row value, column values)


@dataclass(frozen=True)
class Comparison:
    """Cell `a` minus cell `b` (each a (row, column) key): the paired difference, or None with the reason in
    `note`; `paired_by` says how it was paired; `p_holm` is its p adjusted over the table's family."""

    a: CellKey
    b: CellKey
    difference: Difference | None
    paired_by: str
    note: str = ""
    p_holm: float | None = None

    def holds(self, alpha: float) -> bool:
        """Beyond chance: the Holm-adjusted p is below alpha."""
        return self.p_holm is not None and self.p_holm < alpha


@dataclass
class Pairing:
    """How runs pair: `pair_by` keys, `resamples` of the per-image bootstrap; predictions are read once per run."""

    pair_by: Sequence[str] = PAIR_BY
    resamples: int = 10_000
    _errors: dict[tuple[Path, str], pd.Series | str] = field(default_factory=dict)

    def unit(self, run: RunResult) -> tuple[Any, ...]:
        return tuple(run.get(key) for key in self.pair_by)

    def unit_name(self, runs: Sequence[RunResult]) -> str:
        """The pair_by keys the runs set (`seed`, `seed x cv.fold`): what a unit is, in words."""
        keys = [key for key in self.pair_by if any(run.get(key) is not None for run in runs)]
        return " x ".join(keys) or "run"

    def errors(self, run: RunResult, metric: str) -> pd.Series | str:
        """Per-image errors of `metric` in `run`, or why there are none (a sentence)."""
        if run.folder is None:
            return "W&B runs keep no predictions.csv"
        key = (run.folder, metric)
        if key not in self._errors:
            path = run.folder / PREDICTIONS_FILE
            if not path.is_file():
                self._errors[key] = f"no {PREDICTIONS_FILE} in {run.folder}"
            else:
                errors = image_errors(read_predictions(path), metric)
                self._errors[key] = f"{metric} is not a mean over images" if errors is None else errors
        return self._errors[key]

    def compare(self, a_runs: Sequence[RunResult], b_runs: Sequence[RunResult], metric: str, a: CellKey,
                b: CellKey) -> Comparison:
        """Cell a minus cell b on `metric`, paired per unit and, where the predictions allow, per image."""
        units_a, units_b = self._by_unit(a_runs), self._by_unit(b_runs)
        for units, key in ((units_a, a), (units_b, b)):
            if isinstance(units, str):
                return Comparison(a, b, None, "", f"{units} in cell {_key_text(key)}: pairing is ambiguous; add "
                                  "the key that tells them apart to table.pair_by or filter with table.where")
        shared = sorted(set(units_a) & set(units_b), key=str)
        name = self.unit_name([*a_runs, *b_runs])
        if not shared:
            return Comparison(a, b, None, "", f"no {name} in both cells")
        pairs = [(units_a[u], units_b[u]) for u in shared]
        per_image, why = self._image_matrices(pairs, metric)
        if per_image is not None:
            diff = paired_images(*per_image, resamples=self.resamples)
            how = f"{name} (n={diff.n}) x {diff.images} images, paired bootstrap"
            return Comparison(a, b, diff, how)
        if len(shared) < 2:
            return Comparison(a, b, None, f"{name} (n=1)", f"one shared {name} and no per-image pairing ({why})")
        diff = paired_units([r.metrics[metric] for r, _ in pairs], [r.metrics[metric] for _, r in pairs])
        return Comparison(a, b, diff, f"{name} (n={diff.n}), sign-flip test", f"not per image: {why}")

    def _by_unit(self, runs: Sequence[RunResult]) -> dict[tuple[Any, ...], RunResult] | str:
        out: dict[tuple[Any, ...], RunResult] = {}
        for run in runs:
            unit = self.unit(run)
            if unit in out:
                return f"two runs with {', '.join(f'{k}={v}' for k, v in zip(self.pair_by, unit, strict=True))}"
            out[unit] = run
        return out

    def _image_matrices(self, pairs: list[tuple[RunResult, RunResult]],
                        metric: str) -> tuple[tuple[np.ndarray, np.ndarray] | None, str]:
        """(S, I) per-image errors of both cells when every paired run has them for the same images."""
        rows: list[list[pd.Series]] = [[], []]
        for pair in pairs:
            for side, run in enumerate(pair):
                errors = self.errors(run, metric)
                if isinstance(errors, str):
                    return None, errors
                rows[side].append(errors)
        ids = rows[0][0].index
        if any(not s.index.equals(ids) for side in rows for s in side):
            return None, "the runs scored different test images"
        if len(ids) < 2:
            return None, f"{len(ids)} test image(s)"
        return (np.stack([s.to_numpy() for s in rows[0]]), np.stack([s.to_numpy() for s in rows[1]])), ""


def with_holm(comparisons: Sequence[Comparison]) -> list[Comparison]:
    """The comparisons with `p_holm` set over the family of those that have a test (`medal.stats.holm`)."""
    tested = [i for i, c in enumerate(comparisons) if c.difference is not None]
    adjusted = dict(zip(tested, holm([comparisons[i].difference.p for i in tested]), strict=True))
    return [replace(c, p_holm=adjusted.get(i)) for i, c in enumerate(comparisons)]


def _key_text(key: CellKey) -> str:
    return " / ".join(map(str, (key[0], *key[1])))


def fmt_p(p: float | None) -> str:
    """A p-value for a table: 3 significant digits, `<0.001` below.

    Examples:
        >>> fmt_p(0.0625), fmt_p(0.00002), fmt_p(None)
        ('0.0625', '<0.001', '–')
    """
    if p is None or math.isnan(p):
        return "–"
    return "<0.001" if p < 0.001 else f"{p:.3g}"
