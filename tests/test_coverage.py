"""Conformal intervals hold their coverage on held-out phantoms: the bundle is calibrated on its calibration split
and predicts the test split, which no model and no calibration saw (scripts/bench_coverage.py measures every
method, per sex and per age band).

Sized so the check is not luck: 560 calibration and 800 test images give the coverage a standard deviation of
about 1.6 points (calibration draw and test draw together), so +/-5 points is 3 standard deviations.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from helpers.bundles import export, predict, train_regressor

from medal.data.phantom import generate_dataset
from medal.predict.conformal import conformal_radius, empirical_coverage
from medal.predict.rows import PREDICTIONS, read_rows


def test_split_conformal_radius_covers_exchangeable_draws_at_the_nominal_rate() -> None:
    """The finite-sample rank gives coverage in [1 - a, 1 - a + 1/(n+1)] on average over calibration draws."""
    rng = np.random.default_rng(0)
    n, coverage, hits = 19, 0.9, []
    for _ in range(4000):
        residuals = np.abs(rng.standard_t(3, size=n + 1))  # heavy-tailed errors
        hits.append(residuals[-1] <= conformal_radius(residuals[:-1], coverage))
    assert coverage - 0.015 <= np.mean(hits) <= coverage + 1 / (n + 1) + 0.015


@pytest.mark.slow  # ~3 min on 2 idle cores: 1600 phantoms, a regressor, 560 calibration and 800 test images
def test_intervals_cover_the_held_out_phantom_test_split_within_five_points(tmp_path: Path) -> None:
    data = tmp_path / "phantoms"
    generate_dataset(data, n=1600, seed=7, image_size=48, workers=1, splits=(0.15, 0.35, 0.5))
    run = train_regressor(data, tmp_path / "train", "data.split.val_fraction=0.1", "data.split.calibration=0.7",
                          "trainer.max_epochs=3")
    bundle, metrics = export([run], tmp_path / "export", "export.conformal.method=sex",
                             "export.conformal.min_cohort=200", "export.batch_size=64")
    assert metrics["export/calibration_images"] >= 500
    test_csv = tmp_path / "test.csv"
    from medal.data.rsna import read_index

    index = read_index(data, strict=False)
    index[index["split"] == "test"][["id", "path", "male", "boneage"]].to_csv(test_csv, index=False)
    for nominal in (0.8, 0.9):
        out = tmp_path / f"out_{nominal}"
        # the OOD gate off: at its 1 % false-reject rate it refuses a few of these in-distribution images, and
        # this test is about the intervals of every image (the gate's rate is scripts/bench_ood.py's)
        result = predict(bundle, test_csv, tmp_path, out, f"predict.coverage={nominal}", "predict.cam=false",
                         "predict.batch_size=64", "predict.gate.ood=false")
        rows = read_rows(out / PREDICTIONS)
        assert len(rows) >= 780 and (rows["status"] == "ok").all()
        covered = empirical_coverage(rows["boneage"].to_numpy(), rows["low"].to_numpy(), rows["high"].to_numpy(),
                                     rows["reference"].to_numpy())
        assert covered == pytest.approx(result["predict/coverage"])
        print(f"nominal {nominal}: covered {covered:.4f} of {len(rows)} test images, median width "
              f"{result['predict/interval_width']:.1f} months")  # shown with -s: the figure the docs quote
        assert abs(covered - nominal) <= 0.05, (nominal, covered)
        assert set(rows["calibration"]) == {"male", "female"}  # per sex: each has >= 200 calibration images
        assert np.isfinite(result["predict/interval_width"]) and result["predict/interval_width"] > 0
