"""Metrics by cohort on a hand-made case, the Keras inverse-time decay, target scaling, plots."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from medal.boneage.evaluate import mean_predictor_mae
from medal.boneage.metrics import bootstrap_mae_ci, cohort_metrics
from medal.boneage.plots import bland_altman, predicted_vs_true
from medal.boneage.schedulers import InverseTimeDecay, inverse_time_decay
from medal.boneage.targets import TargetScaler
from medal.errors import MedalError


def test_cohort_metrics_on_a_hand_made_case() -> None:
    pred = np.array([10.0, 20.0, 30.0, 45.0])
    true = np.array([12.0, 20.0, 20.0, 30.0])
    male = np.array([True, True, False, False])
    m = cohort_metrics(pred, true, male, "test", n_resamples=200)
    # errors: -2, 0 (male); +10, +15 (female)
    assert m["test/mae"] == pytest.approx(27 / 4)
    assert m["test/mae_male"] == pytest.approx(1.0) and m["test/mae_female"] == pytest.approx(12.5)
    assert m["test/rmse"] == pytest.approx(np.sqrt((4 + 0 + 100 + 225) / 4), rel=1e-6)
    assert m["test/rmse_female"] == pytest.approx(np.sqrt((100 + 225) / 2), rel=1e-6)
    assert m["test/bias"] == pytest.approx(23 / 4) and m["test/bias_male"] == pytest.approx(-1.0)
    assert m["test/within12"] == pytest.approx(0.75) and m["test/within12_female"] == pytest.approx(0.5)
    assert m["test/n_male"] == 2 and m["test/n_female"] == 2
    assert 0.0 <= m["test/mae_ci_low"] <= m["test/mae"] <= m["test/mae_ci_high"] <= 15.0


def test_missing_cohort_is_left_out_and_ci_narrows_with_more_images() -> None:
    m = cohort_metrics(np.array([1.0, 3.0]), np.array([0.0, 0.0]), np.array([True, True]), "val")
    assert "val/mae_female" not in m and m["val/mae_male"] == pytest.approx(2.0)
    rng = np.random.default_rng(0)
    errors = rng.normal(0, 10, 1000)
    small = bootstrap_mae_ci(errors[:50], np.zeros(50))
    large = bootstrap_mae_ci(errors, np.zeros(1000))
    assert large[1] - large[0] < small[1] - small[0]


def test_mean_predictor_baseline() -> None:
    frame = pd.DataFrame({"true": [100.0, 140.0, 120.0], "sex": ["M", "F", "F"]})
    m = mean_predictor_mae(np.array([110.0, 130.0]), frame, "test")  # train mean 120
    assert m["test/mae_mean_predictor"] == pytest.approx(40 / 3)
    assert m["test/mae_mean_predictor_male"] == pytest.approx(20.0)
    assert m["test/mae_mean_predictor_female"] == pytest.approx(10.0)


def test_inverse_time_decay_matches_keras_and_adopts_new_groups() -> None:
    a, b = torch.nn.Parameter(torch.zeros(1)), torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.RMSprop([a], lr=1e-3)
    sched = InverseTimeDecay(opt, decay=0.05)
    for t in range(1, 11):
        opt.step()
        sched.step()
        assert opt.param_groups[0]["lr"] == pytest.approx(1e-3 / (1 + 0.05 * t))
    opt.add_param_group({"params": [b], "lr": 1e-4})  # a stage unfrozen after 10 updates
    for _ in range(5):
        opt.step()
        sched.step()
    assert opt.param_groups[0]["lr"] == pytest.approx(1e-3 / (1 + 0.05 * 15))
    assert opt.param_groups[1]["lr"] == pytest.approx(1e-4 / (1 + 0.05 * 5))
    # state round trip: a rebuilt scheduler continues the same curve
    opt2 = torch.optim.RMSprop([a], lr=1e-3)
    opt2.add_param_group({"params": [b], "lr": 1e-4})
    opt2.load_state_dict(opt.state_dict())
    sched2 = InverseTimeDecay(opt2, decay=0.05)
    sched2.load_state_dict(sched.state_dict())
    opt2.step()
    sched2.step()
    assert opt2.param_groups[1]["lr"] == pytest.approx(1e-4 / (1 + 0.05 * 6))


def test_decay_unit_must_be_named() -> None:
    opt = torch.optim.RMSprop([torch.nn.Parameter(torch.zeros(1))], lr=1e-3)
    assert inverse_time_decay(opt, decay=0.05, per="update")["interval"] == "step"
    assert inverse_time_decay(opt, decay=0.05, per="epoch")["interval"] == "epoch"
    with pytest.raises(MedalError, match=r"scheduler.per='batch'"):
        inverse_time_decay(opt, decay=0.05, per="batch")


def test_target_scaling_round_trip_and_errors() -> None:
    months = np.array([60.0, 120.0, 180.0])
    z = TargetScaler.fit("zscore", months, divisor=240.0)
    assert z.shift == pytest.approx(120.0) and z.scale == pytest.approx(months.std())
    d = TargetScaler.fit("divide", months, divisor=240.0)
    assert (d.shift, d.scale) == (0.0, 240.0)
    x = torch.tensor([30.0, 200.0])
    for scaler in (z, d):
        assert torch.allclose(scaler.to_months(scaler.scale_targets(x)), x)
    with pytest.raises(MedalError, match="target.scaling"):
        TargetScaler.fit("minmax", months, divisor=240.0)


def test_plots_are_written(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    true = rng.uniform(10, 220, 40)
    pred = true + rng.normal(0, 8, 40)
    male = rng.random(40) > 0.5
    for plot, name in ((bland_altman, "ba.png"), (predicted_vs_true, "scatter.png")):
        path = plot(pred, true, male, tmp_path / "plots" / name)
        assert path.is_file() and path.stat().st_size > 5000
    assert not list((tmp_path / "plots").glob("*.tmp.png"))
