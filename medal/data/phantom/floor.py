"""The noise floor of bone age on phantoms: the MAE of the best predictor that reads the anatomy exactly.

A phantom's anatomy is drawn at its maturity age A = label + maturity offset (the offset ~ N(0,
`maturity_sd`) clipped at ±3 SD, `anatomy.Individual.sample`) and stops changing at the individual's
plateau P (`anatomy.Individual.plateau`). A reader that sees the anatomy exactly therefore knows min(A, P)
and whether A ≥ P, and nothing more about the label. Under absolute error its best answer is the median of
the label's posterior given that reading, with the generator's own label distribution as the prior
(`anatomy.sample_boneage`: whole months for train/val, decimals for test). That answer is written per image
into `phantoms.csv` (`floor_prediction`, with `anatomical_age` and `anatomy_plateau`); the bone age
evaluation reports its MAE as `<split>/mae_floor`. No model ever reads these columns.

The floor is a lower bound: a real reader also pays for each ossification centre's own timing spread
(`timing_sd`), for anatomy finer than a pixel and for acquisition noise, none of which this reader suffers.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from scipy.stats import norm

from medal.data.phantom.anatomy import LABEL_MEAN, LABEL_SD, LABEL_UNIFORM_SHARE
from medal.errors import MedalError

log = logging.getLogger("medal.phantoms")

SIDECAR = "phantoms.csv"  # per-image facts of a phantom set (never read by a model)
FLOOR_COLUMN = "floor_prediction"
CONTINUOUS_STEP = 0.05  # months: grid of the decimal (test split) labels' prior
OFFSET_CLIP_SD = 3.0  # `Individual.sample` clips the maturity offset at this many SDs


@dataclass(frozen=True)
class LabelPrior:
    """The generator's bone-age label distribution for one sex, on a grid: `weights[i]` = P(label ≈ grid[i])."""

    grid: np.ndarray
    weights: np.ndarray

    @classmethod
    def of(cls, male: bool, age_range: tuple[float, float], whole_months: bool) -> LabelPrior:
        """Discretise `sample_boneage`'s mixture (uniform share + clipped normal) into grid cells.

        Whole months (train/val labels are rounded) put each integer's rounding interval in its cell;
        decimal labels (test) use a `CONTINUOUS_STEP` grid. The clipped normal's tails fall into the first
        and last cells, as the clip puts them on the range's ends.
        """
        lo, hi = (float(a) for a in age_range)
        if whole_months:
            grid = np.unique(np.clip(np.arange(np.floor(lo), np.ceil(hi) + 1.0), lo, hi))
        else:
            grid = np.linspace(lo, hi, int(round((hi - lo) / CONTINUOUS_STEP)) + 1)
        inner = (grid[:-1] + grid[1:]) / 2
        mean = LABEL_MEAN[int(male)]
        cdf = LABEL_UNIFORM_SHARE * (inner - lo) / (hi - lo) + (1 - LABEL_UNIFORM_SHARE) * norm.cdf(
            (inner - mean) / LABEL_SD
        )
        edges = np.concatenate([[0.0], cdf, [1.0]])
        return cls(grid, np.diff(edges))


def best_guess(prior: LabelPrior, anatomical_age: float, plateau: float, maturity_sd: float) -> float:
    """The posterior median of the label of a hand whose anatomy is read exactly (months).

    Args:
        prior: the label distribution of the image's sex and split.
        anatomical_age: label + maturity offset, the age the anatomy was drawn at.
        plateau: the age from which that hand's anatomy stops changing; at or above it the reader only
            knows that the anatomical age is at least `plateau`.
        maturity_sd: SD of the maturity offset (months).

    Examples:
        >>> prior = LabelPrior.of(True, (1.0, 228.0), whole_months=False)
        >>> round(best_guess(prior, 120.0, 240.0, 0.0), 2)  # no offset: the anatomy tells the label
        120.0
        >>> round(best_guess(prior, 120.0, 240.0, 4.0), 2)  # pulled a little towards the boys' mean (135.3)
        120.1
        >>> bool(best_guess(prior, 225.0, 211.2, 4.0) > 211.2)  # past the plateau: somewhere above it
        True
    """
    saturated = anatomical_age >= plateau
    if maturity_sd <= 0:
        if not saturated:
            return float(anatomical_age)
        likelihood = (prior.grid >= plateau).astype(float)
    elif saturated:  # P(offset >= plateau - label), offsets clipped at +-3 SD
        gap = (plateau - prior.grid) / maturity_sd
        likelihood = np.where(gap > OFFSET_CLIP_SD, 0.0, norm.sf(gap))
    else:
        z = (anatomical_age - prior.grid) / maturity_sd
        likelihood = np.where(np.abs(z) <= OFFSET_CLIP_SD + 1e-9, norm.pdf(z), 0.0)
    posterior = prior.weights * likelihood
    total = posterior.sum()
    if not total > 0:
        raise ValueError(f"anatomical age {anatomical_age} (plateau {plateau}) is impossible under this prior")
    index = int(np.searchsorted(np.cumsum(posterior) / total, 0.5))
    return float(prior.grid[min(index, prior.grid.size - 1)])


def floor_predictions(meta: pd.DataFrame, age_range: tuple[float, float], maturity_sd: float) -> np.ndarray:
    """`best_guess` for every row of a phantom table (`male`, `split`, `anatomical_age`, `anatomy_plateau`)."""
    priors: dict[tuple[bool, bool], LabelPrior] = {}
    out = np.empty(len(meta))
    rows = zip(meta["male"], meta["split"], meta["anatomical_age"], meta["anatomy_plateau"], strict=True)
    for i, (male, split, age, plateau) in enumerate(rows):
        key = (bool(male), split != "test")  # official layouts: whole months but for the test split
        if key not in priors:
            priors[key] = LabelPrior.of(key[0], age_range, whole_months=key[1])
        out[i] = best_guess(priors[key], float(age), float(plateau), maturity_sd)
    return out


def read_floor(root: str | Path) -> pd.Series | None:
    """Each image's floor prediction (months, indexed by id) from a phantom set's sidecar; None elsewhere.

    Real data (no `phantoms.csv`) has no floor: the caller leaves the floor metrics out rather than zero.
    """
    path = Path(root) / SIDECAR
    if not path.is_file():
        return None
    table = pd.read_csv(path, dtype={"id": str})
    if FLOOR_COLUMN not in table.columns:
        log.warning("%s has no %s column (a phantom set made before the floor was recorded): no floor metrics; "
                    "rerun `medal phantoms` with the same settings to add it", path, FLOOR_COLUMN)
        return None
    if table["id"].duplicated().any():
        raise MedalError(f"{path}: duplicate id {table['id'][table['id'].duplicated()].iloc[0]}; regenerate the set")
    return table.set_index("id")[FLOOR_COLUMN].astype(float)
