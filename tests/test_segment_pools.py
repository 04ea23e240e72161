"""Pools of uneven difficulty for the active-learning benchmark: the phantoms' hard acquisitions, and the
comparison statistics the benchmark reports (curves over seeds, labels to a target, paired differences)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from medal.active import compare
from medal.data.phantom import generate_dataset
from medal.data.phantom.acquisition import HARD_KINDS, Nuisance, sample_acquisition
from medal.errors import MedalError
from medal.stats import paired_units


def test_hard_acquisitions_are_a_minority_of_named_kinds_and_leave_other_images_unchanged() -> None:
    ordinary, mixed = Nuisance(), Nuisance(hard_p=0.3)
    hard = 0
    for i in range(300):
        plain = sample_acquisition(np.random.default_rng(i), 256, ordinary)
        drawn = sample_acquisition(np.random.default_rng(i), 256, mixed)
        assert plain.hard == ()
        if drawn.hard:
            hard += 1
            assert 1 <= len(drawn.hard) <= 2 and set(drawn.hard) <= set(HARD_KINDS)
            if "small_hand" in drawn.hard:
                assert drawn.pose.fill <= 0.45
            if "rotated" in drawn.hard:
                assert abs(drawn.pose.angle_deg) >= 35
            if "inverted_framed" in drawn.hard:
                assert drawn.inverted and drawn.frame is not None and sum(f > 0 for f in drawn.frame) >= 2
            if "low_contrast" in drawn.hard:
                assert drawn.contrast <= 0.3
        else:  # an ordinary draw is exactly what it was without the option
            assert drawn == plain
    assert 60 <= hard <= 120  # 30% of 300, give or take the binomial spread
    with pytest.raises(MedalError, match=r"phantoms.nuisance.hard_p=1.5: a probability"):
        Nuisance(hard_p=1.5).validate()


def test_the_data_set_table_names_each_hard_acquisition(tmp_path: Path) -> None:
    meta = generate_dataset(tmp_path / "p", n=12, seed=0, image_size=64, workers=1, progress=False,
                            nuisance={"hard_p": 0.5})
    kinds = meta["hard"].astype(str)
    assert (kinds != "").sum() >= 2 and all(k == "" or set(k.split("+")) <= set(HARD_KINDS) for k in kinds)


def test_comparison_statistics_over_seeds() -> None:
    random = [[{"labelled": 8, "d": 0.80}, {"labelled": 16, "d": 0.85}, {"labelled": 24, "d": 0.88}],
              [{"labelled": 8, "d": 0.82}, {"labelled": 16, "d": 0.86}, {"labelled": 24, "d": 0.90}],
              [{"labelled": 8, "d": 0.78}, {"labelled": 16, "d": 0.84}, {"labelled": 24, "d": 0.87}]]
    better = [[dict(r, d=r["d"] + (0.04 if r["labelled"] > 8 else 0.0)) for r in h] for h in random]
    points = compare.curve(random, "d")
    assert [n for n, _, _ in points] == [8, 16, 24] and points[0][1] == pytest.approx(0.80)
    assert points[0][2] == pytest.approx(4.303 * 0.02 / math.sqrt(3), rel=1e-3)  # t(0.975, 2) * se
    assert compare.labels_to_reach(random[1], "d", 0.86) == 16 and math.isinf(compare.labels_to_reach(random[2], "d", 0.95))
    auc = [compare.area_under_curve(h, "d") for h in better]
    diff = paired_units(auc, [compare.area_under_curve(h, "d") for h in random])
    assert diff.mean == pytest.approx(0.04) and diff.p == pytest.approx(0.25)  # every seed better: 2 / 2^3
    noise = paired_units([0.86, 0.85, 0.88], [0.865, 0.87, 0.86])
    assert noise.low < 0 < noise.high and noise.p > 0.2
    assert compare.labels_at(random[0], "d", 0.865) == pytest.approx(20.0)  # halfway from 16 (0.85) to 24 (0.88)
