"""The noise floor of phantom bone age: the best reader of the anatomy, and its MAE in the evaluation."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from medal.boneage.evaluate import floor_mae
from medal.data.phantom.anatomy import Individual, sample_boneage
from medal.data.phantom.floor import LabelPrior, best_guess, floor_predictions, read_floor
from medal.errors import MedalError

AGES = (1.0, 228.0)


def _draws(n: int, male: bool, sd: float, seed: int = 0) -> tuple[np.ndarray, np.ndarray, float]:
    """Labels (decimals, as the test split) and anatomical ages drawn the way the generator draws them."""
    rng = np.random.default_rng(seed)
    labels = np.array([round(sample_boneage(rng, male, AGES), 2) for _ in range(n)])
    offsets = np.clip(rng.normal(0.0, sd, n), -3 * sd, 3 * sd)
    return labels, labels + offsets, Individual(male=male).plateau()


@pytest.mark.parametrize("male", [True, False])
def test_the_floor_reader_beats_every_other_reader_of_the_same_anatomy(male: bool) -> None:
    labels, anatomical, plateau = _draws(3000, male, sd=4.0)
    prior = LabelPrior.of(male, AGES, whole_months=False)
    best = np.array([best_guess(prior, a, plateau, 4.0) for a in anatomical])
    seen = np.minimum(anatomical, plateau)  # what any reader of the image can know
    floor = np.abs(best - labels).mean()
    for rival in (seen, seen + 1.0, seen - 1.0, np.where(anatomical >= plateau, plateau + 8.0, seen)):
        assert floor <= np.abs(rival - labels).mean() + 0.02
    assert 2.5 < floor < 4.0  # about E|offset| = 4 * sqrt(2 / pi) = 3.19 months


def test_planted_offsets_give_their_floor() -> None:
    prior = LabelPrior.of(True, AGES, whole_months=True)
    labels = np.arange(60.0, 180.0, 7.0)
    # no spread of maturity: the anatomy tells the label exactly, below the plateau
    assert [best_guess(prior, a, 240.0, 0.0) for a in labels] == list(labels)
    # an offset of the size the prior makes likely is read back as the anatomy says, up to a little shrinkage
    guesses = np.array([best_guess(prior, a + 3.0, 240.0, 4.0) for a in labels])
    assert np.abs(guesses - labels).mean() == pytest.approx(3.0, abs=0.35)
    # past the plateau a girl of 228 months cannot be told from one of 212: the guess sits in between
    girls = LabelPrior.of(False, AGES, whole_months=True)
    assert 211.2 < best_guess(girls, 228.0, 211.2, 4.0) < 228.0
    assert best_guess(girls, 228.0, 211.2, 0.0) == best_guess(girls, 215.0, 211.2, 0.0)


def test_prior_is_the_generators_label_distribution() -> None:
    for male in (True, False):
        whole = LabelPrior.of(male, AGES, whole_months=True)
        assert whole.grid[0] == 1.0 and whole.grid[-1] == 228.0 and whole.weights.sum() == pytest.approx(1.0)
        rng = np.random.default_rng(1)
        drawn = np.array([float(np.clip(round(sample_boneage(rng, male, AGES)), *AGES)) for _ in range(20000)])
        assert drawn.mean() == pytest.approx(float(whole.grid @ whole.weights), abs=0.8)
        assert (drawn >= 200).mean() == pytest.approx(float(whole.weights[whole.grid >= 200].sum()), abs=0.01)


def test_floor_predictions_of_a_table_and_the_evaluation_reads_them(tmp_path: Path) -> None:
    meta = pd.DataFrame({"id": ["1", "2", "3"], "split": ["train", "test", "test"], "male": [True, False, True],
                         "boneage": [100.0, 120.5, 60.25], "anatomical_age": [100.0, 120.5, 60.25],
                         "anatomy_plateau": [240.0, 211.2, 240.0]})
    assert floor_predictions(meta, AGES, 0.0).tolist() == [100.0, 120.5, 60.25]
    planted = meta.assign(floor_prediction=meta.boneage + np.array([5.0, -2.0, 4.0]))
    planted.to_csv(tmp_path / "phantoms.csv", index=False)
    floor = read_floor(tmp_path)
    frame = pd.DataFrame({"id": ["2", "3"], "true": [120.5, 60.25], "sex": ["F", "M"]})
    assert floor_mae(floor, frame, "test") == {"test/mae_floor": 3.0, "test/mae_floor_male": 4.0,
                                               "test/mae_floor_female": 2.0}
    with pytest.raises(MedalError, match="no floor prediction for image 9"):
        floor_mae(floor, pd.DataFrame({"id": ["9"], "true": [1.0], "sex": ["M"]}), "test")
    assert read_floor(tmp_path / "real_data") is None  # no sidecar: no floor (absent, not zero)
    meta.to_csv(tmp_path / "phantoms.csv", index=False)  # a set written before the floor was recorded
    assert read_floor(tmp_path) is None
